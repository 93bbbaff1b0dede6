#!/usr/bin/env bash
# Store open and index times of one or two `stylus` binaries on the 6,978-card Civitai store
# (docs/benchmarks.md, "Store opening and re-indexing"). Usage:
#   tools/bench-store.sh NEW_BIN [OLD_BIN]
# Each binary: a fresh `index` (lexical), an unchanged re-index, then 5 x `retrieve --top-k 150`
# (open + embed + search, one process each): wall time and max RSS, median of the 5.
set -euo pipefail
civitai="${CIVITAI:-$(dirname "$0")/../../shared/data/civitai}"
[ -d "$civitai" ] || { echo "skipped: $civitai is absent"; exit 0; }
echo "host: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
for bin in "$@"; do
  store=$(mktemp -d)/store
  echo "== $bin"
  /usr/bin/time -f "fresh index: %e s, %M KB" "$bin" index --civitai "$civitai" --out "$store" 2>&1 >/dev/null | tail -1
  /usr/bin/time -f "re-index (unchanged): %e s, %M KB" "$bin" index --civitai "$civitai" --out "$store" 2>&1 >/dev/null | tail -1
  du -sh "$store" | sed 's/^/store size: /'
  for i in 1 2 3 4 5; do
    /usr/bin/time -f "%e %M" "$bin" retrieve --index "$store" --top-k 150 "a cat in the style of van gogh" 2>&1 >/dev/null | tail -1
  done | sort -n | awk '{t[NR]=$1; m[NR]=$2} END {printf "retrieve (open + query), median of 5: %.3f s, %d KB max RSS (range %.3f..%.3f s)\n", t[3], m[3], t[1], t[5]}'
  rm -rf "$(dirname "$store")"
done
