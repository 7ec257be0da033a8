"""Driver of scripts/bench/wal-burst.sh: a write burst against each archiver.

Every run starts from the same stopped copy of a pgbench cluster, with the
tool under test as archive_command. The backlog is what PostgreSQL itself
sees: `.ready` files in pg_wal/archive_status. The archiver's peak RSS is the
larger of GNU time's figure for each archive_command call and, sampled once
a second, the high-water mark of any long-lived process of the tool
(pgBackRest's async worker is detached, so GNU time never sees it).
"""
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time

WORK = sys.argv[1]
NANIO = sys.argv[2]
PGBIN = "/usr/lib/postgresql/15/bin"
SECONDS = int(os.environ.get("BENCH_SECONDS", "60"))
SCALE = int(os.environ.get("BENCH_SCALE", "50"))
CLIENTS = os.environ.get("BENCH_CLIENTS", "8")
# pgbench -R: the same transaction rate (so the same WAL) for every tool;
# unset, pgbench runs flat out and a tool that takes less CPU from the
# server faces more WAL.
RATE = os.environ.get("BENCH_RATE", "")
RUNS = int(os.environ.get("BENCH_RUNS", "1"))
CODEC = os.environ.get("BENCH_CODEC", "zstd-3")
STORAGES = os.environ.get("BENCH_STORAGES", "fs s3").split()
# Only these tools (labels as printed), when set.
ONLY = [t.strip() for t in os.environ.get("BENCH_TOOLS", "").split(",") if t.strip()]
DRAIN_LIMIT = 900
BASE = f"{WORK}/pg"
RUN = f"{WORK}/run"
BULK = f"{WORK}/bulk.sql"
S3_KEYS = {"AWS_ACCESS_KEY_ID": "benchkey", "AWS_SECRET_ACCESS_KEY": "benchsecret", "AWS_REGION": "us-east-1",
           "AWS_S3_FORCE_PATH_STYLE": "true"}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


PORT = free_port()


def as_postgres(argv, **kw):
    return subprocess.run(["runuser", "-u", "postgres", "--", *argv], check=True, **kw)


