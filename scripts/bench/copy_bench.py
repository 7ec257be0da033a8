"""Driver of scripts/bench/copy-composer.sh: what `--copy-composer` saves.

A full backup with --copy-composer (no previous backup: regular packing,
headers in a tar of their own), then twice `pgbench -T BENCH_COPY_SECONDS`
and a --copy-composer backup (the second one separates the files at rest
from the changed ones, the third can copy the tars of the former), then a
plain `--full` backup of the same data: time, bytes read from disk (page
cache dropped), bytes stored, tars copied; the third backup is restored and
its pg_control checked.
"""
import os
import subprocess
import time

from benchlib import CONC, PG, PGENV, WALDEN, WORK, check_restore, du, fresh_dir, make_data, pgbr_conf, \
    psql, run_usage

SECONDS = os.environ.get("BENCH_COPY_SECONDS", "20")
THRESHOLD = os.environ.get("BENCH_TAR_SIZE", str(64 << 20))


def drop_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def newest(repo):
    d = f"{repo}/basebackups_005"
    sentinels = [f for f in os.listdir(d) if f.endswith("_backup_stop_sentinel.json")]
    sentinels.sort(key=lambda f: os.stat(f"{d}/{f}").st_mtime_ns)
    return sentinels[-1][: -len("_backup_stop_sentinel.json")]


def main():
    conf = pgbr_conf()
    os.makedirs(f"{WORK}/repo-pgbackrest")
    subprocess.run(["chown", "postgres:", f"{WORK}/repo-pgbackrest"], check=True)
    make_data(conf)
    run_usage(["pgbackrest", f"--config={conf}", "--stanza=bench", "stanza-create"])
    # The data at rest, as before a nightly backup: vacuumed, written out,
    # and older than the second the copy composer does not trust.
    psql("VACUUM ANALYZE")
    psql("CHECKPOINT")
    time.sleep(2)
    repo = f"{WORK}/repo-walden"
    os.makedirs(repo)
    subprocess.run(["chown", "postgres:", repo], check=True)
    env = {"WALG_FILE_PREFIX": repo, "WALG_COMPRESSION_METHOD": "zstd", "WALG_ZSTD_LEVEL": "default",
           "WALG_COMPRESSION_LEVEL": "3", "WALG_TAR_SIZE_THRESHOLD": THRESHOLD,
           "WALG_UPLOAD_DISK_CONCURRENCY": CONC, "WALG_DOWNLOAD_CONCURRENCY": CONC, **PGENV}

    def push(args):
        before = du(repo)
        drop_caches()
        secs, usage = run_usage([WALDEN, "backup-push", PG, *args], env)
        name = newest(repo)
        tars = os.listdir(f"{repo}/basebackups_005/{name}/tar_partitions")
        copies = sum(1 for t in tars if t.startswith("copy_"))
        return secs, usage.ru_inblock * 512, du(repo) - before, len(tars), copies, name

    first = push(["--copy-composer"])
    print(f"   first backup (--copy-composer, nothing to copy): {first[0]:.2f} s, {first[3]} tars", flush=True)
    def load():
        print(f"== pgbench -T {SECONDS}", flush=True)
        subprocess.run(["pgbench", "-h", WORK, "-p", PGENV["PGPORT"], "-U", "postgres", "-c", "4", "-j", "2",
                        "-T", SECONDS, "postgres"], check=True, capture_output=True)
        psql("CHECKPOINT")
        time.sleep(1.5)

    load()
    second = push(["--copy-composer"])
    load()
    copy = push(["--copy-composer"])
    full = push(["--full"])
    dest = fresh_dir(f"{WORK}/restore")
    secs, _ = run_usage([WALDEN, "backup-fetch", dest, copy[5]], env)
    check_restore(dest)
    print(f"\n== backups after pgbench -T {SECONDS} each, zstd 3, tars of {int(THRESHOLD) >> 20} MiB, "
          f"concurrency {CONC}, page cache dropped")
    print(f"{'backup':<16}{'s':>8}{'read MiB':>10}{'stored MiB':>12}{'tars':>6}{'copied':>8}")
    for label, r in (("2nd --copy", second), ("3rd --copy", copy), ("--full", full)):
        print(f"{label:<16}{r[0]:>8.2f}{r[1] / 2**20:>10.0f}{r[2] / 2**20:>12.1f}{r[3]:>6}{r[4]:>8}")
    print(f"restore of the --copy-composer backup: {secs:.2f} s")


main()
