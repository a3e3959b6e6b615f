#!/usr/bin/env bash
# The full test suite: every crate's tests (nextest) and the doctests (nextest does not run those).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast "$@"
else
  echo "cargo-nextest not found; running cargo test" >&2
  cargo test --workspace --locked --no-fail-fast --lib --bins --tests "$@"
fi
cargo test --workspace --locked --doc
