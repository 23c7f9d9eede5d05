/* par.c - a fixed two-way split of work: part 0 in the caller, part 1 on one helper thread
 * that spins briefly between tasks and then sleeps. Used by the memory-bound kernels and
 * attention loops (attn.c) and by the bf16 GEMM (gemm_bf16.c) when nn_get_threads() >= 2.
 *
 * Does not: balance load (callers cut work into two equal halves, so results never depend
 * on the thread count), or run more than one split at a time (a nested or concurrent call
 * runs both halves in its caller). */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

#include "models/nn.h"
#include "models/nn_par.h"

static struct {
    pthread_mutex_t start_mu;
    int started, ok;   /* helper thread created (under start_mu), and running */
    atomic_flag busy;  /* a split is in flight: nested or concurrent calls run serially */
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    atomic_uint gen;   /* task counter: the helper runs part 1 of each new task */
    atomic_uint done;  /* last task the helper finished */
    atomic_int sleeping;
    nn_par_fn fn;
    void *ctx;
} pool = {.start_mu = PTHREAD_MUTEX_INITIALIZER,
          .busy = ATOMIC_FLAG_INIT,
          .mu = PTHREAD_MUTEX_INITIALIZER,
          .cv = PTHREAD_COND_INITIALIZER};

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* The helper spins briefly after a task (the next one usually follows within a GEMM's
 * time), then sleeps on the condition variable so it does not steal OpenBLAS's core. */
static void *pool_main(void *arg) {
    (void)arg;
    unsigned seen = 0;
    for (;;) {
        unsigned g;
        int spins = 0;
        while ((g = atomic_load(&pool.gen)) == seen) {
            if (++spins < 1000) {
                cpu_relax();
                continue;
            }
            pthread_mutex_lock(&pool.mu);
            atomic_store(&pool.sleeping, 1);
            while ((g = atomic_load(&pool.gen)) == seen) pthread_cond_wait(&pool.cv, &pool.mu);
            atomic_store(&pool.sleeping, 0);
            pthread_mutex_unlock(&pool.mu);
            break;
        }
        seen = g;
        pool.fn(pool.ctx, 1);
        atomic_store(&pool.done, seen);
    }
    return NULL;
}

/* A forked child has no helper thread: start afresh there. */
static void pool_after_fork_child(void) {
    pthread_mutex_init(&pool.start_mu, NULL);
    pthread_mutex_init(&pool.mu, NULL);
    pthread_cond_init(&pool.cv, NULL);
    pool.started = pool.ok = 0;
    atomic_flag_clear(&pool.busy);
    atomic_store(&pool.gen, 0);
    atomic_store(&pool.done, 0);
    atomic_store(&pool.sleeping, 0);
}

static int pool_ready(void) {
    static int atfork;
    pthread_mutex_lock(&pool.start_mu);
    if (!pool.started) {
        pool.started = 1;
        if (!atfork) atfork = pthread_atfork(NULL, NULL, pool_after_fork_child) == 0;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        pool.ok = atfork && pthread_create(&pool.th, &at, pool_main, NULL) == 0;
        pthread_attr_destroy(&at);
    }
    int ok = pool.ok;
    pthread_mutex_unlock(&pool.start_mu);
    return ok;
}

/* Runs fn(ctx, 0) and fn(ctx, 1): concurrently when big and 2+ threads are allowed (and the
 * helper could be started), else one after the other. Returns when both are done. */
void nn_par_run_on(nn_par_fn fn, void *ctx, int helper) {
    if (!helper || atomic_flag_test_and_set(&pool.busy)) {
        fn(ctx, 0);
        fn(ctx, 1);
        return;
    }
    if (!pool_ready()) {
        atomic_flag_clear(&pool.busy);
        fn(ctx, 0);
        fn(ctx, 1);
        return;
    }
    pool.fn = fn;
    pool.ctx = ctx;
    unsigned g = atomic_fetch_add(&pool.gen, 1) + 1;
    if (atomic_load(&pool.sleeping)) {
        pthread_mutex_lock(&pool.mu);
        pthread_cond_signal(&pool.cv);
        pthread_mutex_unlock(&pool.mu);
    }
    fn(ctx, 0);
    /* the halves are alike, so the helper is usually about done; if it was descheduled
     * (a loaded machine), give the core away instead of spinning on it */
    for (int spins = 0; atomic_load(&pool.done) != g; spins++) {
        if (spins < 2000) cpu_relax();
        else sched_yield();
    }
    atomic_flag_clear(&pool.busy);
}

void nn_par_run(nn_par_fn fn, void *ctx, int big) {
    nn_par_run_on(fn, ctx, big && nn_get_threads() >= 2);
}

/* For halves that call OpenBLAS themselves: OpenBLAS runs single-threaded meanwhile, so
 * the two callers do not both queue work on its thread pool. */
void nn_par_run_blas(nn_par_fn fn, void *ctx, int big) {
    int threads = nn_get_threads();
    if (!big || threads < 2) {
        nn_par_run_on(fn, ctx, 0);
        return;
    }
    nn_set_threads(1);
    nn_par_run_on(fn, ctx, 1);
    nn_set_threads(threads);
}

/* Half `part` of [0, n): the cut is rounded up to a multiple of align. */
void nn_par_half(size_t n, int part, size_t align, size_t *i0, size_t *i1) {
    size_t h = (n / 2 + align - 1) / align * align;
    if (h > n) h = n;
    *i0 = part ? h : 0;
    *i1 = part ? n : h;
}

