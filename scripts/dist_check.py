"""Unpacks a `make dist` bundle into a temporary folder and runs it there, as a new user would:
`bin/aligner correct` without --model and the C example built against the bundle's header and
library, both under `env -i` (only PATH and HOME). Prints one JSON line with the checks and the
time from `tar x` to the first corrected token (building the C example is not counted).

    python scripts/dist_check.py dist/aligner-VERSION-linux-x86_64.tar.gz
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

CLEAN = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}
QUESTION = "What is the boiling point of water at sea level?"
ANSWER = "Water boils at 50 degrees Celsius at sea level."


def first_piece_seconds(cmd: list[str], cwd: Path) -> tuple[float, str, int]:
    """Seconds from launch to the first byte of stdout, the whole output, and the exit code."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=CLEAN, cwd=cwd)
    first = proc.stdout.read(1)
    elapsed = time.perf_counter() - start
    rest, err = proc.communicate(timeout=300)
    if proc.returncode:
        sys.exit(f"error: {' '.join(cmd)} failed: {err.decode(errors='replace').strip()}")
    return elapsed, (first + rest).decode(), proc.returncode


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_file():
        sys.exit("usage: dist_check.py dist/aligner-VERSION-linux-x86_64.tar.gz (run `make dist`)")
    archive = Path(argv[0]).resolve()
    with tempfile.TemporaryDirectory(prefix="aligner-dist-") as tmp:
        where = Path(tmp)
        start = time.perf_counter()
        with tarfile.open(archive) as tar:
            tar.extractall(where, filter="tar")
        tar_s = time.perf_counter() - start
        (root,) = list(where.iterdir())
        models = list((root / "share/aligner/models").iterdir())

        # An embedding app: the example compiled against the bundle alone.
        exe = root / "bin/correct-c"
        subprocess.run(["cc", "-std=c11", "-Wall", "-Werror", "-I", str(root / "include"),
                        str(root / "include/example-correct.c"), "-L", str(root / "lib"), "-laligner",
                        "-Wl,-rpath,$ORIGIN/../lib", "-o", str(exe)], check=True, env={**CLEAN, **os.environ})
        first_s, c_out, _ = first_piece_seconds([str(exe), str(models[0]), QUESTION, ANSWER], where)

        cli = subprocess.run([str(root / "bin/aligner"), "correct", "-q", QUESTION, "-a", ANSWER,
                              "--max-new-tokens", "48", "--json"], capture_output=True, text=True,
                             env=CLEAN, cwd=where, timeout=300, check=False)
        if cli.returncode:
            sys.exit(f"error: bin/aligner correct failed in the bundle: {cli.stderr.strip()}")
        report = json.loads(cli.stdout)
        info = json.loads(subprocess.run([str(root / "bin/aligner"), "info", "--json"], capture_output=True,
                                         text=True, env=CLEAN, cwd=where, check=True).stdout)
        ort_in_bundle = Path(info["onnxruntime"]["path"]).resolve().is_relative_to(root.resolve())
        model_in_bundle = Path(report["model"]).resolve().is_relative_to(root.resolve())
        print(json.dumps({
            "archive": archive.name,
            "archive_mb": round(archive.stat().st_size / 2**20, 1),
            "tar_x_s": round(tar_s, 2),
            "first_token_s": round(first_s, 2),
            "tar_x_to_first_token_s": round(tar_s + first_s, 2),
            "c_example_ok": "finish=" in c_out and "invalid_utf8_status=1" in c_out,
            "cli_correction": report["correction"],
            "cli_finish_reason": report["finish_reason"],
            "cli_model_in_bundle": model_in_bundle,
            "ort_in_bundle": ort_in_bundle,
            "ort_version": info["onnxruntime"]["version"],
        }))
        return 0 if ort_in_bundle and model_in_bundle and "finish=" in c_out else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
