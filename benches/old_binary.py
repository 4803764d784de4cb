"""Run a bench setting on an older aligner binary that predates some of its flags."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path


@functools.cache
def _help(binary: Path, sub: str) -> str:
    return subprocess.run([str(binary), sub, "--help"], check=True, capture_output=True,
                          text=True).stdout


def flags_for(binary: Path, sub: str, flags: list[str]) -> list[str]:
    """`flags` as `binary`'s `sub` takes them. A binary from before `--batch-size` ran one
    sequence at a time, so `--batch-size 1` is dropped for it; any other width is refused."""
    if "--batch-size" in _help(binary, sub) or "--batch-size" not in flags:
        return flags
    i = flags.index("--batch-size")
    if flags[i + 1] != "1":
        raise SystemExit(f"{binary} has no --batch-size: only one-by-one settings can run on it")
    return flags[:i] + flags[i + 2:]
