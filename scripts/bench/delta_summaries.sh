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
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bash scripts/install-deps.sh
bash scripts/pg-versions.sh >/dev/null
bin=$(bash scripts/build-release.sh | tail -1)
work=$(mktemp -d /tmp/walden-sumbench.XXXXXX)
chmod 755 "$work"
keep="${BENCH_KEEP:-}"
cleanup() {
    [ -f "$work/pg/postmaster.pid" ] && runuser -u postgres -- "$work/pgbin/pg_ctl" -D "$work/pg" -m immediate stop >/dev/null 2>&1
    [ -n "$keep" ] || rm -rf "$work"
}
trap cleanup EXIT
cp "$bin" "$work/walden"
chown -R postgres: "$work"
python3 scripts/bench/delta_summaries.py "$work"
