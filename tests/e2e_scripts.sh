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

# ---------------------------------------------------------------- prepare-ende
if command -v msgfmt >/dev/null 2>&1; then
    mkdir -p "$tmp/mo"
    msgfmt -o "$tmp/mo/a.mo" "$D/ende-a.po" && msgfmt -o "$tmp/mo/b.mo" "$D/ende-b.po"
    ende() { "$@" --mo-dir "$tmp/mo" --heldout 4; }
    ende "$S/prepare-ende" --out "$tmp/e1" >"$tmp/e1.log" 2>&1
    check "prepare-ende runs" grep -q "wrote" "$tmp/e1.log"
    ende "$PY2" "$S/prepare-ende" --out "$tmp/e2" >/dev/null 2>&1
    for f in train.tsv valid.tsv test.tsv test.ref.de; do
        check "prepare-ende $f identical across interpreters" cmp -s "$tmp/e1/$f" "$tmp/e2/$f"
    done
    E=$tmp/e1
    cat "$E"/{train,valid,test}.tsv >"$tmp/eall.tsv"
    check "prepare-ende valid/test not empty" test -s "$E/valid.tsv" -a -s "$E/test.tsv"
    check "prepare-ende format src<TAB>tgt" \
        awk -F'\t' 'NF != 2 || $1 == "" || $2 == "" || $0 ~ /  / { exit 1 }' "$tmp/eall.tsv"
    check "prepare-ende sources unique across splits" \
        test "$(cut -f1 "$tmp/eall.tsv" | sort | uniq -d | wc -l)" -eq 0
    check "prepare-ende one reference per test pair" \
        test "$(wc -l <"$E/test.ref.de")" -eq "$(wc -l <"$E/test.tsv")"
    has() { grep -qxF -e "$1" "$tmp/eall.tsv"; }
    hasnt() { ! grep -q -e "$1" "$tmp/eall.tsv"; }
    T=$'\t'
    check "prepare-ende strips _ accelerators (msgctxt entry)" has "open${T}öffnen"
    check "prepare-ende strips & accelerators" has "file${T}datei"
    check "prepare-ende joins multi-line strings" has "save the current file${T}die aktuelle datei speichern"
    check "prepare-ende unescapes quotes and tabs" has "say \" hi \" now${T}sag \" hallo \" jetzt"
    check "prepare-ende strips trailing colons" has "user name${T}benutzername"
    check "prepare-ende keeps identifiers" has "lc _ all is set${T}lc _ all ist gesetzt"
    check "prepare-ende keeps %s whole, first translation wins" \
        has "cannot open file %s${T}datei %s kann nicht geöffnet werden"
    check "prepare-ende splits aligned option lines" \
        has "- q , - - quiet print nothing${T}- q , - - quiet nichts ausgeben"
    check "prepare-ende keeps re-wrapped prose whole" \
        has "this sentence is wrapped over two lines .${T}dieser satz ist über zwei zeilen umbrochen ."
    check "prepare-ende skips plurals" hasnt "%d file"
    check "prepare-ende skips untranslatable copies" hasnt "internet"
    check "prepare-ende skips pairs equal after unescaping" hasnt "jerry"
    check "prepare-ende length filter" hasnt "fiftyone"
    check "prepare-ende ratio filter" hasnt "sicher"
    check "prepare-ende pair count" test "$(wc -l <"$tmp/eall.tsv")" -eq 40
    # references are the cased, detokenised targets of test.tsv, in order
    check "prepare-ende references match test targets" "$PY2" - "$S" "$E" <<'PYEOF'
import sys
sys.path.insert(0, sys.argv[1])
import lib_text
tgt = [l.rstrip("\n").split("\t")[1] for l in open(sys.argv[2] + "/test.tsv", encoding="utf-8")]
ref = [l.rstrip("\n") for l in open(sys.argv[2] + "/test.ref.de", encoding="utf-8")]
assert len(tgt) == len(ref) > 0
for t, r in zip(tgt, ref):
    assert " ".join(lib_text.tokenize(r, placeholders=True)) == t, (t, r)
    assert r != r.lower() or not any(c.isalpha() for c in r), r   # casing kept
