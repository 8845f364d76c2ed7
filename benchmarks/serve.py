"""The server under load, and under attack, on this machine.

    python benchmarks/serve.py RUN_DIR [--images ../shared/datasets/flower_photos/test] [--clients 16]
        [--requests 320] [--rounds 3] [--max-batch 8] [--onnx FILE]

Three servers of the same model run on 127.0.0.1, a uvicorn process each: two references, the serial
server (each request start to finish before the next, as a textbook single-worker app runs) and
``transferlab serve --max-batch 1`` (one model call at a time, while other requests are read and
decoded), and the micro-batching server. In each
round, each server in turn gets ``--clients`` threads, each with its own connection, sending single
images (multipart) until ``--requests`` have been answered. Quoted: the median throughput and p50/p99
latency over the rounds, and the ratio of each round's pair with its median (the machine is shared, so
one pair can be off by a third).

Then the hostile requests against the batching server: an empty body, a text file, a PNG header
that declares 60000 x 60000 pixels, a 100 MB upload, a malformed multipart body, a path in a field,
1,000 images in one request. Each must get a 4xx JSON error, the server must still answer /health
afterwards, and the server's peak memory (VmHWM) is printed.

Printed: JSON rows, then the tables, and what kind of CPU (native bf16 or not) it ran on.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The textbook server: the same app, but each request is handled start to finish (read, decode, model,
# answer) before the next one is looked at, as a single-worker Flask or FastAPI loop would.
SERIAL = """
import asyncio, sys, uvicorn
from transferlab.inference.backends import load_backend
from transferlab.inference.batching import load_in_model_thread
from transferlab.inference.server import make_app
backend, executor = load_in_model_thread(lambda: load_backend(sys.argv[1], None, sys.argv[3] or None))
app = make_app(backend, max_batch=1, window_ms=0, executor=executor)
lock = asyncio.Lock()
async def serial(scope, receive, send):
    if scope["type"] != "http":
        return await app(scope, receive, send)
    async with lock:
        await app(scope, receive, send)
uvicorn.run(serial, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""


def start_server(run_dir: str, port: int, max_batch: int, onnx: str | None) -> subprocess.Popen:
    """``max_batch`` 0: the serial server above; 1: one model call at a time (requests still read and
    decoded while it runs); more: micro-batching."""
    if max_batch == 0:
        cmd = [sys.executable, "-c", SERIAL, run_dir, str(port), onnx or ""]
    else:
        cmd = [sys.executable, "-m", "transferlab", "serve", run_dir, "--port", str(port), "--quiet",
               "--max-batch", str(max_batch), "--max-images", "64"]
    if max_batch == 1:
        cmd += ["--batch-window-ms", "0"]
    if onnx and max_batch:
        cmd += ["--onnx", onnx]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"the server did not start: {proc.stderr.read().decode()[-2000:]}")


def multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
             f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n" for name, data in files]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post(conn: http.client.HTTPConnection, body: bytes, kind: str) -> tuple[int, dict]:
    conn.request("POST", "/predict?top_k=1", body=body, headers={"Content-Type": kind})
    r = conn.getresponse()
    raw = r.read()
    try:
        return r.status, json.loads(raw)
    except ValueError:
        return r.status, {"raw": raw[:200].decode(errors="replace")}


