"""What the base-backup benchmarks share (scripts/bench/backup.sh and
delta.sh): the cluster, the tools' settings, running a tool as postgres.

The work directory is the driver's first argument.
"""
import os
import shutil
import socket
import subprocess
import sys
import time

WORK = sys.argv[1]
PGBIN = "/usr/lib/postgresql/15/bin"
SCALE = int(os.environ.get("BENCH_SCALE", "100"))
TEXT_MB = int(os.environ.get("BENCH_TEXT_MB", "500"))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
CONC = os.environ.get("BENCH_CONCURRENCY", "2")
SMALL = int(os.environ.get("BENCH_SMALL_FILES", "0"))
PG = f"{WORK}/pg"
WALDEN = f"{WORK}/walden"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


PORT = free_port()
PGENV = {"PGHOST": WORK, "PGPORT": str(PORT), "PGUSER": "postgres", "PGDATABASE": "postgres"}


def run(argv, env=None, shell=False):
    """Run as postgres; return (seconds, peak RSS KiB)."""
    secs, usage = run_usage(argv, env, shell)
    return secs, usage.ru_maxrss


def run_usage(argv, env=None, shell=False):
    """Run as postgres; return (seconds, the child's rusage)."""
    full_env = {"PATH": "/usr/bin:/bin", "HOME": WORK, "LANG": "C"}
    full_env.update(env or {})
    start = time.perf_counter()
    p = subprocess.Popen(argv, env=full_env, user="postgres", stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, cwd=WORK, shell=shell)
    _, status, usage = os.wait4(p.pid, 0)
    elapsed = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    err = p.stderr.read().decode(errors="replace")
    p.stderr.close()
    if code != 0:
        raise SystemExit(f"{argv} failed ({code}):\n{err}")
    return elapsed, usage


def psql(sql, db="postgres"):
    out = subprocess.run(["psql", "-X", "-A", "-t", "-h", WORK, "-p", str(PORT), "-U", "postgres",
                          "-d", db, "-c", sql], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def pg_ctl(datadir, action, extra=()):
    argv = [f"{PGBIN}/pg_ctl", "-D", datadir, "-w", "-t", "600", "-l", f"{WORK}/pg.log", action, *extra]
    subprocess.run(["runuser", "-u", "postgres", "--", *argv], check=True, stdout=subprocess.DEVNULL)


def du(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            total += os.lstat(os.path.join(root, f)).st_size
    return total


def pgbr_conf():
    path = f"{WORK}/pgbackrest.conf"
    lines = ["[global]", f"repo1-path={WORK}/repo-pgbackrest", "log-level-console=error",
             "log-level-file=off", f"lock-path={WORK}/pgbr-lock", "compress-type=zst", "compress-level=3",
             f"process-max={CONC}", "start-fast=y", "repo1-retention-full=9999",
             "[bench]", f"pg1-path={PG}", f"pg1-socket-path={WORK}", f"pg1-port={PORT}"]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def make_data(conf):
    subprocess.run(["runuser", "-u", "postgres", "--", f"{PGBIN}/initdb", "-D", PG, "-U", "postgres",
                    "--auth=trust"], check=True, stdout=subprocess.DEVNULL)
    # Every tool waits for the archive (PostgreSQL's pg_backup_stop, or
    # pgBackRest's own check of its repository): one archive_command
    # feeding pgBackRest's repository serves them all alike.
    with open(f"{PG}/postgresql.conf", "a") as f:
        f.write("\n".join([f"port = {PORT}", "listen_addresses = ''", f"unix_socket_directories = '{WORK}'",
                           "archive_mode = on",
                           f"archive_command = 'pgbackrest --config={conf} --stanza=bench archive-push %p'",
                           "max_wal_size = 4GB", "wal_level = replica"]) + "\n")
    pg_ctl(PG, "start")
    print(f"== pgbench scale {SCALE} and {TEXT_MB} MB of random text", flush=True)
    subprocess.run(["pgbench", "-h", WORK, "-p", str(PORT), "-U", "postgres", "-i", "-q", "-s", str(SCALE),
                    "postgres"], check=True, capture_output=True)
    rows = TEXT_MB * 1024 * 1024 // 290
    psql("CREATE TABLE random_text AS SELECT g AS id, md5(random()::text) || md5(random()::text) || "
         "md5(random()::text) || md5(random()::text) || md5(random()::text) || md5(random()::text) || "
         "md5(random()::text) || md5(random()::text) AS t "
         f"FROM generate_series(1, {rows}) g")
    if SMALL:
        oid = psql("SELECT oid FROM pg_database WHERE datname = 'postgres'")
        d = f"{PG}/base/{oid}"
        for i in range(SMALL):
            with open(f"{d}/{900000000 + i}", "wb") as f:
                f.write(b"x" * ((i * 7919) % 2049))
        subprocess.run(["chown", "-R", "postgres:", d], check=True)
        print(f"== {SMALL} extra small files under base/{oid}", flush=True)
    psql("CHECKPOINT")
    print(f"== PGDATA: {du(PG) / 2**20:.0f} MiB ({du(PG + '/base') / 2**20:.0f} MiB under base/)", flush=True)


def fresh_dir(path):
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path, mode=0o700)
    shutil.chown(path, "postgres")
    return path


def check_restore(dest):
    if not os.path.isfile(f"{dest}/global/pg_control"):
        raise SystemExit(f"{dest}: no global/pg_control after the restore")
    want, got = du(f"{PG}/base"), du(f"{dest}/base")
    if abs(want - got) > want * 0.01:
        raise SystemExit(f"{dest}: base/ holds {got} bytes, the cluster {want}")


