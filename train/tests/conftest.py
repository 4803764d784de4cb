import hashlib
import sys
import zipfile
from pathlib import Path

import pytest

TRAIN = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TRAIN))

from aligner_train.wheels import PINS, Pin

FIXTURES = Path(__file__).parent / "fixtures" / "wheels"


def make_wheels(dest: Path) -> dict[str, Pin]:
    """Zips the in-repo samples into wheels with the pinned names; returns pins of *their*
    sha256, as the real pins are of the real wheels."""
    pins = {}
    dest.mkdir(parents=True, exist_ok=True)
    for name, real in PINS.items():
        path = dest / real.filename
        with zipfile.ZipFile(path, "w") as z:
            root = FIXTURES / name
            for f in sorted(root.rglob("*")):
                if f.is_file():
                    z.write(f, f.relative_to(root).as_posix())
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        pins[name] = Pin(real.name, real.version, sha)
    return pins


@pytest.fixture
def fixture_wheels(tmp_path: Path) -> tuple[Path, dict[str, Pin]]:
    cache = tmp_path / "wheels"
    return cache, make_wheels(cache)
