"""Training renders the runtime's prompts character for character: the runtime's own
`correct --template T` and `generate --prompt <python render>` must see the same prompt tokens
and so produce the same tokens."""

import json
import os
import subprocess
import sys

import pytest
from aligner_train.templates import TEMPLATES, render
from conftest import TRAIN

REPO = TRAIN.parent
TINY = REPO / "models" / "tiny-llama-fp32"
BINARY = REPO / "target" / "release" / "aligner"

pytestmark = pytest.mark.skipif(not (TINY / "model.onnx").exists() or not BINARY.exists(),
                                reason="needs `make fixtures-models build`")


def _run(*args: str) -> dict:
    env = dict(os.environ, VIRTUAL_ENV=sys.prefix)
    p = subprocess.run([str(BINARY), *args, "--model", str(TINY), "--max-new-tokens", "6",
                        "--json"], capture_output=True, text=True, env=env, check=False)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


@pytest.mark.parametrize("template", TEMPLATES)
def test_python_render_is_the_runtime_prompt(template):
    q, a = "Is the sun a star? (é, 漢字)", "No, it is a planet.\nSecond line."
    runtime = _run("correct", "--template", template, "--question", q, "--answer", a,
                   "--no-draft")
    mine = _run("generate", "--prompt", render(template, q, a))
    assert mine["prompt_tokens"] == runtime["prompt_tokens"]
    assert mine["tokens"] == runtime["tokens"]


def test_unknown_template_is_refused():
    with pytest.raises(ValueError, match="unknown template"):
        render("v3", "q", "a")
