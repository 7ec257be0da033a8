#!/usr/bin/env bash
# Start-up time, binary size and peak memory of walden (not a test: it
# prints figures). Measures, in one run:
#   - `walden --version` against /bin/true: median of 200 runs each,
#     alternating, as archive_command starts the binary once per segment;
#   - the size of the release binary;
#   - peak RSS (GNU time) of `st put` and `st get` of a 1 GiB file on the
#     filesystem storage and on a local S3 server (nanio).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bash scripts/install-deps.sh
bash scripts/setup-test-env.sh
# shellcheck disable=SC1091
command -v cargo >/dev/null 2>&1 || . "$HOME/.cargo/env"
bin=$(bash scripts/build-release.sh | tail -1)
cargo build --release --quiet
dynamic="$PWD/target/release/walden"
venv="${WALDEN_TEST_VENV:-$PWD/target/test-venv}"
work=$(mktemp -d /tmp/walden-bench.XXXXXX)
nanio_pid=
cleanup() { [ -n "$nanio_pid" ] && kill "$nanio_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

echo "== start-up: median of 200 runs each, alternating"
python3 - "$bin" "$dynamic" <<'PY'
import os, statistics, sys, time
def once(argv):
    t = time.perf_counter_ns()
    pid = os.posix_spawn(argv[0], argv, {}, file_actions=[(os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0)])
    os.waitpid(pid, 0)
    return (time.perf_counter_ns() - t) / 1e6
for bin, kind in zip(sys.argv[1:], ["static release build", "dynamic cargo build"]):
    w, t = [], []
    for _ in range(200):
        w.append(once([bin, "--version"]))
        t.append(once(["/bin/true"]))
    mw, mt = statistics.median(w), statistics.median(t)
    print(f"{kind}: walden --version {mw:.3f} ms, /bin/true {mt:.3f} ms, difference {mw - mt:+.3f} ms")
PY

echo "== release binary (static)"
echo "size $(stat -c %s "$bin") bytes ($(python3 -c "print(round($(stat -c %s "$bin")/1048576, 2))") MiB)"

echo "== peak RSS of st put / st get of 1 GiB (incompressible data, lz4)"
head -c 1G /dev/urandom > "$work/big"
rss() { /usr/bin/time -f %M "$@" 2>&1 >/dev/null | tail -1; }
export WALG_FILE_PREFIX="$work/repo"
put=$(rss "$bin" st put "$work/big" big)
get=$(rss "$bin" st get big.lz4 "$work/back")
cmp -s "$work/big" "$work/back" || { echo "round trip differs"; exit 1; }
echo "filesystem: put $((put / 1024)) MiB, get $((get / 1024)) MiB (target < 64 MiB)"
rm -f "$work/back"
unset WALG_FILE_PREFIX

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/s3/bench"
NANIO_ACCESS_KEY=k NANIO_SECRET_KEY=s "$venv/bin/nanio" serve --host 127.0.0.1 --port "$port" \
    --data-dir "$work/s3" --no-access-log >"$work/nanio.log" 2>&1 &
nanio_pid=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
export AWS_ACCESS_KEY_ID=k AWS_SECRET_ACCESS_KEY=s AWS_REGION=us-east-1 \
    AWS_ENDPOINT="http://127.0.0.1:$port" AWS_S3_FORCE_PATH_STYLE=true WALG_S3_PREFIX=s3://bench/p
for conc in 4 16; do
    put=$(WALG_UPLOAD_CONCURRENCY=$conc rss "$bin" st put "$work/big" "big$conc")
    get=$(rss "$bin" st get "big$conc.lz4" "$work/back")
    cmp -s "$work/big" "$work/back" || { echo "round trip differs"; exit 1; }
    rm -f "$work/back"
    echo "S3, $conc parts of 20 MiB in flight: put $((put / 1024)) MiB (bound $((16 + conc * 20)) MiB), get $((get / 1024)) MiB"
done
