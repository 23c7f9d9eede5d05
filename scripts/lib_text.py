"""lib_text - shared helpers for the data preparation scripts in scripts/.

What it does: one tokeniser used by every corpus (so vocabularies agree), stable
hash buckets for deterministic splits, Debian control-file (deb822) parsing,
reading of plain or compressed files, atomic writes and the "outputs newer than
inputs" test that makes the scripts idempotent.

What it does not do: no randomness (everything is a pure function of its input),
no network, nothing outside the Python 3 standard library (works with the pyenv
python3 and /usr/bin/python3 alike).

Tokenisation rules (tokenize):
  * the text is NFKC-normalised (ligatures, full-width forms, superscripts);
  * a token is a run of letters/digits (Unicode aware, "_" excluded), optionally
    joined by inner apostrophes ("don't", "l'homme"), or a decimal number with
    inner "." or "," ("3.14", "1,000", "2.6.32"), or any other single
    non-space character (punctuation, symbols: "-", "(", "/", "_", ...);
  * with placeholders=True, printf/strftime/Python/brace format specifiers
    ("%s", "%1$d", "%-5.2lf", "%H", "%%", "%(name)s", "{0}") are kept whole and
    never lower-cased;
  * with lower=True (default) every other token is lower-cased.
Tokens never contain whitespace, so " ".join(tokens) round-trips through TSV.
"""

import bz2
import gzip
import hashlib
import lzma
import os
import re
import subprocess
import sys
import unicodedata

_WORD = r"\d+(?:[.,]\d+)+|[^\W_]+(?:['\u2019][^\W_]+)*|\S"
_PLACEHOLDER = (r"%(?:\d+\$)?[-+ #0']*(?:\d+|\*)?(?:\.(?:\d+|\*))?"
                r"(?:hh|h|ll|l|L|q|j|z|t|I64|I32)?[A-Za-z]"
                r"|%\([A-Za-z_]\w*\)[-+ #0]*\d*(?:\.\d+)?[diouxXeEfFgGcrs]"
                r"|%%"
                r"|\{\w*\}")
_TOKEN_RE = re.compile(_WORD)
_TOKEN_PH_RE = re.compile("(" + _PLACEHOLDER + ")|" + _WORD)


def tokenize(text, lower=True, placeholders=False):
    """Split text into word and punctuation tokens (rules in the module doc).

    text: str (any length, may contain newlines). Returns a new list of str,
    empty for blank text. Pure: the same input always gives the same list.
    """
    text = unicodedata.normalize("NFKC", text)
    if not placeholders:
        toks = _TOKEN_RE.findall(text)
        return [t.lower() for t in toks] if lower else toks
    out = []
    for m in _TOKEN_PH_RE.finditer(text):
        tok = m.group(0)
        if m.group(1) is None and lower:
            tok = tok.lower()
        out.append(tok)
    return out


def bucket(key, n=100):
    """Stable bucket in [0, n) for a str key (MD5 of its UTF-8 bytes).

    Same value on every machine and Python version (unlike hash())."""
    h = hashlib.md5(key.encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") % n


def split_of(key, valid_pct, test_pct):
    """'train', 'valid' or 'test' for key; valid/test take the given percent
    of the 10000 fine buckets (fractions such as 1.5 are allowed)."""
    b = bucket(key, 10000)
    v = int(round(valid_pct * 100))
    t = int(round(test_pct * 100))
    if b < v:
        return "valid"
    if b < v + t:
        return "test"
    return "train"


def order_key(key):
    """Deterministic pseudo-shuffle key: sort records by this to mix classes
    without any random generator."""
    return hashlib.md5(key.encode("utf-8")).hexdigest()


def read_bytes(path):
    """Whole file as bytes; .gz/.xz/.lzma/.bz2 are decompressed in-process,
    .lz4/.zst through lz4cat/zstdcat (raises OSError with a clear message if
    the tool is missing or fails)."""
    if path.endswith(".gz"):
        with gzip.open(path, "rb") as f:
            return f.read()
    if path.endswith((".xz", ".lzma")):
        with lzma.open(path, "rb") as f:
            return f.read()
    if path.endswith(".bz2"):
        with bz2.open(path, "rb") as f:
            return f.read()
    if path.endswith((".lz4", ".zst")):
        tool = "lz4cat" if path.endswith(".lz4") else "zstdcat"
        try:
            r = subprocess.run([tool, path], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, check=False)
        except FileNotFoundError:
            raise OSError("%s: needs %s to decompress (not installed)"
                          % (path, tool))
        if r.returncode != 0:
            raise OSError("%s: %s failed: %s" % (path, tool,
                                                 r.stderr.decode(errors="replace").strip()))
        return r.stdout
    with open(path, "rb") as f:
        return f.read()


def read_text(path):
    """read_bytes decoded as UTF-8 (invalid bytes become U+FFFD)."""
    return read_bytes(path).decode("utf-8", errors="replace")


def parse_deb822(text):
    """Yield one dict per paragraph of a Debian control file (Packages,
    Translation-*). Field names keep their case; a multi-line value keeps its
    continuation lines, each with its leading space, joined by '\\n'."""
    rec = {}
    last = None
    for line in text.split("\n"):
        if not line.strip():
            if rec:
                yield rec
            rec, last = {}, None
            continue
        if line[0] in " \t":
            if last is not None:
                rec[last] += "\n" + line
            continue
        name, sep, value = line.partition(":")
        if not sep:
            continue
        last = name.strip()
        rec[last] = value.strip()
    if rec:
        yield rec


def repo_root():
    """The repository root (parent of scripts/)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_out(name):
    """Default output directory data/<name> under the repository root."""
    return os.path.join(repo_root(), "data", name)


def up_to_date(outputs, inputs):
    """True if every output exists and is newer than every existing input."""
    try:
        oldest = min(os.path.getmtime(p) for p in outputs)
    except (OSError, ValueError):
        return False
    newest = 0.0
    for p in inputs:
        try:
            newest = max(newest, os.path.getmtime(p))
        except OSError:
            pass
    return oldest > newest


def script_inputs():
    """The calling script and this library: changing either redoes the work."""
    return [os.path.abspath(sys.argv[0]), os.path.abspath(__file__)]


def write_atomic(path, text):
    """Write text (str, UTF-8) to path via a temporary file and rename, so a
    crash never leaves a half file that looks up to date."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = path + ".tmp.%d" % os.getpid()
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    os.replace(tmp, path)


def die(prog, msg):
    """Print 'prog: error: msg' to stderr and exit with status 1."""
    sys.stderr.write("%s: error: %s\n" % (prog, msg))
    sys.exit(1)
