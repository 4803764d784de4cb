#!/usr/bin/env python3
"""Replays the hostile-probe findings of issue 17 against an `aligner` binary and prints what
happened, one line per finding, so a build before the fixes and one after can be compared:

    python3 scripts/reliability-probe.py OLD_BINARY NEW_BINARY

Everything runs on loopback with the default and tiny model folders that `make test` builds.
Standard library only. Findings that could exhaust the machine's memory with an unfixed binary
(`--answer-file /dev/zero`, 1e12 layers) are left to the regression tests.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "models/smollm2-135m-instruct-int8"
TINY = ROOT / "models/tiny-llama-fp32"
ENV = {**os.environ, "VIRTUAL_ENV": str(ROOT / ".venv"), "ALIGNER_GRAPH_CACHE": "off"}


def start(binary: str, *args: str) -> tuple[subprocess.Popen, str]:
    p = subprocess.Popen(
        [binary, "serve", "--port", "0", *args],
        env=ENV,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert p.stderr is not None
    for line in p.stderr:
        if "listening on " in line:
            return p, line.split("listening on ")[1].split()[0]
    raise RuntimeError("server did not start")


def post(base: str, path: str, body: dict, headers: dict | None = None, timeout: float = 60):
    req = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except Exception as e:  # noqa: BLE001 - the point is to report whatever happened
        return None, type(e).__name__


def get(base: str, path: str, timeout: float = 10):
    try:
        with urllib.request.urlopen(base + path, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except Exception as e:  # noqa: BLE001
        return None, type(e).__name__


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def stop(p: subprocess.Popen) -> None:
    p.kill()
    p.wait()


def probe(binary: str) -> dict[str, str]:
    out: dict[str, str] = {}
    tiny = str(TINY)

    p, base = start(binary, "--model", tiny)
    status, _ = post(base, "/v1/correct", {"question": "Q", "answer": "A", "max_tokens": 10**12})
    time.sleep(0.3)
    out["1 max_tokens 1e12"] = (
        f"HTTP {status}, server {'alive' if p.poll() is None else f'exited {p.returncode}'}"
    )
    if p.poll() is None:
        stop(p)

    p, base = start(binary, "--model", tiny, "--queue", "1")
    status, _ = post(base, "/v1/correct", {"question": "Q", "answer": "Café", "stop": ["é"], "max_tokens": 8})
    s2, _ = post(base, "/v1/correct", {"question": "Q", "answer": "A", "max_tokens": 4}, timeout=10)
    h = get(base, "/health")[1]
    busy = json.loads(h).get("busy") if h.startswith("{") else h
    out["2 stop é"] = f"HTTP {status}; next request {s2}; /health busy {busy}"
    stop(p)

    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "in.jsonl"
        src.write_text("".join(json.dumps({"question": f"Q{i}", "answer": "A"}) + "\n" for i in range(3)))
        r = subprocess.run(
            [binary, "batch", str(src), str(src), "--model", tiny, "--max-new-tokens", "2"],
            env=ENV,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        out["7 batch same same"] = f"exit {r.returncode}, input now {src.stat().st_size} bytes (was 3 rows)"
        precious = Path(d) / "precious.jsonl"
        src.write_text("".join(json.dumps({"question": f"Q{i}", "answer": "A"}) + "\n" for i in range(3)))
        precious.write_text('{"id": 1}\n{"id": 2}\n')
        r = subprocess.run(
            [binary, "batch", str(src), str(precious), "--model", tiny, "--max-new-tokens", "2"],
            env=ENV,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        kept = '{"id": 1}' in precious.read_text()
        out["8 batch into unrelated file"] = (
            f"exit {r.returncode}, unrelated rows {'kept' if kept else 'DELETED'}"
        )
        bad = Path(d) / "bad.jsonl"
        bad.write_bytes(
            b'{"question": "q", "answer": "a"}\n{"question": "\xff", "answer": "a"}\n'
            b'{"question": "q2", "answer": "a"}\n'
        )
        o = Path(d) / "o.jsonl"
        r = subprocess.run(
            [binary, "batch", str(bad), str(o), "--model", tiny, "--max-new-tokens", "2"],
            env=ENV,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        rows = o.read_text().count("\n") if o.exists() else 0
        out["11 invalid UTF-8 row"] = f"exit {r.returncode}, {rows} of 2 good rows written"
        try:
            r = subprocess.run(
                [binary, "batch", str(src), str(Path(d) / "nodir/out.jsonl"), "--model", tiny],
                env=ENV,
                capture_output=True,
                text=True,
                check=False,
                timeout=20,
            )
            out["3 batch into a missing folder"] = f"exit {r.returncode}: {r.stderr.strip()[:90]}"
        except subprocess.TimeoutExpired:
            out["3 batch into a missing folder"] = "still running after 20 s (hang)"

    try:
        p, base = start(binary, "--model", tiny, "--api-key", "")
        status, _ = post(base, "/v1/correct", {"question": "Q", "answer": "A", "max_tokens": 2})
        out["12 --api-key ''"] = f"started; unauthenticated request got HTTP {status}"
        stop(p)
    except RuntimeError:
        out["12 --api-key ''"] = "refused to start"

    p, base = start(binary, "--model", tiny, "--api-key", "k")
    status, _ = post(
        base, "/v1/correct", {"question": "Q", "answer": "A", "max_tokens": 2}, {"authorization": "bearer k"}
    )
    out["14 'bearer' in lower case"] = f"HTTP {status}"
    host, port = base.removeprefix("http://").rsplit(":", 1)
    s = socket.create_connection((host, int(port)))
    s.sendall(b"GET /hea")
    s.settimeout(15)
    t = time.time()
    try:
        closed = s.recv(1) == b""
    except TimeoutError:
        closed = False
    out["13 half-sent head"] = (
        f"closed by the server after {time.time() - t:.1f} s" if closed else "still open after 15 s"
    )
    stop(p)

    p, base = start(binary, "--model", tiny)
    msgs = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    res = {
        k: post(base, "/v1/chat/completions", {"messages": msgs, k: v, "max_tokens": 2})[0]
        for k, v in [("n", 2), ("tools", [{"type": "function"}]), ("logprobs", True)]
    }
    out["16 chat n/tools/logprobs"] = ", ".join(f"{k} -> {v}" for k, v in res.items())
    out["16 404 body"] = get(base, "/nope")[1][:60] or "(empty)"
    stop(p)

    for args, name in [
        (["generate", "--prompt-ids", "1,4294967296"], "17 --prompt-ids 2^32"),
        (["correct", "-q", "Q", "-a", "A", "--threads", "4294967296"], "17 --threads 2^32"),
    ]:
        r = subprocess.run(
            [binary, *args, "--model", tiny], env=ENV, capture_output=True, text=True, check=False, timeout=60
        )
        out[name] = f"exit {r.returncode}: {r.stderr.strip()[:80]}"

    p, base = (
        start(binary, "--model", str(DEFAULT), "--max-prompt-tokens", "8000")
        if "max-prompt"
        in subprocess.run(
            [binary, "serve", "--help"], capture_output=True, text=True, env=ENV, check=False
        ).stdout
        else start(binary, "--model", str(DEFAULT))
    )
    post(base, "/v1/correct", {"question": "Q", "answer": "Paris is in France.", "max_tokens": 8})
    before = rss_mb(p.pid)
    post(
        base,
        "/v1/correct",
        {"question": "Q", "answer": "The quick brown fox. " * 800, "max_tokens": 2},
        timeout=300,
    )
    post(base, "/v1/correct", {"question": "Q", "answer": "Paris is in France.", "max_tokens": 8})
    out["4 RSS after a 4,000-token request"] = f"{before:.0f} MB before, {rss_mb(p.pid):.0f} MB after"
    stop(p)
    return out


def main() -> None:
    binaries = sys.argv[1:]
    if not binaries or not all(shutil.which(b) or Path(b).is_file() for b in binaries):
        sys.exit("usage: reliability-probe.py BINARY [BINARY ...]")
    results = [probe(b) for b in binaries]
    for key in results[0]:
        print(f"{key}:")
        for b, r in zip(binaries, results):
            print(f"    {b}: {r.get(key)}")


if __name__ == "__main__":
    main()
