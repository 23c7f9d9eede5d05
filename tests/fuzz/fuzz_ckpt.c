/* fuzz_ckpt.c - libFuzzer harness: reading checkpoints. Bit 0 of the first byte picks:
 *   raw (0)        the rest is the file: truncated, mutated or foreign HDF5 bytes;
 *   structured (1) a valid small checkpoint (written once by io_ckpt_write) is edited
 *                  through the HDF5 API by a program decoded from the rest: datasets
 *                  deleted, replaced by other shapes and types (int, double, strings,
 *                  scalars, 5-D), attributes retyped, added or removed, vocabularies
 *                  with duplicate or invalid words, groups where datasets belong, links
 *                  that dangle or loop.
 * Then every reader runs: io_ckpt_verify, io_ckpt_peek, io_ckpt_read_vocabs,
 * io_ckpt_info, io_ckpt_latest on a directory holding the file (when bit 1 of the first
 * byte is set: it repeats io_ckpt_verify's work), and io_ckpt_read, once
 * with the model the file claims to have (its /params shapes, its /optim slots) and once
 * with the fixture's model. None may crash, leak or hang; an accepted read has the
 * shapes asked for and consistent vocabularies.
 *
 * In raw mode the readers probe a file in a forked child first (io/ckpt.c), so a crash
 * inside libhdf5 on a damaged file is an error, not a finding; a sanitizer report in our
 * code in that child still writes a crash artifact (libFuzzer's death callback runs there
 * too). Structured mode checks in-process (LOCKSTEP_CKPT_GUARD=0): HDF5 wrote those files
 * itself, and coverage of the checking code then reaches the fuzzer. */
#include "io/io.h"
#include "tests/fuzz/fuzz_util.h"

#include <sys/stat.h>

#include <hdf5.h>

enum { NF = 46, MAXT = 16 };
static const io_tensor fx_tensors[] = {
    {"embed/weight", 0, 2, {6, 4}},
    {"out/weight", 24, 2, {4, 5}},
    {"out/bias", 44, 1, {2}},
};
static const char *const fx_slots[] = {"m", "v"};
static const char *const fx_vocabs[] = {"src", "labels"};

static char *template_bytes;
static size_t template_len;

static void write_template(void) {
    float p[NF], m[NF], v[NF];
    for (int i = 0; i < NF; i++) {
        p[i] = 0.5f * (float)i - 3.0f;
        m[i] = 0.01f * (float)i;
        v[i] = 0.001f * (float)i;
    }
    float *slots[2] = {m, v};
    char *keys[2] = {"lr", "dim"}, *vals[2] = {"0.01", "4"};
    io_vocab voc[2] = {{0}, {0}};
    io_vocab_init(&voc[0], 1);
    io_vocab_add(&voc[0], "alpha", 5, 3);
    io_vocab_add(&voc[0], "beta", 4, 2);
    io_vocab_init(&voc[1], 0);
    io_vocab_add(&voc[1], "yes", 3, 1);
    io_vocab_add(&voc[1], "no", 2, 1);
    io_ckpt ck = {.model = "bow", .n_tensors = 3, .tensors = fx_tensors, .n_floats = NF,
                  .params = p, .n_slots = 2, .slot_names = fx_slots, .slots = slots,
                  .n_config = 2, .config_keys = keys, .config_vals = vals,
                  .train = {.step = 3, .epoch = 1, .world_size = 1, .best_metric = 0.5},
                  .n_vocabs = 2, .vocab_names = fx_vocabs, .vocabs = voc,
                  .metrics = "{\"step\":3}\n"};
    const char *path = fuzz_path("template.h5");
    if (io_ckpt_write(path, &ck) != IO_OK) abort();
    io_vocab_free(&voc[0]);
    io_vocab_free(&voc[1]);
    FILE *f = fopen(path, "rb");
    if (!f) abort();
    fseek(f, 0, SEEK_END);
    template_len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    template_bytes = malloc(template_len);
    if (!template_bytes || fread(template_bytes, 1, template_len, f) != template_len) abort();
    fclose(f);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    setenv("LOCKSTEP_CKPT_CHECK_TIMEOUT", "3", 1); /* a spinning HDF5 child: give up soon */
    write_template();
    return 0;
}

/* ---- the edit program (structured mode) ------------------------------------------------- */

typedef struct prog { const uint8_t *p; size_t n; } prog;
static unsigned next(prog *g) {
    if (!g->n) return 0;
    g->n--;
    return *g->p++;
}

