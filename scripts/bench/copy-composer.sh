#!/usr/bin/env bash
# Copy-composer benchmark (prints figures; not a test): the cluster of the
# base-backup benchmark, a --copy-composer backup, `pgbench -T
# BENCH_COPY_SECONDS` (default 20), then a second --copy-composer backup
# against a plain --full one: time, bytes read, bytes stored, tars copied.
# BENCH_SCALE, BENCH_TEXT_MB, BENCH_CONCURRENCY as in backup.sh;
# BENCH_TAR_SIZE: WALG_TAR_SIZE_THRESHOLD (default 64 MiB; with WAL-G's
# 1 GiB a small cluster is one tar, which any change makes new).
set -euo pipefail
# shellcheck source=scripts/bench/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
bin="${BENCH_WALDEN:-}"
[ -n "$bin" ] || bench_build
bench_workdir copybench
bench_stage
python3 scripts/bench/copy_bench.py "$work"
