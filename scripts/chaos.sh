#!/usr/bin/env bash
# Chaos runs (crates/herald-chaos): appenders, followers, a projection and workers as real processes under
# SIGKILLs and restarts of a private PostgreSQL cluster, then SQLite on a full disk; each run ends with the
# checker of every invariant (see the crate doc) and prints its figures and seed.
#
#   scripts/chaos.sh            short mode (CI): one round per backend, 15 s of faults each
#   scripts/chaos.sh long       five rounds per backend, 120 s of faults each
#   scripts/chaos.sh short --seed N   replay a schedule (passed to every `run`)
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-short}
shift || true
case $mode in
  short) seconds=15 rounds=1 ;;
  long) seconds=120 rounds=5 ;;
  *) echo "usage: scripts/chaos.sh [short|long] [run options]" >&2; exit 2 ;;
esac
cargo build -p herald-chaos --locked
bin=target/debug/herald-chaos
for round in $(seq 1 "$rounds"); do
  echo "== chaos round $round of $rounds"
  "$bin" run --backend sqlite --seconds "$seconds" "$@"
  "$bin" run --backend postgres --seconds "$seconds" "$@"
  "$bin" full-disk
done