static const char *const targets[] = {
    "/params/embed/weight", "/params/out/weight", "/params/out/bias", "/optim/m/embed/weight",
    "/optim/v/out/bias", "/vocab/src", "/vocab/src_count", "/vocab/labels",
    "/vocab/labels_count", "/metrics", "/train", "/config", "/", "/params", "/optim/m",
    "/params/extra"};
enum { NTARGETS = sizeof targets / sizeof *targets };
static const char *const attr_names[] = {
    "checksum", "format", "format_version", "model", "created", "step", "epoch",
    "best_metric", "lr", "config_checksum", "train_checksum", "checksum_algorithm",
    "world_size", "bad_evals", "dim", "data_pos"};
enum { NATTRS = sizeof attr_names / sizeof *attr_names };

static hid_t vstr_type(void) {
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    H5Tset_cset(t, H5T_CSET_UTF8);
    return t;
}

/* A short string from the program (may hold invalid UTF-8, never NUL). */
static void take_str(prog *g, char *out, size_t cap) {
    size_t len = next(g) % (cap < 12 ? cap : 12); /* < cap, and at most 11 */
    for (size_t i = 0; i < len; i++) {
        unsigned c = next(g);
        out[i] = (char)(c ? c : 'x');
    }
    out[len] = '\0';
}

