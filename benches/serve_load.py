#!/usr/bin/env python3
"""`aligner serve` under load: requests/s and latency with N concurrent clients, for several
server settings in one run, against a lone request on the same server.

Each setting starts its own server on loopback. A lone client first sends every workload pair
once (the lone latency), then N clients loop over the pairs for `--seconds`. The default
model's greedy corrections of the benchmark workload, `--max-tokens` each.

    .venv/bin/python benches/serve_load.py --clients 8 --seconds 20

On a GPU machine, name the binary and the provider (every server gets `--server-args`):

    python3 benches/serve_load.py --bin B/aligner --model M --server-args "--ep cuda --ort-lib L"
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import statistics
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

from old_binary import flags_for

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / "target" / "release" / "aligner"
ENV = dict(os.environ, VIRTUAL_ENV=str(ROOT / ".venv"))
WORKLOAD = ROOT / "benches" / "workloads" / "corrections.jsonl"

SETTINGS = {
    "2-workers-1by1": ["--workers", "2", "--batch-size", "1"],
    "1-worker-1by1": ["--workers", "1", "--batch-size", "1"],
    "1-worker-batch-8": ["--workers", "1", "--batch-size", "8"],
    "2-workers-batch-4": ["--workers", "2", "--batch-size", "4"],
    "2-workers-batch-8": ["--workers", "2", "--batch-size", "8"],
    # The first copy draft verified in the prompt's pass (not the default: see the README).
    "2-workers-1by1-draft-with-prompt": ["--workers", "2", "--batch-size", "1",
                                         "--draft-with-prompt"],
}
BASELINE = "2-workers-1by1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict) -> tuple[int, float]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
    return status, time.perf_counter() - start


def memory_mb(pid: int) -> dict:
    """Resident memory now (VmRSS), its peak (VmHWM), and the anonymous part: heap, not pages
    of mapped files, which other processes on the same model share."""
    fields = {"VmRSS:": "rss_mb", "VmHWM:": "peak_rss_mb"}
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name = line.split(maxsplit=1)[0] if line else ""
        if name in fields:
            out[fields[name]] = int(line.split()[1]) / 1024
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Anonymous:"):
            out["anon_mb"] = int(line.split()[1]) / 1024
    return out


def measure(model: Path, flags: list[str], pairs: list[dict], a: argparse.Namespace,
            binary: Path = BIN) -> dict:
    port = free_port()
    cmd = [str(binary), "serve", "--model", str(model), "--port", str(port), "--queue", "64",
           *flags_for(binary, "serve", flags), *shlex.split(a.server_args)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1/correct"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        body = lambda p: {"question": p["question"], "answer": p["answer"], "max_tokens": a.max_tokens}
        post(url, body(pairs[0]))  # warm-up
        lone = [post(url, body(p))[1] for p in pairs]
        results: list[tuple[int, float]] = []
        lock = threading.Lock()
        stop = time.perf_counter() + a.seconds

        def client(c: int) -> None:
            i = c
            while time.perf_counter() < stop:
                r = post(url, body(pairs[i % len(pairs)]))
                with lock:
                    results.append(r)
                i += 1

        threads = [threading.Thread(target=client, args=(c,)) for c in range(a.clients)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        secs = time.perf_counter() - start
        memory = memory_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    ok = sorted(d for s, d in results if s == 200)
    return {
        "req_s": len(ok) / secs,
        "p50_ms": 1000 * statistics.median(ok),
        "p99_ms": 1000 * ok[int(0.99 * (len(ok) - 1))],
        "lone_p50_ms": 1000 * statistics.median(lone),
        "errors": sum(1 for s, _ in results if s != 200),
    } | memory


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "smollm2-135m-aligner-int8")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--bin", type=Path, default=BIN, help="the aligner binary to measure")
    ap.add_argument("--server-args", default="",
                    help='more flags for every server, e.g. "--ep cuda --ort-lib PATH"')
    ap.add_argument("--baseline-bin", type=Path,
                    help="an older aligner binary: its baseline setting becomes the base of the ratios")
    a = ap.parse_args()
    if BASELINE not in a.settings:
        a.settings.insert(0, BASELINE)
    pairs = [json.loads(line) for line in WORKLOAD.read_text().splitlines() if line.strip()]
    report = {}
    if a.baseline_bin:
        report["baseline-bin"] = measure(a.model, SETTINGS[BASELINE], pairs, a, a.baseline_bin)
    for name in a.settings:
        report[name] = measure(a.model, SETTINGS[name], pairs, a, a.bin)
    base = report["baseline-bin" if a.baseline_bin else BASELINE]["req_s"]
    print(f"{a.clients} clients, {a.seconds:.0f} s, {a.max_tokens} max tokens, {a.model.name} {a.server_args}")
    print(f"{'setting':20} {'req/s':>7} {'x base':>7} {'p50 ms':>8} {'p99 ms':>8} {'lone ms':>8} "
          f"{'p50/lone':>8} {'RSS MB':>7} {'peak MB':>7} {'anon MB':>7} {'errors':>6}")
    for name, r in report.items():
        r["over_baseline"] = r["req_s"] / base
        print(f"{name:20} {r['req_s']:7.2f} {r['over_baseline']:7.2f} {r['p50_ms']:8.0f} {r['p99_ms']:8.0f} "
              f"{r['lone_p50_ms']:8.0f} {r['p50_ms'] / r['lone_p50_ms']:8.2f} {r['rss_mb']:7.0f} {r['peak_rss_mb']:7.0f} "
              f"{r['anon_mb']:7.0f} {r['errors']:6d}")
    if a.json:
        a.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
