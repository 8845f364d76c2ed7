"""The server under load, and under attack, on this machine.

    python benchmarks/serve.py RUN_DIR [--images ../shared/datasets/flower_photos/test] [--clients 16]
        [--requests 320] [--max-batch 8] [--onnx FILE]

Two servers of the same model are started in turn on 127.0.0.1 (a uvicorn process each, ``transferlab
serve``): the reference, which runs one request at a time (``--max-batch 1``), and the micro-batching
one. ``--clients`` threads, each with its own connection, send single images (multipart) until
``--requests`` have been answered; throughput and p50/p99 latency per server, and the ratio.

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


def start_server(run_dir: str, port: int, max_batch: int, onnx: str | None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "transferlab", "serve", run_dir, "--port", str(port), "--quiet",
           "--max-batch", str(max_batch), "--max-images", "64"]
    if max_batch == 1:
        cmd += ["--batch-window-ms", "0"]
    if onnx:
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


def load(port: int, images: list[bytes], clients: int, total: int) -> dict:
    """``clients`` threads sending single images until ``total`` requests are answered."""
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
    lat = np.array(latencies) * 1000
    return {"requests": len(latencies), "errors": len(errors), "seconds": round(wall, 2),
            "throughput_rps": round(len(latencies) / wall, 2), "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1)}


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
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--onnx")
    args = p.parse_args()
    files = sorted(Path(args.images).rglob("*.jpg"))[:64]
    images = [f.read_bytes() for f in files]
    cpu = "native bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "no native bf16"
    results = {}
    for name, batch in (("one request at a time", 1), (f"micro-batching (max {args.max_batch})", args.max_batch)):
        port = free_port()
        proc = start_server(args.run_dir, port, batch, args.onnx)
        try:
            load(port, images[:8], args.clients, 2 * args.clients)  # warm-up
            results[name] = load(port, images, args.clients, args.requests)
            results[name]["peak_mb"] = vm_hwm_mb(proc.pid)
            print(json.dumps({"server": name, **results[name]}), flush=True)
            if batch > 1:
                bad = hostile(port, images[0])
                for row in bad:
                    print(json.dumps(row), flush=True)
                peak = vm_hwm_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(30)
    (ref, ref_row), (new, new_row) = results.items()
    print(f"\n### Server under load: {args.clients} clients, single images, {args.requests} requests, "
          f"{os.cpu_count()} cores ({cpu}), backend {'onnx' if args.onnx else 'pytorch'}\n")
    print("| server | requests/s | p50 ms | p99 ms | errors | peak MB |\n|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['throughput_rps']} | {r['p50_ms']} | {r['p99_ms']} | {r['errors']} "
              f"| {r['peak_mb']:.0f} |")
    ratio = new_row["throughput_rps"] / ref_row["throughput_rps"]
    print(f"\nthroughput ratio (batching / one at a time): {ratio:.2f}x")
    print("\n### Hostile requests (batching server)\n")
    print("| request | status | JSON error | still answering |\n|---|---|---|---|")
    for row in bad:
        print(f"| {row['request']} | {row['status']} | {row['error']} | {row['still_answering']} |")
    print(f"\nserver peak memory after them (VmHWM): {peak:.0f} MB")


if __name__ == "__main__":
    main()
