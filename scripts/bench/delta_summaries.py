"""Driver of scripts/bench/delta_summaries.sh: per cluster size, a full
backup, a write load, then a delta from WAL summaries and one from the
page scan against the same full backup.

Bytes read are the child's block inputs (rusage, 512-byte units) with the
page cache dropped before each backup; walden's own count (its INFO line)
is printed beside them.
"""
import os
import re
import shutil
import subprocess
import time

from benchlib import PGENV, PORT, WALDEN, WORK, du, psql

SCALES = [int(s) for s in os.environ.get("BENCH_SCALES", "50 200").split()]
# The same write load at every size: a fixed number of transactions.
TRANSACTIONS = os.environ.get("BENCH_DELTA_TRANSACTIONS", "1000")
CACHE = os.environ.get("WALDEN_PG_CACHE") or "/var/cache/walden/pg"
PGBIN = f"{CACHE}/17/bin"
PG = f"{WORK}/pg"
READ = re.compile(r"Delta backup from \S+: read (\d+) bytes, stored (\d+) bytes \((\d+) compressed\)")


def drop_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def walden(args, extra):
    """Run walden as postgres; (seconds, block-input bytes, stderr)."""
    env = {"PATH": "/usr/bin:/bin", "HOME": WORK, "LANG": "C", "WALG_FILE_PREFIX": f"{WORK}/repo",
           "WALG_COMPRESSION_METHOD": "zstd", "WALG_DELTA_MAX_STEPS": "6",
           "WALG_DELTA_ORIGIN": "LATEST_FULL", **PGENV, **extra}
    drop_caches()
    start = time.perf_counter()
    p = subprocess.Popen([WALDEN, *args], env=env, user="postgres", stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, cwd=WORK)
    err = p.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(p.pid, 0)
    secs = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"walden {args} failed:\n{err}")
    return secs, usage.ru_inblock * 512, err


def pg_ctl(action):
    subprocess.run(["runuser", "-u", "postgres", "--", f"{PGBIN}/pg_ctl", "-D", PG, "-w", "-t", "600",
                    "-l", f"{WORK}/pg.log", action], check=True, stdout=subprocess.DEVNULL)


def one_size(scale):
    for d in (PG, f"{WORK}/repo"):
        shutil.rmtree(d, ignore_errors=True)
    os.makedirs(f"{WORK}/repo")
    shutil.chown(f"{WORK}/repo", "postgres")
    subprocess.run(["runuser", "-u", "postgres", "--", f"{PGBIN}/initdb", "-D", PG, "-U", "postgres",
                    "--auth=trust"], check=True, stdout=subprocess.DEVNULL)
    with open(f"{PG}/postgresql.conf", "a") as f:
        f.write("\n".join([f"port = {PORT}", "listen_addresses = ''", f"unix_socket_directories = '{WORK}'",
                           "summarize_wal = on", "max_wal_size = 4GB", "wal_level = replica"]) + "\n")
    pg_ctl("start")
    subprocess.run(["pgbench", "-h", WORK, "-p", str(PORT), "-U", "postgres", "-i", "-q", "-s", str(scale),
                    "postgres"], check=True, capture_output=True)
    psql("CHECKPOINT")
    size = du(f"{PG}/base")
    print(f"== scale {scale}: base/ holds {size / 2**20:.0f} MiB", flush=True)
    full = walden(["backup-push", PG, "--full"], {})[0]
    subprocess.run(["pgbench", "-h", WORK, "-p", str(PORT), "-U", "postgres", "-c", "4", "-j", "2",
                    "-t", TRANSACTIONS, "postgres"], check=True, capture_output=True)
    psql("CHECKPOINT")
    rows = []
    for label, extra in (("summaries", {}), ("page scan", {"WALDEN_DELTA_SUMMARIES": "off"})):
        secs, inblock, err = walden(["backup-push", PG], extra)
        m = READ.search(err)
        if not m:
            raise SystemExit(f"no delta summary line:\n{err}")
        source = "WAL summaries" if "changed blocks from WAL summaries" in err else "a page scan"
        if label == "summaries" and source != "WAL summaries":
            raise SystemExit(f"the summaries delta fell back to the page scan:\n{err}")
        rows.append((label, secs, inblock, int(m[1]), int(m[2]), int(m[3])))
    pg_ctl("stop")
    return scale, size, full, rows


def main():
    results = [one_size(s) for s in SCALES]
    print(f"\n== PostgreSQL 17, pgbench -c 4 -t {TRANSACTIONS} after a full backup, zstd, page cache dropped;"
          " both deltas against the same full backup")
    print(f"{'base/ MiB':>10}{'full s':>8}  {'changed blocks from':<20}{'delta s':>8}{'disk read MiB':>14}"
          f"{'walden read MiB':>16}{'stored MiB':>11}{'compressed MiB':>15}")
    for scale, size, full, rows in results:
        for label, secs, inblock, read, stored, compressed in rows:
            print(f"{size / 2**20:>10.0f}{full:>8.2f}  {label:<20}{secs:>8.2f}{inblock / 2**20:>14.1f}"
                  f"{read / 2**20:>16.1f}{stored / 2**20:>11.1f}{compressed / 2**20:>15.1f}")


main()
