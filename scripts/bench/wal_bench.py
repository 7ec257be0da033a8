"""Driver of scripts/bench/wal.sh: sets up the data and times the tools.

Every tool runs as the postgres OS user, one process per segment, started
the same way (fork + setuid + exec), and timed from start to exit; peak RSS
comes from the child's rusage. Runs alternate between tools segment by
segment so that machine noise hits all of them alike.
"""
import base64
import filecmp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time

WORK = sys.argv[1]
PGBIN = "/usr/lib/postgresql/15/bin"
SEGMENTS = int(os.environ.get("BENCH_SEGMENTS", "50"))
# Segments per shape in the isolated runs (pgbench's, random, mixed).
SHAPE_SEGMENTS = min(SEGMENTS, int(os.environ.get("BENCH_SHAPE_SEGMENTS", "12")))
PG = f"{WORK}/pg"
SEGS = f"{WORK}/segments"
# BENCH_ISOLATED_ONLY=1: only the isolated runs (no archiver/recovery
# sequences, no replay), for the codec matrix.
ISOLATED_ONLY = os.environ.get("BENCH_ISOLATED_ONLY") == "1"
WALDEN = f"{WORK}/walden"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


PORT = free_port()


def run(argv, env=None, check=True):
    """Run as postgres; return (seconds, peak RSS KiB, exit code)."""
    full_env = {"PATH": "/usr/bin:/bin", "HOME": WORK, "LANG": "C"}
    full_env.update(env or {})
    start = time.perf_counter()
    p = subprocess.Popen(argv, env=full_env, user="postgres", stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, cwd=WORK)
    _, status, usage = os.wait4(p.pid, 0)
    elapsed = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    err = p.stderr.read().decode(errors="replace")
    p.stderr.close()
    p.returncode = code
    if check and code != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({code}):\n{err}")
    return elapsed, usage.ru_maxrss, code


