#!/usr/bin/env bash
# WAL benchmark (prints figures; not a test). A PostgreSQL 15 cluster writes
# real segments with pgbench; then, alternating between tools, each segment
# (and a random-text and a mixed segment derived from it) is pushed by one
# process as archive_command does (walden wal-push vs
# pgBackRest archive-push, posix repo, sync), fetched back one process per
# segment (wal-fetch vs archive-get), and a base backup is replayed by a
# recovering PostgreSQL through each tool's restore_command (walden with
# prefetch, pgBackRest with async archive-get, WAL-G and wal-rus when set).
#
# Optional peers: BENCH_WALG=/path/to/wal-g and BENCH_WALRUS=/path/to/walrus
# add WAL-G and ClickHouse's wal-rus to the push and fetch runs (they take
# WAL-G's command line and settings). They are built by hand from their
# sources; nothing here builds them.
#
# BENCH_SEGMENTS (default 50) sets how many segments are timed in the
# sequential runs and the replay; BENCH_SHAPE_SEGMENTS (default 12) how
# many of each shape (pgbench's, random text, mixed) in the isolated runs.
# BENCH_CONFIGS (default zstd-3,defaults) picks codec configurations among
# zstd-3, defaults, lz4, brotli-3, zstd-3-sodium, lz4-sodium,
# brotli-3-sodium; BENCH_ISOLATED_ONLY=1 runs only the isolated calls.
set -euo pipefail
# shellcheck source=scripts/bench/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
bench_build
bench_workdir walbench "pg restore-*"
bench_stage BENCH_WALG BENCH_WALRUS
python3 scripts/bench/wal_bench.py "$work"