PYEOF
    sleep 1
    ende "$S/prepare-ende" --out "$tmp/e1" >"$tmp/e1b.log" 2>&1
    check "prepare-ende second run is a no-op" grep -q "up to date" "$tmp/e1b.log"
    cp "$E/train.tsv" "$tmp/etrain.before"
    ende "$S/prepare-ende" --out "$tmp/e1" --force >"$tmp/e1c.log" 2>&1
    check "prepare-ende --force same bytes" cmp -s "$tmp/etrain.before" "$E/train.tsv"
else
    bad "msgfmt missing (install gettext): prepare-ende not tested"
fi
# PO parser and cleaning rules that msgfmt cannot express (fuzzy, obsolete)
check "prepare-ende PO parser and accelerator rules" "$PY2" - "$S" <<'PYEOF'
import sys
from importlib.machinery import SourceFileLoader
sys.path.insert(0, sys.argv[1])
pe = SourceFileLoader("pe", sys.argv[1] + "/prepare-ende").load_module()
po = r'''msgid ""
msgstr "Content-Type: text/plain; charset=UTF-8\n"

#, c-format, fuzzy
msgid "fuzzy one"
msgstr "unscharf"

#~ msgid "old one"
#~ msgstr "alt"

# translator comment
msgctxt "verb"
msgid "Print"
msgstr "Drucken"

msgid "a\101\x42\\ \"q\""
"\n"
msgstr ""
"x"
"y"

msgid "%d file"
msgid_plural "%d files"
msgstr[0] "%d Datei"
msgstr[1] "%d Dateien"
'''
es = list(pe.parse_po(po))
ids = [e["id"] for e in es]
assert ids == ["", "fuzzy one", "Print", 'aAB\\ "q"\n', "%d file"], ids
assert es[1]["fuzzy"] and not es[2]["fuzzy"]
assert not es[2]["obsolete"]
assert es[2]["ctxt"] == "verb" and es[2]["str"][0] == "Drucken"
assert es[3]["str"][0] == "xy"
assert es[4]["id_plural"] == "%d files" and es[4]["str"][1] == "%d Dateien"
assert pe.strip_accel("_Open", "Ö_ffnen") == ("Open", "Öffnen")
assert pe.strip_accel("max_len is 3", "max_len ist 3") == ("max_len is 3", "max_len ist 3")
assert pe.strip_accel("&Save && quit", "&Sichern && beenden") == ("Save && quit", "Sichern && beenden")
assert pe.strip_accel("Use &amp;", "Nimm &amp;") == ("Use &amp;", "Nimm &amp;")
assert pe.clean("  Name \n :") == "Name"
assert pe.pairs_of("-a x\n-b y\n", "-a X\n-b Y\n") == [("-a x", "-a X"), ("-b y", "-b Y")]
assert pe.pairs_of("one\ntwo\n", "eins\nzwei\n") == [("one\ntwo\n", "eins\nzwei\n")]
PYEOF
check "lib_text tokenizer rules" "$PY2" - "$S" <<'PYEOF'
import sys
sys.path.insert(0, sys.argv[1])
from lib_text import tokenize
assert tokenize("Don't PANIC: v2.6.32, 3,5 ms (x86_64)!") == \
    ["don't", "panic", ":", "v2", ".", "6.32", ",", "3,5", "ms", "(", "x86", "_", "64", ")", "!"]
assert tokenize("\ufb01le Stra\u00dfe") == ["file", "straße"]
assert tokenize("Got %S and %1$d, 100%% {0}", placeholders=True) == \
    ["got", "%S", "and", "%1$d", ",", "100", "%%", "{0}"]
assert tokenize("got %s") == ["got", "%", "s"]
assert tokenize(" \n\t ") == []
PYEOF

# --------------------------------------------------------------- prepare-prose
P=$D/prose
prose() { "$@" --man-dir "$P/man" --doc-dir "$P/doc" --desc "$tmp/d1/train.tsv" --heldout-pct 20; }
prose "$S/prepare-prose" --out "$tmp/p1" >"$tmp/p1.log" 2>&1
check "prepare-prose runs" grep -q "wrote" "$tmp/p1.log"
prose "$PY2" "$S/prepare-prose" --out "$tmp/p2" >/dev/null 2>&1
for s in train valid test; do
    check "prepare-prose $s identical across interpreters" cmp -s "$tmp/p1/$s.txt" "$tmp/p2/$s.txt"