/* Creates dataset `name` of a type and shape chosen by the program, parents included. */
static void make_dataset(hid_t f, const char *name, prog *g) {
    unsigned ty = next(g) % 7, nd = next(g) % 6;
    hsize_t dims[5];
    hsize_t total = 1;
    for (unsigned i = 0; i < nd; i++) {
        dims[i] = next(g) % 9;
        total *= dims[i];
    }
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(lcpl, 1);
    hid_t s = nd ? H5Screate_simple((int)nd, dims, NULL) : H5Screate(H5S_SCALAR);
    hid_t t = -1, mt = -1;
    switch (ty) {
    case 0: t = H5Tcopy(H5T_IEEE_F32LE); mt = H5Tcopy(H5T_NATIVE_FLOAT); break;
    case 1: t = H5Tcopy(H5T_IEEE_F64BE); mt = H5Tcopy(H5T_NATIVE_DOUBLE); break;
    case 2: t = H5Tcopy(H5T_STD_I32LE); mt = H5Tcopy(H5T_NATIVE_INT32); break;
    case 3: t = H5Tcopy(H5T_STD_I64LE); mt = H5Tcopy(H5T_NATIVE_INT64); break;
    case 4: t = H5Tcopy(H5T_STD_U8LE); mt = H5Tcopy(H5T_NATIVE_UINT8); break;
    case 5: t = vstr_type(); mt = vstr_type(); break;
    default: t = H5Tcopy(H5T_C_S1); H5Tset_size(t, 4); mt = H5Tcopy(t); break;
    }
    hid_t d = H5Dcreate2(f, name, t, s, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    if (d >= 0 && total > 0 && total <= 4096) {
        if (ty == 5) {
            char **strs = calloc(total, sizeof *strs);
            char (*store)[16] = calloc(total, sizeof *store);
            for (hsize_t i = 0; i < total; i++) {
                take_str(g, store[i], sizeof store[i]);
                strs[i] = store[i];
            }
            H5Dwrite(d, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, strs);
            free(strs);
            free(store);
        } else {
            size_t es = H5Tget_size(mt);
            unsigned char *buf = calloc(total, es);
            for (size_t i = 0; i < total * es; i++) buf[i] = (unsigned char)next(g);
            H5Dwrite(d, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf);
            free(buf);
        }
    }
    if (d >= 0 && (next(g) & 1)) { /* sometimes a checksum attribute, right or not */
        uint64_t c = (uint64_t)next(g) * 0x9e3779b97f4a7c15ULL;
        hid_t as = H5Screate(H5S_SCALAR);
        hid_t a = H5Acreate2(d, "checksum", H5T_STD_U64LE, as, H5P_DEFAULT, H5P_DEFAULT);
        if (a >= 0) {
            H5Awrite(a, H5T_NATIVE_UINT64, &c);
            H5Aclose(a);
        }
        H5Sclose(as);
    }
    if (d >= 0) H5Dclose(d);
    H5Tclose(t);
    H5Tclose(mt);
    H5Sclose(s);
    H5Pclose(lcpl);
}

static void set_attr(hid_t f, const char *obj, prog *g) {
    const char *name = attr_names[next(g) % NATTRS];
    unsigned ty = next(g) % 6;
    hid_t o = H5Oopen(f, obj, H5P_DEFAULT);
    if (o < 0) return;
    if (H5Aexists(o, name) > 0) H5Adelete(o, name);
    hsize_t three = 3;
    hid_t s = ty == 4 ? H5Screate_simple(1, &three, NULL)
                      : ty == 5 ? H5Screate(H5S_NULL) : H5Screate(H5S_SCALAR);
    hid_t t = ty == 0 || ty == 4 ? H5Tcopy(H5T_STD_I64LE)
              : ty == 1          ? H5Tcopy(H5T_IEEE_F64LE)
              : ty == 2          ? vstr_type()
                                 : H5Tcopy(H5T_C_S1);
    if (ty == 3) H5Tset_size(t, 1 + next(g) % 8);
    hid_t a = H5Acreate2(o, name, t, s, H5P_DEFAULT, H5P_DEFAULT);
    if (a >= 0) {
        if (ty == 2) {
            char str[16];
            take_str(g, str, sizeof str);
            const char *p = str;
            H5Awrite(a, t, &p);
        } else if (ty != 5) {
            unsigned char buf[24];
            for (size_t i = 0; i < sizeof buf; i++) buf[i] = (unsigned char)next(g);
            H5Awrite(a, ty == 0 || ty == 4 ? H5T_NATIVE_INT64 : ty == 1 ? H5T_NATIVE_DOUBLE : t,
                     buf);
        }
        H5Aclose(a);
    }
    H5Tclose(t);
    H5Sclose(s);
    H5Oclose(o);
}

static void edit(const char *path, prog *g) {
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    if (f < 0) return;
    for (int steps = 0; steps < 8 && g->n; steps++) {
        unsigned op = next(g) % 8;
        const char *t = targets[next(g) % NTARGETS];
        switch (op) {
        case 0: /* delete */
            if (strcmp(t, "/") != 0) H5Ldelete(f, t, H5P_DEFAULT);
            break;
        case 1: /* replace by another dataset */
            if (strcmp(t, "/") != 0) {
                H5Ldelete(f, t, H5P_DEFAULT);
                make_dataset(f, t, g);
            }
            break;
        case 2: set_attr(f, t, g); break;
        case 3: { /* delete an attribute */
            hid_t o = H5Oopen(f, t, H5P_DEFAULT);
            const char *a = attr_names[next(g) % NATTRS];
            if (o >= 0) {
                if (H5Aexists(o, a) > 0) H5Adelete(o, a);
                H5Oclose(o);
            }
            break;
        }
        case 4: { /* a group where a dataset belongs */
            if (strcmp(t, "/") == 0) break;
            H5Ldelete(f, t, H5P_DEFAULT);
            hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
            H5Pset_create_intermediate_group(lcpl, 1);
            hid_t gr = H5Gcreate2(f, t, lcpl, H5P_DEFAULT, H5P_DEFAULT);
            if (gr >= 0) H5Gclose(gr);
            H5Pclose(lcpl);
            break;
        }
        case 5: /* a soft link, maybe dangling */
            if (strcmp(t, "/") != 0) {
                H5Ldelete(f, t, H5P_DEFAULT);
                H5Lcreate_soft(targets[next(g) % NTARGETS], f, t, H5P_DEFAULT, H5P_DEFAULT);
            }
            break;
        case 6: /* a hard link to another object: aliases and cycles */
            H5Lcreate_hard(f, targets[next(g) % NTARGETS], f, "/params/alias", H5P_DEFAULT,
                           H5P_DEFAULT);
            break;
        default: /* a new dataset somewhere */
            make_dataset(f, (next(g) & 1) ? "/params/extra/w" : "/optim/w/out/bias", g);
            break;
        }
    }
    H5Fclose(f);
}

/* ---- the readers -------------------------------------------------------------------------- */

typedef struct desc {
    int n;
    io_tensor t[MAXT];
    char names[MAXT][64];
    size_t n_floats;
} desc;

static herr_t desc_visit(hid_t obj, const char *name, const H5O_info_t *info, void *op) {
    desc *d = op;
    if (info->type != H5O_TYPE_DATASET || d->n >= MAXT || strlen(name) >= 64) return 0;
    hid_t ds = H5Dopen2(obj, name, H5P_DEFAULT);
    hid_t s = ds >= 0 ? H5Dget_space(ds) : -1;
    hsize_t dims[H5S_MAX_RANK];
    int nd = s >= 0 ? H5Sget_simple_extent_dims(s, dims, NULL) : -1;
    size_t cnt = 1;
    for (int i = 0; i < nd; i++) cnt *= dims[i] ? (size_t)dims[i] : 1;
    if (nd >= 0 && nd <= IO_MAX_DIMS && cnt <= 100000) {
        io_tensor *t = &d->t[d->n];
        snprintf(d->names[d->n], 64, "%s", name);
        t->name = d->names[d->n];
        t->offset = d->n_floats;
        t->ndim = nd;
        size_t c = 1;
        for (int i = 0; i < nd; i++) {
            t->shape[i] = (int)dims[i];
            c *= (size_t)dims[i];
        }
        d->n_floats += c;
        d->n++;
    }
    if (s >= 0) H5Sclose(s);
    if (ds >= 0) H5Dclose(ds);
    return 0;
}

/* Reads path as a model of the tensors t[0..n) (n_floats) with the given slots. */
static void read_as(const char *path, const io_tensor *t, int n, size_t n_floats, int n_slots) {
    float *p = calloc(n_floats + 1, sizeof *p), *m = calloc(n_floats + 1, sizeof *m),
          *v = calloc(n_floats + 1, sizeof *v);
    float *slots[2] = {m, v};
    io_vocab voc[2] = {{0}, {0}};
    io_ckpt ck = {.model = NULL, .n_tensors = n, .tensors = t, .n_floats = n_floats,
                  .params = p, .n_slots = n_slots, .slot_names = fx_slots, .slots = slots,
                  .n_vocabs = 2, .vocab_names = fx_vocabs, .vocabs = voc};
    if (io_ckpt_read(path, &ck) == IO_OK) {
        FUZZ_CHECK(ck.n_config >= 0 && (ck.n_config == 0 || ck.config_keys));
        for (int k = 0; k < 2; k++)
            for (int i = 0; i < voc[k].n; i++)
                FUZZ_CHECK(io_vocab_lookup(&voc[k], voc[k].word[i], strlen(voc[k].word[i])) == i);
        io_ckpt_release(&ck);
        io_vocab_free(&voc[0]);
        io_vocab_free(&voc[1]);
    } else {
        FUZZ_CHECK(io_error()[0] != '\0' && ck.config_keys == NULL && ck.metrics_read == NULL);
        FUZZ_CHECK(voc[0].word == NULL && voc[1].word == NULL);
    }
    free(p);
    free(m);
    free(v);
}

static void run_readers(const char *path, const char *dir, int with_latest) {
    int verified = io_ckpt_verify(path) == IO_OK;
    char *model = NULL, **keys = NULL, **vals = NULL;
    int nc = 0;
    if (io_ckpt_peek(path, &model, &nc, &keys, &vals) == IO_OK) {
        for (int i = 0; i < nc; i++) {
            FUZZ_CHECK(keys[i] && vals[i]);
            free(keys[i]);
            free(vals[i]);
        }
        free(keys);
        free(vals);
        free(model);
    }
    io_vocab voc[2] = {{0}, {0}};
    if (io_ckpt_read_vocabs(path, 2, fx_vocabs, voc) == IO_OK) {
        io_vocab_free(&voc[0]);
        io_vocab_free(&voc[1]);
    }
    FILE *null = fopen("/dev/null", "w");
    if (null) {
        io_ckpt_info(path, null);
        fclose(null);
    }
    if (with_latest) {
        char out[600];
        int lrc = io_ckpt_latest(dir, out, sizeof out);
        FUZZ_CHECK(lrc == IO_OK ? verified : !verified);
    }
    read_as(path, fx_tensors, 3, NF, 2);
    if (verified) { /* safe to open in this process now: describe the model it claims */
        desc d = {0};
        hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
        if (f >= 0) {
            if (H5Lexists(f, "/params", H5P_DEFAULT) > 0) {
                hid_t gr = H5Gopen2(f, "/params", H5P_DEFAULT);
                if (gr >= 0) {
                    H5Ovisit(gr, H5_INDEX_NAME, H5_ITER_INC, desc_visit, &d);
                    H5Gclose(gr);
                }
            }
            H5Fclose(f);
        }
        read_as(path, d.t, d.n, d.n_floats, 0);
        read_as(path, d.t, d.n, d.n_floats, 2);
    }
    FUZZ_CHECK(H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL) == 0); /* no handle leaked */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const char *dir = fuzz_path("run");
    mkdir(dir, 0755);
    char path[600];
    snprintf(path, sizeof path, "%s/ckpt_00000001.h5", dir);
    /* files written through the HDF5 API are sound HDF5: no need for the forked guard */
    setenv("LOCKSTEP_CKPT_GUARD", (data[0] & 1) ? "0" : "1", 1);
    if (data[0] & 1) {
        fuzz_write(path, template_bytes, template_len);
        prog g = {data + 1, size - 1};
        edit(path, &g);
    } else {
        fuzz_write(path, data + 1, size - 1);
    }
    run_readers(path, dir, (data[0] & 2) != 0);
    unlink(path);
    return 0;
}
