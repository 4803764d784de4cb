from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parent))
BIN = ROOT / "target" / "release" / "aligner"
DEFAULT_MODEL = ROOT / "models" / "smollm2-135m-instruct-int8"


def aligner(*args: str) -> dict:
    """Runs the release binary with --json and returns the parsed object."""
    env = dict(os.environ, VIRTUAL_ENV=str(ROOT / ".venv"))
    p = subprocess.run([str(BIN), *args, "--json"], capture_output=True, text=True, env=env, check=False)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


@pytest.fixture(scope="session", autouse=True)
def built() -> None:
    for path, fix in ((BIN, "cargo build --release"), (DEFAULT_MODEL / "model.onnx", "make model")):
        if not path.exists():
            pytest.fail(f"{path} is missing; run `{fix}` (or `make test`)")