def psql(sql):
    out = subprocess.run(["psql", "-X", "-A", "-t", "-h", WORK, "-p", str(PORT), "-U", "postgres",
                          "-d", "postgres", "-c", sql], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def pg_ctl(datadir, action, extra=()):
    as_postgres([f"{PGBIN}/pg_ctl", "-D", datadir, "-w", "-t", "600", "-l", f"{WORK}/pg.log", action, *extra],
                stdout=subprocess.DEVNULL)


def make_base():
    as_postgres([f"{PGBIN}/initdb", "-D", BASE, "-U", "postgres", "--auth=trust"], stdout=subprocess.DEVNULL)
    # Frequent checkpoints: after each one, the first change to every page
    # writes the whole page into WAL, which is the storm.
    with open(f"{BASE}/postgresql.conf", "a") as f:
        f.write("\n".join([f"port = {PORT}", "listen_addresses = ''", f"unix_socket_directories = '{WORK}'",
                           "archive_mode = on", "archive_command = '/bin/true'", "wal_level = replica",
                           "checkpoint_timeout = 30s", "max_wal_size = 256MB", "min_wal_size = 80MB",
                           "shared_buffers = 256MB", "synchronous_commit = off"]) + "\n")
    pg_ctl(BASE, "start")
    print(f"== pgbench scale {SCALE}", flush=True)
    subprocess.run(["pgbench", "-h", WORK, "-p", str(PORT), "-U", "postgres", "-i", "-q", "-s", str(SCALE),
                    "postgres"], check=True, capture_output=True)
    psql("CREATE TABLE burst_text (id bigserial PRIMARY KEY, t text)")
    psql("CHECKPOINT")
    pg_ctl(BASE, "stop", ["-m", "fast"])
    # One transaction in ten also loads 500 rows of random text (about
    # 150 KB of WAL that compresses poorly), as a batch job would beside
    # the OLTP load.
    with open(BULK, "w") as f:
        f.write("INSERT INTO burst_text (t) SELECT md5(random()::text) || md5(random()::text) || "
                "md5(random()::text) || md5(random()::text) FROM generate_series(1, 500);\n")


def start_nanio():
    port = free_port()
    data = f"{WORK}/nanio-data"
    os.makedirs(f"{data}/bench", exist_ok=True)
    log = open(f"{WORK}/nanio.log", "a")
    env = {**os.environ, "NANIO_ACCESS_KEY": S3_KEYS["AWS_ACCESS_KEY_ID"],
           "NANIO_SECRET_KEY": S3_KEYS["AWS_SECRET_ACCESS_KEY"], "NANIO_REGION": S3_KEYS["AWS_REGION"]}
    proc = subprocess.Popen([NANIO, "serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", data,
                             "--no-access-log"], env=env, stdout=log, stderr=log, cwd=WORK)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    raise SystemExit("nanio did not start; see nanio.log")


def pgbr_conf(name, extra):
    path = f"{WORK}/pgbackrest-{name}.conf"
    compress = ["compress-type=zst", "compress-level=3"] if CODEC == "zstd-3" else []
    lines = ["[global]", f"repo1-path={WORK}/repo-{name}", "log-level-console=error", "log-level-file=off",
             f"lock-path={WORK}/pgbr-lock-{name}", f"spool-path={WORK}/pgbr-spool-{name}", *compress, *extra,
             "[bench]", f"pg1-path={RUN}", f"pg1-socket-path={WORK}", f"pg1-port={PORT}"]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    for d in (f"{WORK}/repo-{name}", f"{WORK}/pgbr-spool-{name}", f"{WORK}/pgbr-lock-{name}"):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        shutil.chown(d, "postgres")
    return path


def tools_for(storage, endpoint):
    """label -> (archive command, environment, process marker for RSS sampling)."""
    zstd = {"WALG_COMPRESSION_METHOD": "zstd", "WALG_ZSTD_LEVEL": "default", "WALG_COMPRESSION_LEVEL": "3"} \
        if CODEC == "zstd-3" else {}
    tools = {}
    for label, exe in (("walden", f"{WORK}/walden"), ("wal-g", f"{WORK}/BENCH_WALG"),
                       ("wal-rus", f"{WORK}/BENCH_WALRUS")):
        if not os.path.exists(exe):
            continue
        if storage == "fs":
            repo = f"{WORK}/repo-{label}"
            shutil.rmtree(repo, ignore_errors=True)
            os.makedirs(repo)
            shutil.chown(repo, "postgres")
            where = {"WALG_FILE_PREFIX": repo}
        else:
            where = {**S3_KEYS, "AWS_ENDPOINT": endpoint, "WALG_S3_PREFIX": f"s3://bench/{label}-{time.time_ns()}"}
        extra = {}
        if label == "walden" and os.environ.get("BENCH_WALDEN_UPLOAD_CONCURRENCY"):
            extra["WALG_UPLOAD_CONCURRENCY"] = os.environ["BENCH_WALDEN_UPLOAD_CONCURRENCY"]
        tools[label] = (f"{exe} wal-push %p", {**zstd, **where, **extra}, exe)
    if storage == "fs":
        sync = pgbr_conf("pgbr-sync", [])
        tools["pgbr sync"] = (f"pgbackrest --config={sync} --stanza=bench archive-push %p", {}, "pgbackrest")
        asy = pgbr_conf("pgbr-async", ["archive-async=y", "process-max=2"])
        tools["pgbr async"] = (f"pgbackrest --config={asy} --stanza=bench archive-push %p", {}, "pgbackrest")
    return tools


def fresh_run_copy():
    if os.path.exists(f"{RUN}/postmaster.pid"):
        pg_ctl(RUN, "stop", ["-m", "immediate"])
    shutil.rmtree(RUN, ignore_errors=True)
    subprocess.run(["cp", "-a", BASE, RUN], check=True)


def hwm_kib(marker):
    """Largest VmHWM of a running process whose command line starts with marker."""
    best = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv0 = f.read().split(b"\0")[0].decode(errors="replace")
            if not argv0.endswith(os.path.basename(marker)):
                continue
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        best = max(best, int(line.split()[1]))
        except OSError:
            continue
    return best


def ready_count():
    try:
        return sum(1 for n in os.listdir(f"{RUN}/pg_wal/archive_status") if n.endswith(".ready"))
    except OSError:
        return 0


def burst(label, command, env, marker):
    fresh_run_copy()
    rss_file = f"{WORK}/rss-{label.replace(' ', '-')}"
    open(rss_file, "w").close()
    shutil.chown(rss_file, "postgres")
    with open(f"{RUN}/postgresql.conf", "a") as f:
        f.write(f"archive_command = '/usr/bin/time -a -o {rss_file} -f \"%e %M %U %S\" {command}'\n")
    if "stanza=bench" in command:
        conf = command.split("--config=")[1].split()[0]
        pg_ctl(RUN, "start")
        as_postgres(["pgbackrest", f"--config={conf}", "--stanza=bench", "stanza-create"],
                    stdout=subprocess.DEVNULL)
    else:
        envs = [f"{k}={v}" for k, v in env.items()]
        as_postgres(["env", *envs, f"{PGBIN}/pg_ctl", "-D", RUN, "-w", "-t", "600", "-l", f"{WORK}/pg.log",
                     "start"], stdout=subprocess.DEVNULL)
    start = time.monotonic()
    bench = subprocess.Popen(["pgbench", "-h", WORK, "-p", str(PORT), "-U", "postgres", "-c", CLIENTS,
                              "-j", "2", "-M", "prepared", "-T", str(SECONDS), *(["-R", RATE] if RATE else []), "-b", "tpcb-like@9",
                              "-f", f"{BULK}@1", "postgres"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    curve, peak_rss, ended = [], 0, None
    while True:
        time.sleep(1)
        n = ready_count()
        curve.append(n)
        peak_rss = max(peak_rss, hwm_kib(marker))
        if ended is None and bench.poll() is not None:
            ended = time.monotonic()
            # What pgbench left in the current segment is archived too.
            psql("SELECT pg_switch_wal()")
        if ended is not None and n == 0:
            drain = time.monotonic() - ended
            break
        if ended is not None and time.monotonic() - ended > DRAIN_LIMIT:
            drain = float("inf")
            break
    out = bench.stdout.read()
    tps = next((float(line.split("=")[1].split()[0]) for line in out.splitlines()
                if line.startswith("tps =")), 0.0)
    archived, failed = psql("SELECT archived_count || ' ' || failed_count FROM pg_stat_archiver").split()
    pg_ctl(RUN, "stop", ["-m", "fast"])
    with open(rss_file) as f:
        calls = [line.split() for line in f if len(line.split()) == 4]
    peak_rss = max([peak_rss, *(int(c[1]) for c in calls)])
    secs = sorted(float(c[0]) for c in calls)
    # CPU beside wall time: a call that waits for a core under load shows a
    # long wall time for the same CPU.
    cpu = sorted(float(c[2]) + float(c[3]) for c in calls)
    call_stats = (f"{len(secs)} calls, median {statistics.median(secs) * 1000:.0f} ms "
                  f"({statistics.median(cpu) * 1000:.0f} ms CPU, {sum(cpu):.1f} s in all), "
                  f"max {secs[-1] * 1000:.0f} ms") if secs else "no calls"
    print(f"   {label:<12} backlog max {max(curve):>4}, drained {drain:6.1f} s after pgbench, "
          f"{archived} segments, {failed} failed calls, {tps:.0f} tps, peak RSS {peak_rss / 1024:.0f} MiB; "
          f"{call_stats}; curve {curve[::5]}", flush=True)
    return max(curve), drain, int(archived), int(failed), tps, peak_rss


def main():
    make_base()
    nanio, endpoint = start_nanio()
    try:
        for storage in STORAGES:
            print(f"\n== {storage} storage, {CODEC}, pgbench -c {CLIENTS} -T {SECONDS}", flush=True)
            if storage == "s3":
                print("   (pgBackRest speaks only HTTPS to S3 and the local server is plain HTTP: "
                      "pgBackRest is measured on the filesystem only)")
            results = {}
            for rnd in range(RUNS):
                tools = tools_for(storage, endpoint)
                order = [(k, v) for k, v in tools.items() if not ONLY or k in ONLY]
                if rnd % 2:
                    order.reverse()
                for label, (command, env, marker) in order:
                    results.setdefault(label, []).append(burst(label, command, env, marker))
            print(f"\n{'tool':<12}{'backlog max':>12}{'drain s':>10}{'segments':>10}{'failed':>8}"
                  f"{'tps':>8}{'peak RSS':>10}")
            for label, rs in results.items():
                med = [statistics.median(r[i] for r in rs) for i in range(6)]
                print(f"{label:<12}{med[0]:>12.0f}{med[1]:>10.1f}{med[2]:>10.0f}{med[3]:>8.0f}{med[4]:>8.0f}"
                      f"{med[5] / 1024:>9.0f}M")
            sys.stdout.flush()
    finally:
        nanio.terminate()


main()