def health(port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/health")
    return json.loads(conn.getresponse().read())


def load(port: int, images: list[bytes], clients: int, total: int) -> dict:
    """``clients`` threads sending single images until ``total`` requests are answered; with the model
    thread's share of the wall time and the mean batch, from the server's /health before and after."""
    before = health(port)
    latencies, errors, lock = [], [], threading.Lock()
    counter = iter(range(total))
    bodies = [multipart([(f"img{k}.jpg", b)]) for k, b in enumerate(images)]

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for k in counter:
            body, kind = bodies[k % len(bodies)]
            start = time.perf_counter()
            status, doc = post(conn, body, kind)
            took = time.perf_counter() - start
            with lock:
                (latencies if status == 200 else errors).append(took if status == 200 else (status, doc))
    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    after = health(port)
    lat = np.array(latencies) * 1000
    batches = after["batches"] - before["batches"]  # every request holds one image
    return {"requests": len(latencies), "errors": len(errors), "seconds": round(wall, 2),
            "model_share": round((after["model_seconds"] - before["model_seconds"]) / wall, 2),
            "mean_batch": round(len(latencies) / batches, 2) if batches else None,
            "throughput_rps": round(len(latencies) / wall, 2), "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1)}


def model_cost(run_dir: str, onnx: str | None, sizes: tuple[int, ...] = (1, 2, 4, 8, 16), reps: int = 10) -> dict:
    """The model alone (no HTTP, no decoding), loaded and run in one model thread as the servers do:
    median ms per image at each batch size. What batching can save is bounded by how much less an
    image costs in a batch than alone."""
    from transferlab.data.imagecache import cache_side
    from transferlab.inference.backends import load_backend
    from transferlab.inference.batching import load_in_model_thread

    backend, thread = load_in_model_thread(lambda: load_backend(run_dir, None, onnx))
    side = cache_side(backend.data_config)
    squares = list(np.random.default_rng(0).integers(0, 256, (max(sizes), side, side, 3), dtype=np.uint8))

    def per_image(n: int) -> float:
        for _ in range(3):
            backend.run(squares[:n])
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            backend.run(squares[:n])
            times.append(time.perf_counter() - start)
        return float(np.median(times)) / n * 1000

    try:
        return {n: round(thread.submit(per_image, n).result(), 1) for n in sizes}
    finally:
        thread.shutdown()


def png_header(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR declaring ``width x height``, with one tiny IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def vm_hwm_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def hostile(port: int, small_jpeg: bytes) -> list[dict]:
    """Each bad request's status and error, with /health checked after each."""
    tiny = io.BytesIO()
    Image.new("RGB", (8, 8)).save(tiny, format="PNG")
    many = json.dumps({"images": [base64.b64encode(tiny.getvalue()).decode()] * 1000}).encode()
    cases = [
        ("empty body", b"", "application/json"),
        ("a text file", *multipart([("notes.txt", b"hello, this is not an image\n" * 20)])),
        ("a 60000 x 60000 PNG header", *multipart([("huge.png", png_header(60000, 60000))])),
        ("a 100 MB upload", *multipart([("big.jpg", small_jpeg + os.urandom(100 * 2**20))])),
        ("a malformed multipart body", b"--xx\r\nContent-Disposition: form-da", "multipart/form-data; boundary=xx"),
        ("a path in a field", b'--b\r\nContent-Disposition: form-data; name="file"\r\n\r\n/etc/passwd\r\n--b--\r\n',
         "multipart/form-data; boundary=b"),
        ("a path as JSON", b'{"images": ["/etc/passwd"]}', "application/json"),
        ("1,000 images in one request", many, "application/json"),
    ]
    rows = []
    for name, body, kind in cases:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            status, doc = post(conn, body, kind)
        except (BrokenPipeError, ConnectionResetError) as exc:  # the server may close a connection it refused
            status, doc = None, {"error": f"connection closed while sending ({type(exc).__name__})"}
        health = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        health.request("GET", "/health")
        alive = health.getresponse().status == 200
        rows.append({"request": name, "status": status, "error": doc.get("error"), "json": "error" in doc,
                     "still_answering": alive})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--images", default=str(Path(__file__).resolve().parents[1].parent /
                                           "shared/datasets/flower_photos/test"))
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=320)
    p.add_argument("--rounds", type=int, default=3, help="load phases per server, taken in turn (medians quoted)")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--onnx")
    args = p.parse_args()
    files = sorted(Path(args.images).rglob("*.jpg"))[:64]
    images = [f.read_bytes() for f in files]
    cpu = "native bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "no native bf16"
    servers = {"serial (one request start to finish at a time)": 0, "one model call at a time": 1,
               f"micro-batching (max {args.max_batch})": args.max_batch}
    alone = model_cost(args.run_dir, args.onnx)
    print(json.dumps({"model_ms_per_image_by_batch": alone}), flush=True)
    procs, ports = {}, {}
    try:
        for name, batch in servers.items():  # both up for the whole run; each idles while the other is loaded
            ports[name] = free_port()
            procs[name] = start_server(args.run_dir, ports[name], batch, args.onnx)
            load(ports[name], images[:8], args.clients, 2 * args.clients)  # warm-up
        rounds: dict[str, list[dict]] = {name: [] for name in servers}
        for k in range(args.rounds):  # in turn, so that a noisy minute on the shared machine hits both
            for name in servers:
                row = load(ports[name], images, args.clients, args.requests)
                rounds[name].append(row)
                print(json.dumps({"server": name, "round": k, **row}), flush=True)
        batching = list(servers)[-1]
        bad = hostile(ports[batching], images[0])
        for row in bad:
            print(json.dumps(row), flush=True)
        peaks = {name: vm_hwm_mb(proc.pid) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(30)
    print(f"\n### Server under load: {args.clients} clients, single images, {args.requests} requests x "
          f"{args.rounds} rounds each, {os.cpu_count()} cores ({cpu}), backend {'onnx' if args.onnx else 'pytorch'}\n")
    print("| server | requests/s (median; each round) | p50 ms | p99 ms | model busy | mean batch | errors | peak MB |")
    print("|---|---|---|---|---|---|---|---|")
    for name, rows in rounds.items():
        rps = [r["throughput_rps"] for r in rows]
        print(f"| {name} | {np.median(rps):.2f} ({', '.join(f'{v:.1f}' for v in rps)}) "
              f"| {np.median([r['p50_ms'] for r in rows]):.0f} | {np.median([r['p99_ms'] for r in rows]):.0f} "
              f"| {np.median([r['model_share'] for r in rows]):.0%} | {np.median([r['mean_batch'] for r in rows]):.1f} "
              f"| {sum(r['errors'] for r in rows)} | {peaks[name]:.0f} |")
    serial, one_call, new = rounds.values()
    for name, ref in (("serial", serial), ("one model call at a time", one_call)):
        ratios = [b["throughput_rps"] / a["throughput_rps"] for a, b in zip(ref, new)]
        print(f"\nthroughput ratio (batching / {name}), per round: {', '.join(f'{r:.2f}' for r in ratios)}; "
              f"median {np.median(ratios):.2f}x")
    print("\nthe model alone, ms per image by batch size: " + ", ".join(f"{n}: {ms}" for n, ms in alone.items()))
    print("\n### Hostile requests (batching server)\n")
    print("| request | status | JSON error | still answering |\n|---|---|---|---|")
    for row in bad:
        print(f"| {row['request']} | {row['status']} | {row['error']} | {row['still_answering']} |")
    print(f"\nserver peak memory after them (VmHWM): {peaks[batching]:.0f} MB")


if __name__ == "__main__":
    main()
