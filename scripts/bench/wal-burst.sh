#!/usr/bin/env bash
# WAL write-burst benchmark (prints figures; not a test). A PostgreSQL 15
# cluster with pgbench data is driven hard by pgbench (its OLTP script, and
# one transaction in ten a batch of random text) for BENCH_SECONDS
# (default 60) with frequent checkpoints, so that full-page images make WAL
# come in storms; archive_command is each tool in turn (walden, pgBackRest
# sync and async, and WAL-G / wal-rus when BENCH_WALG / BENCH_WALRUS point at
# binaries built by hand from their sources; nothing here builds them), on
# the filesystem storage and on a local S3-compatible server (nanio). Every
# run starts from the same copy of the cluster. Once a second the number of
# `.ready` files waiting in pg_wal/archive_status and the archiver's peak
# RSS are sampled; printed: the backlog's maximum, the time to drain it after
# pgbench stops, segments archived, pgbench's tps and archive failures.
#
# BENCH_SECONDS (default 60), BENCH_RATE (pgbench -R, the same transaction
# rate for every tool; default unlimited), BENCH_SCALE (pgbench scale, default 50),
# BENCH_CLIENTS (default 8), BENCH_RUNS (rounds, tools alternating, default
# 1), BENCH_CODEC (zstd-3: every tool at zstd level 3, the default; or
# defaults: each tool's own default compression), BENCH_STORAGES (default
# "fs s3"), BENCH_TOOLS (comma-separated labels, default all),
# BENCH_WALDEN_UPLOAD_CONCURRENCY (walden's WALG_UPLOAD_CONCURRENCY, to compare).
set -euo pipefail
# shellcheck source=scripts/bench/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
bench_build
command -v /usr/bin/time >/dev/null || apt-get install -y -q time >/dev/null
bench_workdir walburst "pg run"
bench_on_exit() { pkill -f "$work/nanio-data" 2>/dev/null || true; }
bench_stage BENCH_WALG BENCH_WALRUS
venv="${WALDEN_TEST_VENV:-target/test-venv}"
[ -x "$venv/bin/nanio" ] || bash scripts/setup-test-env.sh >/dev/null
python3 scripts/bench/wal_burst.py "$work" "$(realpath "$venv/bin/nanio")"
