#!/usr/bin/env bash
# Base-backup benchmark (prints figures; not a test). A PostgreSQL 15
# cluster holds pgbench data plus a table of random text (pgbench's filler
# compresses unrealistically well); then, alternating between tools, each
# takes a full backup into filesystem storage at zstd level 3 and restores
# it into an empty directory: walden backup-push / backup-fetch against
# pgBackRest 2.45 (backup / restore, --process-max=2) and the ceiling
# `tar -cf - PGDATA | zstd -3 -T2 > /dev/null`; pgBackRest's backup is also
# restored by `walden pgbackrest backup-fetch`. Medians of BENCH_RUNS runs,
# peak RSS, stored bytes, ratios to walden.
#
# Optional peers: BENCH_WALG=/path/to/wal-g and BENCH_WALRUS=/path/to/walrus
# add WAL-G and ClickHouse's wal-rus (WAL-G's command line and settings),
# binaries built by hand from their sources (nothing here builds them).
#
# BENCH_SCALE (pgbench scale, default 100), BENCH_TEXT_MB (random text,
# default 500), BENCH_RUNS (default 3), BENCH_CONCURRENCY (readers and
# streams of every tool, default 2), BENCH_SMALL_FILES (extra 0-2 KiB
# orphan files under base/ for a memory-at-scale run, default 0).
set -euo pipefail
# shellcheck source=scripts/bench/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
bench_build
bench_workdir backupbench
bench_stage BENCH_WALG BENCH_WALRUS
python3 scripts/bench/backup_bench.py "$work"
