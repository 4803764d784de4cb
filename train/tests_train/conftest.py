import sys
from pathlib import Path

TRAIN = Path(__file__).resolve().parents[1]
REPO = TRAIN.parent
sys.path.insert(0, str(TRAIN))
sys.path.insert(0, str(REPO / "export"))

TINY_GGUF = REPO / "tests" / "fixtures" / "tiny-llama" / "tiny-llama.gguf"
