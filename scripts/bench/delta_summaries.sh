#!/usr/bin/env bash
# Delta backups from PostgreSQL 17's WAL summaries against the page scan,
# at two cluster sizes (prints figures; not a test). For each pgbench
# scale in BENCH_SCALES (default "50 200"): a PostgreSQL 17 cluster with
# summarize_wal = on, a full backup, the same write load at every size
# (`pgbench -c 4 -t BENCH_DELTA_TRANSACTIONS`, default 1000 transactions
# per client), then two deltas against that same full backup
# (WALG_DELTA_ORIGIN=LATEST_FULL): one from the summaries, one with
# WALDEN_DELTA_SUMMARIES=off (the page scan), page cache dropped before
# each: time, bytes read from disk (the child's block inputs), bytes
# walden says it read, bytes stored.
#
# The summaries path should cost what changed, not the cluster's size.
# PostgreSQL 17 comes from scripts/pg-versions.sh (as the tests use it).
set -euo pipefail
# shellcheck source=scripts/bench/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
bench_build
bash scripts/pg-versions.sh >/dev/null
bench_workdir sumbench
bench_pg_ctl="$work/pgbin/pg_ctl"
bench_stage
python3 scripts/bench/delta_summaries.py "$work"
