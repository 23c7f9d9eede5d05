#!/usr/bin/env bash
# e2e_scripts.sh - end-to-end checks of the data scripts (scripts/prepare-*,
# scripts/baselines) on the small fixtures in tests/data/. CTest runs it as
# `bash tests/e2e_scripts.sh <lockstep-binary> <build-dir>` from tests/; both
# arguments are ignored. No network: prepare-desc reads fixture indexes.
# Checks: output format, split disjointness, determinism (two runs, and the
# pyenv python3 vs /usr/bin/python3, give identical bytes), idempotency (a
# second run skips, --force redoes), hand-computed baseline accuracies, errors
# on bad input.
set -u
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
S=$root/scripts
D=$here/data
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0
fail=0
ok()   { pass=$((pass + 1)); echo "ok: $*"; }
bad()  { fail=$((fail + 1)); echo "FAIL: $*"; }
check() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }

PY2=/usr/bin/python3
[ -x "$PY2" ] || PY2=python3

# ---------------------------------------------------------------- prepare-desc
desc() { "$@" --packages "$D/desc-Packages" --translation "$D/desc-Translation-en" --top 5; }
desc "$S/prepare-desc" --out "$tmp/d1" >"$tmp/d1.log" 2>&1
check "prepare-desc runs" grep -q "wrote" "$tmp/d1.log"
desc "$PY2" "$S/prepare-desc" --out "$tmp/d2" >/dev/null 2>&1
for s in train valid test; do
    check "prepare-desc $s identical across interpreters" cmp -s "$tmp/d1/$s.tsv" "$tmp/d2/$s.tsv"
done
check "prepare-desc valid/test not empty" test -s "$tmp/d1/valid.tsv" -a -s "$tmp/d1/test.tsv"
cat "$tmp/d1"/{train,valid,test}.tsv >"$tmp/all.tsv"
check "prepare-desc format label<TAB>tokens" \
    awk -F'\t' 'NF != 2 || $1 == "" || $2 == "" || $2 ~ /  |^ | $/ { exit 1 }' "$tmp/all.tsv"
check "prepare-desc keeps exactly the top 5 labels" \
    test "$(cut -f1 "$tmp/all.tsv" | sort -u | tr '\n' ' ')" = "games libs net python utils "
check "prepare-desc lower-cases and drops ' .' markers" \
    awk -F'\t' '$2 ~ /[A-Z]/ || $2 ~ / \. \. / { exit 1 }' "$tmp/all.tsv"
check "prepare-desc texts unique across all splits" \
    test "$(cut -f2 "$tmp/all.tsv" | sort | uniq -d | wc -l)" -eq 0
check "prepare-desc transitional text kept once" \
    test "$(grep -c 'transitional dummy' "$tmp/all.tsv")" -eq 1
# each fixture source package carries a marker token "toksrc..."; a source must
# live in exactly one split
for s in train valid test; do
    grep -o 'toksrc[a-z0-9]*' "$tmp/d1/$s.tsv" | sort -u | sed "s/\$/ $s/"
done >"$tmp/markers"
check "prepare-desc splits disjoint by source package" \
    test "$(cut -d' ' -f1 "$tmp/markers" | sort | uniq -d | wc -l)" -eq 0
check "prepare-desc every fixture source present" \
    test "$(wc -l <"$tmp/markers")" -eq 15
before=$(stat -c %Y.%s "$tmp/d1/train.tsv")
sleep 1
desc "$S/prepare-desc" --out "$tmp/d1" >"$tmp/d1b.log" 2>&1
check "prepare-desc second run is a no-op" grep -q "up to date" "$tmp/d1b.log"
check "prepare-desc no-op leaves outputs" test "$before" = "$(stat -c %Y.%s "$tmp/d1/train.tsv")"
cp "$tmp/d1/train.tsv" "$tmp/train.before"
desc "$S/prepare-desc" --out "$tmp/d1" --force >"$tmp/d1c.log" 2>&1
check "prepare-desc --force redoes" grep -q "wrote" "$tmp/d1c.log"
check "prepare-desc --force same bytes" cmp -s "$tmp/train.before" "$tmp/d1/train.tsv"
if "$S/prepare-desc" --out "$tmp/d3" --packages "$tmp/nope" --translation "$tmp/nope" \
        >"$tmp/err.log" 2>&1; then
    bad "prepare-desc accepts a missing index"
else
    check "prepare-desc error names the file" grep -q "nope: no such file" "$tmp/err.log"
fi

# ------------------------------------------------------------------- baselines
"$S/baselines" "$tmp/d1" >"$tmp/b.log" 2>&1
check "baselines output format" \
    awk 'NR==1 && !/^baseline majority acc=[01]\.[0-9][0-9][0-9][0-9]$/ { exit 1 }
         NR==2 && !/^baseline naive-bayes acc=[01]\.[0-9][0-9][0-9][0-9]$/ { exit 1 }
         END { if (NR != 2) exit 1 }' "$tmp/b.log"
# Hand-computed case: majority of train is "a" (3 of 5), so 1 of 3 test rows.
# NB: "y" only ever occurs under "b", "x" under "a"; every test row is right.
mkdir -p "$tmp/b"
printf 'a\tx x z\na\tx\na\tx z\nb\ty\nb\ty y\n' >"$tmp/b/train.tsv"
printf 'a\tx\nb\ty unseen\nb\ty z\n' >"$tmp/b/test.tsv"
check "baselines hand-computed accuracies" \
    test "$("$S/baselines" "$tmp/b" | tr '\n' ' ')" = \
         "baseline majority acc=0.3333 baseline naive-bayes acc=1.0000 "
# Laplace/prior case: test "z" seen twice under a (5 tokens), never under b
# (3 tokens), V=3: a: log(3/5)+log(3/8) ; b: log(2/5)+log(1/6) -> a.
printf 'a\tz\n' >"$tmp/b/test.tsv"
check "baselines Laplace smoothing" \
    test "$("$PY2" "$S/baselines" "$tmp/b" | tail -1)" = "baseline naive-bayes acc=1.0000"
printf 'a x\n' >"$tmp/b/test.tsv"
if "$S/baselines" "$tmp/b" >/dev/null 2>&1; then
    bad "baselines accepts a row without TAB"
else
    ok "baselines rejects a row without TAB"
fi

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