def psql(sql):
    out = subprocess.run(["psql", "-X", "-A", "-t", "-h", WORK, "-p", str(PORT), "-U", "postgres",
                          "-d", "postgres", "-c", sql], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def pg_ctl(datadir, action, log=None, extra=()):
    argv = [f"{PGBIN}/pg_ctl", "-D", datadir, "-w", "-t", "600", action, *extra]
    if log:
        argv += ["-l", log]
    subprocess.run(["runuser", "-u", "postgres", "--", *argv], check=True, stdout=subprocess.DEVNULL)


def write_conf(datadir, lines):
    with open(f"{datadir}/postgresql.conf", "a") as f:
        f.write("\n".join(lines) + "\n")


def make_data():
    """A cluster collects every archived segment; a base backup is taken
    first, so the segments after it can be replayed."""
    os.makedirs(SEGS)
    shutil.chown(SEGS, "postgres")
    subprocess.run(["runuser", "-u", "postgres", "--", f"{PGBIN}/initdb", "-D", PG, "--data-checksums",
                    "-U", "postgres", "--auth=trust"], check=True, stdout=subprocess.DEVNULL)
    write_conf(PG, [f"port = {PORT}", "listen_addresses = ''", f"unix_socket_directories = '{WORK}'",
                    "archive_mode = on", f"archive_command = 'cp %p {SEGS}/%f'",
                    "max_wal_size = 4GB", "wal_level = replica"])
    pg_ctl(PG, "start", log=f"{WORK}/pg.log")
    print("== generating WAL with pgbench", flush=True)
    bench = ["pgbench", "-h", WORK, "-p", str(PORT), "-U", "postgres"]
    subprocess.run(bench + ["-i", "-q", "-s", "10", "postgres"], check=True, capture_output=True)
    subprocess.run(["runuser", "-u", "postgres", "--", f"{PGBIN}/pg_basebackup", "-h", WORK, "-p", str(PORT),
                    "-U", "postgres", "-X", "none", "-c", "fast", "-D", f"{WORK}/base"], check=True)
    while True:
        done = len([f for f in os.listdir(SEGS) if len(f) == 24])
        if done >= SEGMENTS + 4:
            break
        subprocess.run(bench + ["-n", "-c", "4", "-j", "2", "-t", "3000", "postgres"], check=True,
                       capture_output=True)
        psql("CHECKPOINT")
    last = psql("SELECT pg_walfile_name(pg_switch_wal())")
    while psql(f"SELECT coalesce(last_archived_wal,'') >= '{last}' FROM pg_stat_archiver") != "t":
        time.sleep(0.2)
    global EXPECTED
    EXPECTED = psql("SELECT sum(delta)::text || '/' || count(*) FROM pgbench_history")
    pg_ctl(PG, "stop", extra=["-m", "fast"])
    names = sorted(f for f in os.listdir(SEGS) if len(f) == 24)
    return names


def pgbr_conf(name, compress, extra=()):
    path = f"{WORK}/pgbackrest-{name}.conf"
    lines = ["[global]", f"repo1-path={WORK}/repo-pgbr-{name}", "log-level-console=error",
             "log-level-file=off", f"lock-path={WORK}/pgbr-lock", f"spool-path={WORK}/pgbr-spool-{name}",
             *compress, *extra, "[bench]", f"pg1-path={PG}", f"pg1-socket-path={WORK}", f"pg1-port={PORT}"]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def median_ms(xs):
    return statistics.median(xs) * 1000


def fake_pg_wal(tool, names):
    """A pg_wal of hard links with every segment marked .ready, as the
    archiver leaves it when archiving falls behind."""
    d = f"{WORK}/pgwal-{tool}"
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(f"{d}/archive_status")
    for n in names:
        os.link(f"{SEGS}/{n}", f"{d}/{n}")
        open(f"{d}/archive_status/{n}.ready", "w").close()
    subprocess.run(["chown", "-R", "postgres:", d], check=True)
    return d


def table(title, rows, cols):
    print(f"\n== {title}")
    print(f"{'tool':<12}" + "".join(f"{c:>12}" for c in cols))
    for t, vals in rows.items():
        print(f"{t:<12}" + "".join(f"{v:>12.2f}" for v in vals))
    base = rows.get("walden")
    for t, vals in rows.items():
        if t != "walden" and base:
            ratios = ", ".join(f"{c} {v / b:.2f}x" for c, v, b in zip(cols, vals, base) if b > 0 and "RSS" not in c)
            print(f"{t} / walden: {ratios}")
    sys.stdout.flush()


def reset_repos(cname):
    """Empty every tool's WAL archive, so that no tool finds a segment
    already stored (pgBackRest skips those; walden would upload again)."""
    pgbr = f"{WORK}/repo-pgbr-{cname}/archive/bench"
    for entry in os.listdir(pgbr) if os.path.isdir(pgbr) else []:
        if os.path.isdir(f"{pgbr}/{entry}"):
            for sub in os.listdir(f"{pgbr}/{entry}"):
                if os.path.isdir(f"{pgbr}/{entry}/{sub}"):
                    shutil.rmtree(f"{pgbr}/{entry}/{sub}")
    for entry in os.listdir(WORK):
        if entry.startswith("repo-") and entry.endswith(cname) and not entry.startswith("repo-pgbr"):
            for sub in os.listdir(f"{WORK}/{entry}"):
                shutil.rmtree(f"{WORK}/{entry}/{sub}")


def random_text(n):
    """Printable random bytes: what compresses like WAL full of text
    columns (about 6 bits of entropy per byte)."""
    return base64.b64encode(os.urandom(n * 3 // 4 + 3))[:n]


def make_shapes(timed):
    """Segments of three shapes, alike in size and name form: pgbench's
    own (very compressible), random text, and mixed (every other 8 KiB page
    of a pgbench segment replaced by random text, as full-page images of
    text rows interleave with record data). The synthetic ones get their
    own timelines so that no name clashes with a real segment. The first
    page stays pgbench's in both: pgBackRest checks the segment header."""
    shapes = {"compressible": [f"{SEGS}/{n}" for n in timed[:SHAPE_SEGMENTS]]}
    todo = []
    for shape, timeline in (("random", "0000000A"), ("mixed", "0000000B")):
        d = f"{WORK}/shape-{shape}"
        os.makedirs(d, exist_ok=True)
        shapes[shape] = [f"{d}/{timeline}{n[8:]}" for n in timed[:SHAPE_SEGMENTS]]
        todo += [(shape, f"{SEGS}/{n}", path) for n, path in zip(timed, shapes[shape])]
    # Written by a child: the tools are forked from this process, and the
    # peak RSS a child reports includes what this process held at fork.
    pid = os.fork()
    if pid == 0:
        for shape, source, path in todo:
            with open(source, "rb") as f:
                real = f.read()
            # The first page stays real: pgBackRest checks the header.
            if shape == "random":
                data = real[:8192] + random_text(len(real) - 8192)
            else:
                data = b"".join(real[p:p + 8192] if (p // 8192) % 2 == 0 else random_text(8192)
                                for p in range(0, len(real), 8192))
            with open(path, "wb") as f:
                f.write(data)
            shutil.chown(path, "postgres")
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit("writing the random and mixed segments failed")
    return shapes


def isolated(cname, ctools, shape, paths):
    """Push then fetch each segment of one shape, one process per call,
    tools alternating; medians and peak RSS."""
    push = {t: [] for t in ctools}
    fetch = {t: [] for t in ctools}
    rss = {t: [0, 0] for t in ctools}
    for path in paths:
        for t, (pusher, env, _) in ctools.items():
            secs, kib, _ = run(pusher(path), env)
            push[t].append(secs)
            rss[t][0] = max(rss[t][0], kib)
    out = f"{WORK}/fetched"
    os.makedirs(out, exist_ok=True)
    shutil.chown(out, "postgres")
    for path in paths:
        n = os.path.basename(path)
        for t, (_, env, fetcher) in ctools.items():
            # The name PostgreSQL gives restore_command's %p.
            os.makedirs(f"{out}/{t}", exist_ok=True)
            shutil.chown(f"{out}/{t}", "postgres")
            dest = f"{out}/{t}/RECOVERYXLOG"
            secs, kib, _ = run(fetcher(n, dest), {**env, "WALG_DOWNLOAD_CONCURRENCY": "1"})
            fetch[t].append(secs)
            rss[t][1] = max(rss[t][1], kib)
            if not filecmp.cmp(dest, path, shallow=False):
                raise SystemExit(f"{t} fetched {n} wrong")
            os.remove(dest)
    table(f"{cname}, {shape} segments, isolated: one process per segment, nothing else waiting; "
          f"median of {len(paths)} (ms), peak RSS (MiB)",
          {t: [median_ms(push[t]), median_ms(fetch[t]), rss[t][0] / 1024, rss[t][1] / 1024] for t in ctools},
          ["push ms", "fetch ms", "push RSS", "fetch RSS"])


def bench_config(cname, ctools, names, timed):
    # 1. Isolated: one process per segment, no other segment waiting, for
    # each segment shape.
    for shape, paths in SHAPES.items():
        isolated(cname, ctools, shape, paths)
    if ISOLATED_ONLY:
        return

    # 2. As PostgreSQL calls them: the archiver runs archive_command for the
    # oldest .ready segment and renames it .done on success; recovery runs
    # restore_command for consecutive segments. Each tool does what it does
    # in that situation (walden: background uploads and prefetch; pgBackRest
    # archive-push sync as configured, archive-get sync).
    reset_repos(cname)
    seq_push = {t: [] for t in ctools}
    seq_rss = {t: 0 for t in ctools}
    dirs = {t: fake_pg_wal(f"{cname}-{t}", timed) for t in ctools}
    for n in timed:
        for t, (pusher, env, _) in ctools.items():
            d = dirs[t]
            # PostgreSQL (15+) checks that a segment is still .ready before
            # it calls archive_command: one a tool already stored in the
            # background (and marked .done) is not asked for again.
            if not os.path.exists(f"{d}/archive_status/{n}.ready"):
                continue
            secs, kib, _ = run(pusher(f"{d}/{n}"), env)
            seq_push[t].append(secs)
            seq_rss[t] = max(seq_rss[t], kib)
            # wal-rus renames .ready to .done itself.
            if os.path.exists(f"{d}/archive_status/{n}.ready"):
                os.rename(f"{d}/archive_status/{n}.ready", f"{d}/archive_status/{n}.done")
    for n in names[:-SEGMENTS]:
        for t, (pusher, env, _) in ctools.items():
            run(pusher(f"{SEGS}/{n}"), env)
    seq_fetch = {t: [] for t in ctools}
    for t, (_, env, fetcher) in ctools.items():
        d = f"{WORK}/restore-pgwal-{t}"
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        shutil.chown(d, "postgres")
        for n in timed:
            secs, _, _ = run(fetcher(n, f"{d}/RECOVERYXLOG"), env)
            seq_fetch[t].append(secs)
            os.remove(f"{d}/RECOVERYXLOG")
        time.sleep(1)  # let walden's last prefetcher exit before the next tool
    table(f"{cname}, as PostgreSQL calls them: {len(timed)} consecutive segments (total s, median ms per call; "
          f"calls made: {', '.join(f'{t} {len(seq_push[t])}' for t in ctools)})",
          {t: [sum(seq_push[t]), median_ms(seq_push[t]), sum(seq_fetch[t]), median_ms(seq_fetch[t]),
               seq_rss[t] / 1024] for t in ctools},
          ["push total", "push ms", "fetch total", "fetch ms", "push RSS"])


def main():
    names = make_data()
    timed = names[-SEGMENTS:]
    print(f"== {len(names)} segments written, {len(timed)} timed", flush=True)
    global SHAPES
    SHAPES = make_shapes(timed)
    # Stanzas need a running server.
    pg_ctl(PG, "start", log=f"{WORK}/pg.log")
    key = base64.b64encode(os.urandom(32)).decode()
    sodium = {"WALG_LIBSODIUM_KEY": key, "WALG_LIBSODIUM_KEY_TRANSFORM": "base64"}
    # WAL-G names its zstd levels ("default" is level 3, as in walden);
    # wal-rus reads a number from WALG_COMPRESSION_LEVEL (default 1) for
    # zstd and brotli; brotli is quality 3 in walden and WAL-G.
    zstd3 = {"WALG_COMPRESSION_METHOD": "zstd", "WALG_ZSTD_LEVEL": "default", "WALG_COMPRESSION_LEVEL": "3"}
    lz4 = {"WALG_COMPRESSION_METHOD": "lz4"}
    brotli3 = {"WALG_COMPRESSION_METHOD": "brotli", "WALG_COMPRESSION_LEVEL": "3"}
    # pgbr None: pgBackRest has no such codec or cipher (its encryption is
    # aes-256-cbc), so it sits that configuration out.
    all_configs = {
        "zstd-3": {"walden": zstd3, "pgbr": ["compress-type=zst", "compress-level=3"]},
        "defaults": {"walden": {}, "pgbr": []},
        "lz4": {"walden": lz4, "pgbr": ["compress-type=lz4", "compress-level=1"]},
        "brotli-3": {"walden": brotli3, "pgbr": None},
        "zstd-3-sodium": {"walden": {**zstd3, **sodium}, "pgbr": None},
        "lz4-sodium": {"walden": {**lz4, **sodium}, "pgbr": None},
        "brotli-3-sodium": {"walden": {**brotli3, **sodium}, "pgbr": None},
    }
    # BENCH_CONFIGS picks some (comma-separated names above); zstd-3 is
    # always there: the replay reads its repositories.
    wanted = os.environ.get("BENCH_CONFIGS", "zstd-3,defaults").split(",")
    unknown = [c for c in wanted if c not in all_configs]
    if unknown:
        raise SystemExit(f"unknown BENCH_CONFIGS {unknown}; known: {', '.join(all_configs)}")
    configs = {c: all_configs[c] for c in all_configs if c in wanted or c == "zstd-3"}
    tools = {}
    for cname, c in configs.items():
        env = {"WALG_FILE_PREFIX": f"{WORK}/repo-walden-{cname}", **c["walden"]}
        tools[cname] = {
            "walden": (lambda seg, env=env: [WALDEN, "wal-push", seg], env,
                       lambda n, d: [WALDEN, "wal-fetch", n, d]),
        }
        if c["pgbr"] is not None:
            conf = pgbr_conf(cname, c["pgbr"])
            run(["pgbackrest", f"--config={conf}", "--stanza=bench", "stanza-create"])
            tools[cname]["pgbackrest"] = (
                lambda seg, conf=conf: ["pgbackrest", f"--config={conf}", "--stanza=bench", "archive-push", seg],
                {},
                lambda n, d, conf=conf: ["pgbackrest", f"--config={conf}", "--stanza=bench", "archive-get", n, d])
        for peer, label in (("BENCH_WALG", "wal-g"), ("BENCH_WALRUS", "wal-rus")):
            exe = f"{WORK}/{peer}"
            if os.path.exists(exe):
                penv = {"WALG_FILE_PREFIX": f"{WORK}/repo-{label}-{cname}", **c["walden"]}
                tools[cname][label] = (lambda seg, exe=exe: [exe, "wal-push", seg], penv,
                                       lambda n, d, exe=exe: [exe, "wal-fetch", n, d])
    pg_ctl(PG, "stop", extra=["-m", "fast"])
    # WAL-G refuses a file storage root that does not exist yet.
    for cname, ctools in tools.items():
        for _, env, _ in ctools.values():
            if "WALG_FILE_PREFIX" in env:
                os.makedirs(env["WALG_FILE_PREFIX"], exist_ok=True)
                shutil.chown(env["WALG_FILE_PREFIX"], "postgres")

    for cname, ctools in tools.items():
        bench_config(cname, ctools, names, timed)

    if ISOLATED_ONLY:
        return
    # Replay through restore_command, alternating tools, two rounds.
    print("\n== replay of the base backup through restore_command (zstd-3 repositories)")
    async_conf = pgbr_conf("zstd-3", configs["zstd-3"]["pgbr"], ["archive-async=y", "process-max=2"])
    commands = {
        "walden": (f"'{WALDEN} wal-fetch %f %p'",
                   {"WALG_FILE_PREFIX": f"{WORK}/repo-walden-zstd-3", "WALG_COMPRESSION_METHOD": "zstd"}),
        # pgBackRest checks that it runs for the data directory it is
        # configured for.
        "pgbackrest": (f"'pgbackrest --config={async_conf} --stanza=bench --pg1-path={WORK}/restore-pgbackrest "
                       f"archive-get %f \"%p\"'", {}),
    }
    for peer, label in (("BENCH_WALG", "wal-g"), ("BENCH_WALRUS", "wal-rus")):
        exe = f"{WORK}/{peer}"
        if os.path.exists(exe):
            commands[label] = (f"'{exe} wal-fetch %f %p'",
                               {"WALG_FILE_PREFIX": f"{WORK}/repo-{label}-zstd-3",
                                "WALG_COMPRESSION_METHOD": "zstd"})
    times = {t: [] for t in commands}
    for rnd in range(2):
        for t, (cmd, env) in commands.items():
            d = f"{WORK}/restore-{t}"
            shutil.rmtree(d, ignore_errors=True)
            shutil.rmtree(f"{WORK}/pgbr-spool-zstd-3", ignore_errors=True)
            subprocess.run(["cp", "-a", f"{WORK}/base", d], check=True)
            write_conf(d, [f"port = {PORT}", "archive_mode = off", f"restore_command = {cmd}"])
            open(f"{d}/recovery.signal", "w").close()
            shutil.chown(f"{d}/recovery.signal", "postgres")
            start = time.perf_counter()
            envs = [f"{k}={v}" for k, v in env.items()]
            subprocess.run(["runuser", "-u", "postgres", "--", "env", *envs, f"{PGBIN}/pg_ctl", "-D", d,
                            "-l", f"{WORK}/restore-{t}.log", "-w", "-t", "900", "start"],
                           check=True, stdout=subprocess.DEVNULL)
            while psql("SELECT pg_is_in_recovery()") != "f":
                time.sleep(0.05)
            times[t].append(time.perf_counter() - start)
            got = psql("SELECT sum(delta)::text || '/' || count(*) FROM pgbench_history")
            if got != EXPECTED:
                raise SystemExit(f"{t}: replay ended at the wrong place: {got} != {EXPECTED}")
            pg_ctl(d, "stop", extra=["-m", "immediate"])
    replayed = len(names)
    for t, xs in times.items():
        print(f"{t:<12} {statistics.median(xs):.2f} s for {replayed} segments "
              f"({statistics.median(xs) / replayed * 1000:.1f} ms per segment; runs: "
              f"{', '.join(f'{x:.2f}' for x in xs)})")
    for t in times:
        if t != "walden":
            print(f"{t} / walden: replay {statistics.median(times[t]) / statistics.median(times['walden']):.2f}x")


main()
