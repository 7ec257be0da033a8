#!/usr/bin/env bash
# The demo: a throwaway PostgreSQL 15 archives its WAL through
# `walden wal-push` into a local directory and is backed up with
# `walden backup-push` while pgbench writes; a restore point is made, then
# more writes; `walden backup-fetch --recovery-target-name` restores the
# backup and writes the recovery settings, so starting PostgreSQL replays
# through `walden wal-fetch` up to the restore point; the rows are compared
# with those noted at that point. Everything lives in a temp dir that is
# removed at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install-deps.sh
# shellcheck disable=SC1091
command -v cargo >/dev/null 2>&1 || . "$HOME/.cargo/env"

echo "== building walden (release)"
cargo build --release --quiet
PGBIN=/usr/lib/postgresql/15/bin
work=$(mktemp -d /tmp/walden-demo.XXXXXX)
chmod 755 "$work"
cp "${CARGO_TARGET_DIR:-target}/release/walden" "$work/walden"
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
if [ "$(id -u)" -eq 0 ]; then chown postgres: "$work"; fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cleanup() {
    as_pg "$PGBIN/pg_ctl" -D "$work/restored" -m immediate stop >/dev/null 2>&1 || true
    as_pg "$PGBIN/pg_ctl" -D "$work/primary" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
export WALG_FILE_PREFIX="$work/archive" WALG_COMPRESSION_METHOD=zstd

echo "== a primary archiving with: archive_command = '$work/walden wal-push %p'"
as_pg "$PGBIN/initdb" -D "$work/primary" --data-checksums -U postgres --auth=trust >/dev/null
cat >> "$work/primary/postgresql.conf" <<CONF
port = $port
listen_addresses = ''
unix_socket_directories = '$work'
archive_mode = on
archive_command = '$work/walden wal-push %p'
CONF
as_pg env WALG_FILE_PREFIX="$WALG_FILE_PREFIX" WALG_COMPRESSION_METHOD=zstd \
    "$PGBIN/pg_ctl" -D "$work/primary" -l "$work/primary.log" -w start >/dev/null
psql_p() { psql -X -A -t -h "$work" -p "$port" -U postgres -d postgres -c "$1"; }
pgbench -i -q -s 10 -h "$work" -p "$port" -U postgres postgres 2>/dev/null
pgenv=(env WALG_FILE_PREFIX="$WALG_FILE_PREFIX" WALG_COMPRESSION_METHOD=zstd
       PGHOST="$work" PGPORT="$port" PGUSER=postgres PGDATABASE=postgres)

echo "== backup-push while pgbench writes"
pgbench -n -T 5 -c 2 -h "$work" -p "$port" -U postgres postgres >/dev/null 2>&1 &
bench=$!
as_pg "${pgenv[@]}" "$work/walden" backup-push "$work/primary" 2>&1 | sed "s/^/   /"
wait "$bench"
"$work/walden" st ls basebackups_005/ | tail -n +2 | awk '{print "     " $NF}'

echo "== more writes, a restore point, then writes that the restore must not show"
pgbench -n -t 2000 -c 2 -h "$work" -p "$port" -U postgres postgres >/dev/null
expected=$(psql_p "SELECT count(*) || ' rows, balance ' || sum(abalance) FROM pgbench_accounts")
psql_p "SELECT pg_create_restore_point('demo')" >/dev/null
psql_p "UPDATE pgbench_accounts SET abalance = abalance + 1000 WHERE aid <= 50000" >/dev/null
after=$(psql_p "SELECT count(*) || ' rows, balance ' || sum(abalance) FROM pgbench_accounts")
last=$(psql_p "SELECT pg_walfile_name(pg_switch_wal())")
until [ "$(psql_p "SELECT coalesce(last_archived_wal,'') >= '$last' FROM pg_stat_archiver")" = t ]; do sleep 0.2; done
as_pg "$PGBIN/pg_ctl" -D "$work/primary" -m fast stop >/dev/null
echo "   archived up to $last; storage holds:"
"$work/walden" st ls wal_005/ | tail -n +2 | awk '{print "     " $NF}' | head -5
echo "     ... $("$work/walden" st ls wal_005/ | tail -n +2 | wc -l) objects"

echo "== backup-fetch LATEST --recovery-target-name demo: restore, and set up the recovery"
as_pg "${pgenv[@]}" "$work/walden" backup-fetch "$work/restored" LATEST --recovery-target-name demo
echo "   walden appended to postgresql.auto.conf:"
sed -n '/# Added by walden/,$p' "$work/restored/postgresql.auto.conf" | sed 's/^/     /'
cat >> "$work/restored/postgresql.conf" <<CONF
port = $port
archive_mode = off
CONF
as_pg env WALG_FILE_PREFIX="$WALG_FILE_PREFIX" WALG_COMPRESSION_METHOD=zstd \
    "$PGBIN/pg_ctl" -D "$work/restored" -l "$work/restored.log" -w -t 300 start >/dev/null
until [ "$(psql_p "SELECT pg_is_in_recovery()")" = f ]; do sleep 0.2; done
got=$(psql_p "SELECT count(*) || ' rows, balance ' || sum(abalance) FROM pgbench_accounts")
echo "   primary at the restore point: $expected"
echo "   primary at the end:           $after"
echo "   restored to the restore point: $got"
echo "   WAL files replayed from the archive: $(grep -c 'restored log file' "$work/restored.log")"
[ "$got" = "$expected" ] && echo "== demo OK" || { echo "== demo FAILED"; exit 1; }
