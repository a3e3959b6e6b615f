#!/usr/bin/env bash
# The facade's features, one build each: every meaningful combination type-checks on its own (a feature that
# only compiles beside another is caught here, not by a user), and a PostgreSQL-only build compiles no SQLite.
# `cargo check` only: seconds per combination once the dependencies are checked.
set -euo pipefail
cd "$(dirname "$0")/.."

combinations=(
  ""                   # core, memory and connect alone
  "sqlite"
  "postgres"
  "es"                 # event sourcing on the in-memory store, no SQL backend
  "notify"
  "jobs"
  "postgres,es"
  "postgres,jobs"
  "postgres,es,notify"
  "sqlite,es,notify"
  "sqlite,postgres,es"
  "full"
)
for features in "${combinations[@]}"; do
  echo "== cargo check -p herald --no-default-features --features '${features}'"
  cargo check -p herald --locked --quiet --no-default-features --features "${features}"
done

# The promise DESIGN.md makes: an application on PostgreSQL does not compile SQLite (rusqlite, libsqlite3-sys,
# herald-sqlite), whichever parts it uses.
echo "== no SQLite in: cargo tree -p herald --no-default-features --features postgres,es,jobs,notify"
if cargo tree -p herald --locked --no-default-features --features postgres,es,jobs,notify --prefix none --edges normal,build \
  | grep -i sqlite; then
  echo "check-features: a PostgreSQL-only build of herald compiles SQLite (above)" >&2
  exit 1
fi
echo "check-features: ok"
