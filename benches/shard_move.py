#!/usr/bin/env python3
"""Moving a shard of N streams with models (issue 23's target: < 10 s of
unavailability for 1,000 streams). Starts two nodes of 16 shards (A owns all,
B none) with the default detector, gives N streams of shard 0 a model through
their history, then runs `anomalyd shards move` and reports its timing and
whether every stream arrived on its model.

    cargo build --release && python3 benches/shard_move.py [--streams 1000]
"""
import argparse, json, os, shutil, socket, subprocess, sys, tempfile, time, urllib.request

BIN = os.environ.get("ANOMALYD", "target/release/anomalyd")


def murmur2(data: bytes) -> int:
    m, h = 0x5BD1E995, len(data) & 0xFFFFFFFF
    n = len(data) // 4 * 4
    for i in range(0, n, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    tail = data[n:]
    if tail:
        for i in reversed(range(len(tail))):
            h ^= tail[i] << (8 * i)
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    return h ^ (h >> 15)


def shard_of(key: str, count: int = 16) -> int:
    h, part, bound = murmur2(key.encode()), 10_000 // count, 0
    for i in range(count - 1):
        bound += part * 0xFFFFFFFF // 10_000
        if h < bound:
            return i
    return count - 1


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def call(method, url, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read() or b"null")


def node(tmp, name, shards):
    port = free_port()
    d = os.path.join(tmp, name)
    p = subprocess.Popen([BIN, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", d,
                          "--training-threads", "2", "--shard-count", "16", f"--shards={shards}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"})
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            call("GET", base + "/healthz")
            return p, base
        except OSError:
            time.sleep(0.05)
    sys.exit("node did not start")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=1000)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="anomalyd-move-bench-")
    pa, A = node(tmp, "a", "0-15")
    pb, B = node(tmp, "b", "")
    try:
        ids = [f"bench-{i}" for i in range(100 * a.streams) if shard_of(f"bench-{i}") == 0][: a.streams]
        import math
        history = [{"timestamp": 1_700_000_000 + t * 60, "value": 50 + 10 * math.sin(t / 8) + (t * 7919 % 13) / 13}
                   for t in range(420)]
        t0 = time.time()
        for sid in ids:
            call("POST", f"{A}/v1/streams/{sid}/history", {"readings": history})
        while True:
            page = call("GET", f"{A}/v1/streams?detail=true&limit=1000")
            on_model = sum(1 for s in page["streams"] if s["phase"] == "model")
            if on_model >= len(ids):
                break
            time.sleep(1)
        print(f"{len(ids)} streams of shard 0 on their models after {time.time() - t0:.0f} s")
        out = subprocess.run([BIN, "shards", "move", "--from", A, "--to", B, "--shards", "0"],
                             capture_output=True, text=True, check=True)
        print(out.stdout.strip())
        page = call("GET", f"{B}/v1/streams?detail=true&limit=1000")
        arrived = sum(1 for s in page["streams"] if s["phase"] == "model")
        print(f"on the target: {arrived} of {len(ids)} streams on their models")
    finally:
        pa.kill()
        pb.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
