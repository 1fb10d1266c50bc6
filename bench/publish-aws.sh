#!/usr/bin/env bash
# Benchmark: `kiln publish aws` against moto in server mode on 127.0.0.1,
# every figure measured in this run (targets from issue 10):
#   1. bytes sent: every byte kiln writes to the connection (request lines,
#      headers, signatures, bodies, every call of the publish), counted by a
#      relay between kiln and moto, against the image's non-zero bytes:
#      <= 1.01x;
#   2. upload throughput with PutSnapshotBlock requests in parallel
#      (--jobs 16, the default) against one request at a time (--jobs 1).
# moto is a single Python process: its own speed bounds both figures, so
# the ratio says what parallel requests buy, not what AWS would do.
# The image is synthetic: SIZE_MIB (1024) MiB, random data in one 512 KiB
# block of every EVERY (4), zeros elsewhere.
#   bench/publish-aws.sh            SIZE_MIB=N EVERY=N JOBS=N to change it
# Needs moto_server: scripts/install-deps.sh installs it into /opt/kiln-test/venv.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
size_mib=${SIZE_MIB:-1024}
every=${EVERY:-4}
jobs=${JOBS:-16}

moto=${KILN_MOTO_SERVER:-}
if [ -z "$moto" ]; then
  if [ -x /opt/kiln-test/venv/bin/moto_server ]; then moto=/opt/kiln-test/venv/bin/moto_server; else moto=$(command -v moto_server || true); fi
fi
if [ -z "$moto" ]; then
  echo "publish-aws.sh: moto_server not found (run scripts/install-deps.sh, or set KILN_MOTO_SERVER)" >&2
  exit 1
fi
python=$(dirname "$moto")/python3
[ -x "$python" ] || python=python3

cargo build --release -q -p kiln
kiln=$PWD/target/release/kiln
work=$(mktemp -d /var/tmp/kiln-bench-publish.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 300); do
    if "$python" -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),1)" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "publish-aws.sh: nothing listens on port $1" >&2
  exit 1
}

echo '[]' > "$work/amis.json"
moto_port=$(free_port)
MOTO_AMIS_PATH=$work/amis.json "$moto" -H 127.0.0.1 -p "$moto_port" > "$work/moto.log" 2>&1 &
pids+=($!)

# A TCP relay that counts what the client sends (all of it: it does not
# parse HTTP) and writes the running total to $work/sent.
relay_port=$(free_port)
"$python" - "$relay_port" "$moto_port" "$work/sent" > "$work/relay.log" 2>&1 <<'PY' &
import socket, sys, threading
listen, upstream, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
total = 0
lock = threading.Lock()
def pump(src, dst, count):
    global total
    try:
        while True:
            data = src.recv(1 << 16)
            if not data:
                break
            if count:
                with lock:
                    total += len(data)
                    open(out, "w").write(str(total))
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", listen))
srv.listen(64)
while True:
    c, _ = srv.accept()
    u = socket.create_connection(("127.0.0.1", upstream))
    threading.Thread(target=pump, args=(c, u, True), daemon=True).start()
    threading.Thread(target=pump, args=(u, c, False), daemon=True).start()
PY
pids+=($!)
wait_port "$moto_port"
wait_port "$relay_port"

echo "making a ${size_mib} MiB raw image, data in 1 block of every $every" >&2
nonzero=$("$python" - "$work/bench-1.0.0.raw" "$size_mib" "$every" "$work/manifest.json" <<'PY'
import hashlib, json, os, sys
path, size_mib, every, manifest = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
block = 512 * 1024
size = size_mib << 20
h = hashlib.sha512()
zero = bytes(block)
nonzero = 0
with open(path, "wb") as f:
    for i in range(size // block):
        data = os.urandom(block) if i % every == 0 else zero
        nonzero += len(data) if data is not zero else 0
        f.write(data)
        h.update(data)
json.dump({"manifestVersion": 1, "name": "bench", "version": "1.0.0",
           "artifacts": [{"target": "disk", "path": os.path.basename(path), "format": "raw",
                          "size": size, "sha512": h.hexdigest()}]}, open(manifest, "w"))
print(nonzero)
PY
)

export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench
unset AWS_PROFILE AWS_SESSION_TOKEN AWS_ENDPOINT_URL
publish() { # NAME ENDPOINT JOBS → the --json result
  "$kiln" -q publish aws "$work/bench-1.0.0.raw" --name "$1" --region us-east-1 \
    --endpoint-url "$2" --jobs "$3" --json
}
field() { "$python" -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2"; }

echo "publishing through the counting relay (--jobs $jobs)" >&2
publish bench-counted "http://127.0.0.1:$relay_port" "$jobs" > "$work/counted.json"
sleep 0.5
sent=$(cat "$work/sent")
echo "publishing with --jobs 1" >&2
publish bench-serial "http://127.0.0.1:$moto_port" 1 > "$work/serial.json"
echo "publishing with --jobs $jobs" >&2
publish bench-parallel "http://127.0.0.1:$moto_port" "$jobs" > "$work/parallel.json"

blocks=$(field "$work/counted.json" blocks_sent)
serial_s=$(field "$work/serial.json" upload_seconds)
parallel_s=$(field "$work/parallel.json" upload_seconds)
"$python" - "$size_mib" "$blocks" "$nonzero" "$sent" "$serial_s" "$parallel_s" "$jobs" "$(nproc)" <<'PY'
import sys
size_mib, blocks, nonzero, sent = (int(x) for x in sys.argv[1:5])
serial, parallel = float(sys.argv[5]), float(sys.argv[6])
jobs, cores = sys.argv[7], sys.argv[8]
mib = nonzero / 1048576
print(f"image: {size_mib} MiB, {blocks} non-zero blocks ({mib:.0f} MiB), {cores} cores, moto on 127.0.0.1")
ratio = sent / nonzero
print(f"bytes sent by kiln (whole publish): {sent} = {ratio:.4f}x the non-zero bytes "
      f"(target <= 1.01x: {'met' if ratio <= 1.01 else 'MISSED'})")
print(f"upload, 1 request at a time:  {serial:7.2f} s  {mib / serial:7.1f} MiB/s")
print(f"upload, {jobs:>2} in parallel:       {parallel:7.2f} s  {mib / parallel:7.1f} MiB/s")
print(f"parallel / serial throughput: {serial / parallel:.2f}x")
PY
