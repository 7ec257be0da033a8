#!/usr/bin/env bash
# Delta-backup benchmark (prints figures; not a test). The cluster of the
# base-backup benchmark (pgbench data plus random text) gets a full backup
# from each tool, then `pgbench -T BENCH_DELTA_SECONDS` (default 60) changes
# a small part of it, then each tool takes a delta (walden and WAL-G /
# wal-rus with WALG_DELTA_MAX_STEPS, pgBackRest --type=incr), page cache
# dropped before each: time, bytes read from disk (the child's block
# inputs), bytes stored, peak RSS; then the newest link is restored by each
# tool, and walden's restore of a full backup of the same data is the
# reference a delta restore must not be slower than.
#
# Optional peers: BENCH_WALG=/path/to/wal-g and BENCH_WALRUS=/path/to/walrus,
# binaries built by hand from their sources (nothing here builds them).
# BENCH_SCALE, BENCH_TEXT_MB, BENCH_CONCURRENCY as in backup.sh.
set -euo pipefail
# shellcheck source=scripts/bench/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
bench_build
bench_workdir deltabench
bench_stage BENCH_WALG BENCH_WALRUS
python3 scripts/bench/delta_bench.py "$work"
