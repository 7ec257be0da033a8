"""Driver of scripts/bench/backup.sh: sets up the cluster and times the tools.

Every tool runs as the postgres OS user, timed from start to exit; peak RSS
is the child's rusage (its own children included). Runs alternate between
tools so that machine noise hits all of them alike. Stored bytes are what
one backup adds to the tool's repository.
"""
import os
import shutil
import socket
import statistics
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
    return elapsed, usage.ru_maxrss


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


def main():
    conf = pgbr_conf()
    os.makedirs(f"{WORK}/repo-pgbackrest")
    shutil.chown(f"{WORK}/repo-pgbackrest", "postgres")
    make_data(conf)
    run(["pgbackrest", f"--config={conf}", "--stanza=bench", "stanza-create"])
    # The load left WAL to archive (into the stanza just created): let the
    # archiver catch up, or the first tool's stop would wait for it.
    last = psql("SELECT pg_walfile_name(pg_switch_wal())")
    while psql(f"SELECT coalesce(last_archived_wal, '') >= '{last}' FROM pg_stat_archiver") != "t":
        time.sleep(0.2)
    zstd = {"WALG_COMPRESSION_METHOD": "zstd", "WALG_ZSTD_LEVEL": "default", "WALG_COMPRESSION_LEVEL": "3",
            "WALG_DOWNLOAD_CONCURRENCY": CONC, **PGENV}
    # WAL-G's only backup parallelism is its disk concurrency (tars filled
    # at once, one compressor each); walden's default of one reader already
    # spreads its compression over every core (measured faster here than
    # two readers), so it keeps its default unless BENCH_WALDEN_DISK says.
    peer_disk = {"WALG_UPLOAD_DISK_CONCURRENCY": CONC}
    walden_disk = {"WALG_UPLOAD_DISK_CONCURRENCY": os.environ["BENCH_WALDEN_DISK"]} \
        if os.environ.get("BENCH_WALDEN_DISK") else {}
    tools = {}
    for label, exe in (("walden", WALDEN), ("wal-g", f"{WORK}/BENCH_WALG"), ("wal-rus", f"{WORK}/BENCH_WALRUS")):
        if os.path.exists(exe):
            repo = f"{WORK}/repo-{label}"
            os.makedirs(repo)
            shutil.chown(repo, "postgres")
            env = {"WALG_FILE_PREFIX": repo, **zstd, **(walden_disk if label == "walden" else peer_disk)}
            tools[label] = (lambda exe=exe: [exe, "backup-push", PG],
                            lambda dest, exe=exe: [exe, "backup-fetch", dest, "LATEST"], env, repo)
    tools["pgbackrest"] = (lambda: ["pgbackrest", f"--config={conf}", "--stanza=bench", "--type=full", "backup"],
                           lambda dest: ["pgbackrest", f"--config={conf}", "--stanza=bench",
                                         f"--pg1-path={dest}", "restore"], {}, f"{WORK}/repo-pgbackrest/backup")
    push = {t: [] for t in tools}
    fetch = {t: [] for t in tools}
    rss = {t: [0, 0] for t in tools}
    stored = {t: 0 for t in tools}
    ceiling = []
    for rnd in range(RUNS):
        for t, (pusher, fetcher, env, repo) in tools.items():
            before = du(repo)
            secs, kib = run(pusher(), env)
            push[t].append(secs)
            rss[t][0] = max(rss[t][0], kib)
            stored[t] = du(repo) - before
            dest = fresh_dir(f"{WORK}/restore")
            secs, kib = run(fetcher(dest), env)
            fetch[t].append(secs)
            rss[t][1] = max(rss[t][1], kib)
            check_restore(dest)
            shutil.rmtree(dest)
            print(f"   run {rnd + 1} {t}: push {push[t][-1]:.2f} s, fetch {fetch[t][-1]:.2f} s", flush=True)
        # pg_wal left out, as every tool leaves it out.
        secs, _ = run(f"tar -cf - --exclude=./pg_wal -C {PG} . | zstd -3 -T2 -q > /dev/null", shell=True)
        ceiling.append(secs)
        print(f"   run {rnd + 1} tar | zstd -3 -T2: {secs:.2f} s", flush=True)

    med = {t: (statistics.median(push[t]), statistics.median(fetch[t])) for t in tools}
    c = statistics.median(ceiling)
    print(f"\n== full backup and restore, zstd level 3, concurrency {CONC}, median of {RUNS} "
          f"(tar|zstd: PGDATA without pg_wal)")
    print(f"{'tool':<12}{'push s':>10}{'fetch s':>10}{'push RSS':>10}{'fetch RSS':>10}{'stored MiB':>12}"
          f"{'push/walden':>13}{'fetch/walden':>14}")
    w = med["walden"]
    for t in tools:
        p, f = med[t]
        print(f"{t:<12}{p:>10.2f}{f:>10.2f}{rss[t][0] / 1024:>9.0f}M{rss[t][1] / 1024:>9.0f}M"
              f"{stored[t] / 2**20:>12.1f}{p / w[0]:>12.2f}x{f / w[1]:>13.2f}x")
    print(f"{'tar|zstd':<12}{c:>10.2f}{'':>10}{'':>10}{'':>10}{'':>12}{c / w[0]:>12.2f}x")
    if SMALL:
        print(f"walden push with {SMALL} extra files: {w[0] / SMALL * 1e6:.1f} µs per file over the whole backup")


main()
