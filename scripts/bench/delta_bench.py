"""Driver of scripts/bench/delta.sh: a full backup, a write load, a delta.

Bytes read are the child's block inputs (rusage, 512-byte units) with the
page cache dropped before each backup, so every tool reads from disk alike.
"""
import os
import shutil
import subprocess
import time

from benchlib import CONC, PG, PGENV, WALDEN, WORK, check_restore, du, fresh_dir, make_data, pgbr_conf, \
    psql, run_usage

SECONDS = os.environ.get("BENCH_DELTA_SECONDS", "60")


def drop_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def timed(argv, env):
    drop_caches()
    secs, usage = run_usage(argv, env)
    return secs, usage.ru_inblock * 512, usage.ru_maxrss


def main():
    conf = pgbr_conf()
    os.makedirs(f"{WORK}/repo-pgbackrest")
    shutil.chown(f"{WORK}/repo-pgbackrest", "postgres")
    make_data(conf)
    run_usage(["pgbackrest", f"--config={conf}", "--stanza=bench", "stanza-create"])
    last = psql("SELECT pg_walfile_name(pg_switch_wal())")
    while psql(f"SELECT coalesce(last_archived_wal, '') >= '{last}' FROM pg_stat_archiver") != "t":
        time.sleep(0.2)
    common = {"WALG_COMPRESSION_METHOD": "zstd", "WALG_ZSTD_LEVEL": "default", "WALG_COMPRESSION_LEVEL": "3",
              "WALG_DOWNLOAD_CONCURRENCY": CONC, "WALG_DELTA_MAX_STEPS": "6", **PGENV}
    tools = {}
    for label, exe in (("walden", WALDEN), ("wal-g", f"{WORK}/BENCH_WALG"), ("wal-rus", f"{WORK}/BENCH_WALRUS")):
        if os.path.exists(exe):
            repo = f"{WORK}/repo-{label}"
            os.makedirs(repo)
            shutil.chown(repo, "postgres")
            env = {"WALG_FILE_PREFIX": repo, **common}
            if label != "walden":
                env["WALG_UPLOAD_DISK_CONCURRENCY"] = CONC
            tools[label] = (lambda kind, exe=exe: [exe, "backup-push", PG] + (["--full"] if kind == "full" else []),
                            lambda dest, exe=exe: [exe, "backup-fetch", dest, "LATEST"], env, repo)
    pgbr = ["pgbackrest", f"--config={conf}", "--stanza=bench"]
    tools["pgbackrest"] = (lambda kind: pgbr + [f"--type={'full' if kind == 'full' else 'incr'}", "backup"],
                           lambda dest: pgbr + [f"--pg1-path={dest}", "restore"], {}, f"{WORK}/repo-pgbackrest/backup")

    full = {}
    for t, (pusher, _, env, _) in tools.items():
        full[t] = timed(pusher("full"), env)[0]
        print(f"   full backup {t}: {full[t]:.2f} s", flush=True)
    print(f"== pgbench -T {SECONDS}", flush=True)
    subprocess.run(["pgbench", "-h", WORK, "-p", PGENV["PGPORT"], "-U", "postgres", "-c", "4", "-j", "2",
                    "-T", SECONDS, "postgres"], check=True, capture_output=True)
    psql("CHECKPOINT")
    delta = {}
    for t, (pusher, _, env, repo) in tools.items():
        before = du(repo)
        secs, read, rss = timed(pusher("delta"), env)
        delta[t] = (secs, read, du(repo) - before, rss)
        print(f"   delta {t}: {secs:.2f} s, read {read / 2**20:.0f} MiB, stored {delta[t][2] / 2**20:.1f} MiB",
              flush=True)
    restore = {}
    for t, (_, fetcher, env, _) in tools.items():
        dest = fresh_dir(f"{WORK}/restore")
        restore[t] = timed(fetcher(dest), env)[0]
        check_restore(dest)
        shutil.rmtree(dest)
    # The reference: a full backup of the same data, restored by walden.
    pusher, fetcher, env, _ = tools["walden"]
    timed(pusher("full"), env)
    dest = fresh_dir(f"{WORK}/restore")
    full_restore = timed(fetcher(dest), env)[0]
    check_restore(dest)
    shutil.rmtree(dest)

    print(f"\n== delta after pgbench -T {SECONDS}, zstd level 3, concurrency {CONC}, page cache dropped")
    print(f"{'tool':<12}{'full s':>8}{'delta s':>9}{'read MiB':>10}{'stored MiB':>12}{'delta RSS':>11}"
          f"{'restore s':>11}")
    for t in tools:
        secs, read, stored, rss = delta[t]
        print(f"{t:<12}{full[t]:>8.2f}{secs:>9.2f}{read / 2**20:>10.0f}{stored / 2**20:>12.1f}"
              f"{rss / 1024:>10.0f}M{restore[t]:>11.2f}")
    print(f"walden restore of a full backup of the same data: {full_restore:.2f} s")


main()