done
cat "$tmp/p1"/{train,valid,test}.txt >"$tmp/pall.txt"
check "prepare-prose valid/test not empty" test -s "$tmp/p1/valid.txt" -a -s "$tmp/p1/test.txt"
check "prepare-prose lines unique across splits (global dedup)" \
    test "$(sort "$tmp/pall.txt" | uniq -d | wc -l)" -eq 0
check "prepare-prose boilerplate kept once" \
    test "$(grep -c 'shared boilerplate paragraph' "$tmp/pall.txt")" -eq 1
phas() { grep -qxF -e "$1" "$tmp/pall.txt"; }
for w in macrobodyonly synopsisonly codeblockonly tableonly seealsoonly germanpageonly \
         copyrightonly changelogonly ignoredbinary numbers "short one"; do
    check "prepare-prose drops '$w'" sh -c "! grep -qi '$w' '$tmp/pall.txt'"
done
check "prepare-prose roff fonts and glyphs" \
    phas "the demo tool frobnicates files quickly . it reads every input file once — and only once ."
check "prepare-prose .TP body is its own line" phas "print every frobnicated file name as it goes by ."
check "prepare-prose NAME line" phas "demo - frobnicate files for the test suite"
check "prepare-prose mdoc" phas "the frob utility reads file and writes - o out ."
check "prepare-prose joins wrapped text paragraphs" \
    phas "this readme paragraph is wrapped over three lines of the plain text file ."
check "prepare-prose .txt files" phas "second paragraph of the notes , also plain prose ."
check "prepare-prose words only from the .so page once" \
    test "$(grep -c 'frobnicate files for the test suite' "$tmp/pall.txt")" -eq 1
# package descriptions: all of desc train, all in prose train
check "prepare-prose desc train lines in prose train" \
    test "$(cut -f2 "$tmp/d1/train.tsv" | sort | comm -23 - <(sort "$tmp/p1/train.txt") | wc -l)" -eq 0
check "prepare-prose no desc valid/test text" \
    test "$(cut -f2 "$tmp/d1/valid.tsv" "$tmp/d1/test.tsv" | sort | comm -12 - <(sort "$tmp/pall.txt") | wc -l)" -eq 0
check "prepare-prose word counts match the files" "$PY2" - "$tmp/p1" <<'PYEOF'
import sys, re
d = sys.argv[1]
st = open(d + "/stats.txt").read()
m = re.search(r"split train (\d+) valid (\d+) test (\d+)", st)
for s, n in zip(("train", "valid", "test"), m.groups()):
    assert sum(len(l.split()) for l in open("%s/%s.txt" % (d, s), encoding="utf-8")) == int(n), s
PYEOF
# compressed man pages give the same lines
cp -r "$P" "$tmp/pz" && gzip -n "$tmp/pz/man/man1/demo.1"
"$S/prepare-prose" --man-dir "$tmp/pz/man" --doc-dir "$tmp/pz/doc" --desc "$tmp/none" --out "$tmp/p3" >/dev/null 2>&1
check "prepare-prose reads .gz man pages" \
    grep -qxF 'print every frobnicated file name as it goes by .' "$tmp/p3/train.txt" "$tmp/p3/valid.txt" "$tmp/p3/test.txt"
# --max-words stops after the document that reaches the cap
prose "$S/prepare-prose" --out "$tmp/p4" --max-words 50 >/dev/null 2>&1
n4=$(cat "$tmp/p4"/*.txt | wc -w)
check "prepare-prose --max-words caps ($n4 words)" test "$n4" -ge 50 -a "$n4" -lt 150
sleep 1
prose "$S/prepare-prose" --out "$tmp/p1" >"$tmp/p1b.log" 2>&1
check "prepare-prose second run is a no-op" grep -q "up to date" "$tmp/p1b.log"
cp "$tmp/p1/train.txt" "$tmp/ptrain.before"
prose "$S/prepare-prose" --out "$tmp/p1" --force >/dev/null 2>&1
check "prepare-prose --force same bytes" cmp -s "$tmp/ptrain.before" "$tmp/p1/train.txt"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
