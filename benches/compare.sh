#!/usr/bin/env bash
# Runs `anomalyd bench model` and the PyTorch peer (benches/torch_peer.py) back to
# back for sizes S (d=1, W=32, H=32) and M (d=8, W=64, H=64) and every cell kind, and
# prints one JSON line per run. Each figure is measured on its own (--measure) so the
# three timings do not disturb each other.
#
#   PYTHON=/path/to/python-with-torch benches/compare.sh [seconds]
#
# ISAS="avx512 avx2 portable" runs anomalyd once per kernel path (ANOMALYD_ISA)
# before the peer; unset, the widest path the CPU has.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-2}"
py="${PYTHON:-python3}"
cargo build --release --quiet
for size in "1 32 32" "8 64 64"; do
  set -- $size
  for cell in ${CELLS:-lstm gru rnn}; do
    for isa in ${ISAS:-widest}; do
      ANOMALYD_ISA="${isa#widest}" ./target/release/anomalyd bench model --cell "$cell" --d-input "$1" \
        --window "$2" --hidden "$3" --threads 1 --seconds "$secs" --json
    done
    "$py" benches/torch_peer.py --cell "$cell" --d-input "$1" --window "$2" --hidden "$3" \
      --threads 1 --seconds "$secs"
  done
done
