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
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bash scripts/install-deps.sh
bin=$(bash scripts/build-release.sh | tail -1)
work=$(mktemp -d /tmp/walden-walbench.XXXXXX)
chmod 755 "$work"
keep="${BENCH_KEEP:-}"
cleanup() {
    for d in "$work"/pg "$work"/restore-*; do
        [ -f "$d/postmaster.pid" ] && runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$d" -m immediate stop >/dev/null 2>&1
    done
    [ -n "$keep" ] || rm -rf "$work"
}
trap cleanup EXIT
cp "$bin" "$work/walden"
for peer in BENCH_WALG BENCH_WALRUS; do
    if [ -n "${!peer:-}" ]; then cp "${!peer}" "$work/$peer"; else echo "$peer not set: skipping that tool"; fi
done
chown -R postgres: "$work"
exec python3 scripts/bench/wal_bench.py "$work"
