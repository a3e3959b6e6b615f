#!/usr/bin/env bash
# Starts the local services Herald's tests talk to, when they are down, with the commands this machine kind
# documents. Safe to run repeatedly; prints what it started.
set -uo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local name=$1 port=$2
  for _ in $(seq 1 60); do
    port_open "$port" && return 0
    sleep 0.5
  done
  echo "services: $name did not come up on port $port" >&2
  return 1
}

start() {
  local name=$1 port=$2; shift 2
  if port_open "$port"; then return 0; fi
  echo "services: starting $name"
  "$@" >/dev/null 2>&1 || echo "services: starting $name failed" >&2
  wait_port "$name" "$port"
}

if command -v pg_ctlcluster >/dev/null 2>&1; then
  start postgresql 5432 pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
fi

# The PostgreSQL backend's tests use database `test` (each test in a fresh schema inside it).
if command -v psql >/dev/null 2>&1 && port_open 5432; then
  if ! psql -h 127.0.0.1 -U root -d postgres -Atc "SELECT 1 FROM pg_database WHERE datname = 'test'" 2>/dev/null | grep -q 1; then
    echo "services: creating PostgreSQL database test"
    psql -h 127.0.0.1 -U root -d postgres -c "CREATE DATABASE test" >/dev/null 2>&1 \
      || echo "services: creating PostgreSQL database test failed" >&2
  fi
fi
