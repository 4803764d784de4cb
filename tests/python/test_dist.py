"""The `make dist` bundle runs where it is unpacked, under `env -i`: scripts/dist_check.py
unpacks it into a temporary folder and runs `bin/aligner correct` (no --model) and the C example
built against the bundle alone."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def archive() -> Path:
    found = sorted((ROOT / "dist").glob("aligner-*-linux-x86_64.tar.gz"))
    assert found, "no bundle: run `make dist` (make test does)"
    return found[-1]


def test_the_bundle_holds_what_a_release_needs():
    with tarfile.open(archive()) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for required in ("bin/aligner", "lib/libaligner.so", "lib/libonnxruntime.so.1.31.1", "include/aligner.h",
                     "LICENSE", "THIRD_PARTY_NOTICES", "README", "licenses/onnxruntime/LICENSE",
                     "share/aligner/models/smollm2-135m-aligner-int8/model.onnx"):
        assert required in names, required
    assert not any(n.startswith(("target/", ".venv")) for n in names)


def test_the_unpacked_bundle_corrects_with_nothing_else_installed():
    out = subprocess.run([sys.executable, str(ROOT / "scripts/dist_check.py"), str(archive())],
                         capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr + out.stdout
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["c_example_ok"] and report["ort_in_bundle"] and report["cli_model_in_bundle"]
    assert report["cli_correction"].strip() and report["cli_finish_reason"] in ("eos", "length", "stop")
