"""Driver of scripts/bench/backup.sh: sets up the cluster and times the tools.

Every tool runs as the postgres OS user, timed from start to exit; peak RSS
is the child's rusage (its own children included). Runs alternate between
tools so that machine noise hits all of them alike. Stored bytes are what
one backup adds to the tool's repository.
"""
import os
import shutil
import statistics
import time

from benchlib import CONC, PG, PGENV, RUNS, SMALL, WALDEN, WORK, check_restore, du, fresh_dir, make_data, \
    pgbr_conf, psql, run

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
    pgbr_by_walden, pgbr_by_walden_rss = [], 0
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
        # pgBackRest's own backup, restored by walden (a way out of
        # pgBackRest): against `pgbackrest restore` just above.
        dest = fresh_dir(f"{WORK}/restore")
        secs, kib = run([WALDEN, "pgbackrest", "backup-fetch", dest, "LATEST"],
                        {"WALG_FILE_PREFIX": f"{WORK}/repo-pgbackrest", "PGBACKREST_STANZA": "bench",
                         "WALG_DOWNLOAD_CONCURRENCY": CONC})
        check_restore(dest)
        shutil.rmtree(dest)
        pgbr_by_walden.append(secs)
        pgbr_by_walden_rss = max(pgbr_by_walden_rss, kib)
        print(f"   run {rnd + 1} walden pgbackrest backup-fetch: {secs:.2f} s", flush=True)
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
    p = statistics.median(pgbr_by_walden)
    print(f"pgBackRest's full backup restored by `walden pgbackrest backup-fetch`: {p:.2f} s "
          f"(peak RSS {pgbr_by_walden_rss / 1024:.0f} MiB); `pgbackrest restore`: {med['pgbackrest'][1]:.2f} s "
          f"({med['pgbackrest'][1] / p:.2f}x walden's)")
    if SMALL:
        print(f"walden push with {SMALL} extra files: {w[0] / SMALL * 1e6:.1f} µs per file over the whole backup")


main()
