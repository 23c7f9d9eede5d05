# lib_e2e.sh - sourced by the end-to-end scripts that train several models on 2 ranks
# (after setting LOCKSTEP and HERE): the MPI environment for root and oversubscription,
# one OpenBLAS thread per rank, a temporary directory removed on exit, ok/bad reporting
# into $fails, and train NAME ARGS... (2 ranks; exit 0 and the last progress-line loss
# below 0.9x the first). Not a test itself (CMake registers only tests/e2e_*.sh).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1 OPENBLAS_NUM_THREADS=1 LOCKSTEP_PROGRESS=lines
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
fails=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; fails=$((fails + 1)); }

train() {
    local name=$1; shift
    if ! mpirun -np 2 "$LOCKSTEP" train --out "$TMP/$name" --threads 1 "$@" > "$TMP/$name.log" 2>&1; then
        bad "$name: training failed"; tail -5 "$TMP/$name.log"; return 1
    fi
    local first last
    first=$(grep -o '^step [0-9]*/[0-9]*  loss [0-9.]*' "$TMP/$name.log" | head -1 | awk '{print $NF}')
    last=$(grep -o '^step [0-9]*/[0-9]*  loss [0-9.]*' "$TMP/$name.log" | tail -1 | awk '{print $NF}')
    if awk -v a="$first" -v b="$last" 'BEGIN{exit !(b < 0.9 * a)}'; then
        ok "$name: training loss $first -> $last"
    else
        bad "$name: training loss did not fall ($first -> $last)"
    fi
}
