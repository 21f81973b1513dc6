#!/usr/bin/env bash
# Resident memory of `anomalyd serve` under steady load, 10× and 100× overload.
#   cargo build --release && benches/overload.sh [extra serve flags]
# Needs wrk (Debian: apt-get install wrk). Prints RSS at 5/10/14 s of each phase.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(mktemp -d)
port=${PORT:-18090}
target/release/anomalyd serve --data-dir "$dir" --listen "127.0.0.1:$port" "$@" >"$dir.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; rm -rf "$dir" "$dir.log"' EXIT
sleep 1
rss() { ps -o rss= -p "$pid" | awk '{printf "%.1f", $1/1024}'; }
load() { STREAMS=100 BATCH=100 wrk -t2 "-c$1" "-d$2" -s benches/wrk/ingest.lua "http://127.0.0.1:$port"; }
load 4 25s | tail -1
echo "warm rss $(rss) MiB"
for c in 4 40 400 4; do
  load "$c" 15s >"$dir.wrk" &
  w=$!
  sleep 5; a=$(rss); sleep 5; b=$(rss); sleep 4; d=$(rss)
  wait "$w"
  echo "c=$c rss MiB at 5/10/14 s: $a $b $d | $(tail -1 "$dir.wrk")"
done
rm -f "$dir.wrk"
