#!/usr/bin/env bash
# Copy-composer benchmark (prints figures; not a test): the cluster of the
# base-backup benchmark, a --copy-composer backup, `pgbench -T
# BENCH_COPY_SECONDS` (default 20), then a second --copy-composer backup
# against a plain --full one: time, bytes read, bytes stored, tars copied.
# BENCH_SCALE, BENCH_TEXT_MB, BENCH_CONCURRENCY as in backup.sh;
# BENCH_TAR_SIZE: WALG_TAR_SIZE_THRESHOLD (default 64 MiB; with WAL-G's
# 1 GiB a small cluster is one tar, which any change makes new).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bin="${BENCH_WALDEN:-}"
if [ -z "$bin" ]; then
    bash scripts/install-deps.sh
    bin=$(bash scripts/build-release.sh | tail -1)
fi
work=$(mktemp -d /tmp/walden-copybench.XXXXXX)
chmod 755 "$work"
keep="${BENCH_KEEP:-}"
cleanup() {
    [ -f "$work/pg/postmaster.pid" ] && runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$work/pg" -m immediate stop >/dev/null 2>&1
    [ -n "$keep" ] || rm -rf "$work"
}
trap cleanup EXIT
cp "$bin" "$work/walden"
chown -R postgres: "$work"
python3 scripts/bench/copy_bench.py "$work"
