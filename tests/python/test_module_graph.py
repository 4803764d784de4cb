"""scripts/module_graph.py fails on what it must (a cycle, a subcommand importing another) and
passes the real tree."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load():
    spec = importlib.util.spec_from_file_location("module_graph", ROOT / "scripts/module_graph.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def tree(tmp_path: Path, sources: dict[str, str]) -> Path:
    for rel, text in sources.items():
        p = tmp_path / "src" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return tmp_path / "src"


def problems(monkeypatch, src: Path, capsys) -> tuple[int, str]:
    mg = load()
    monkeypatch.setattr(mg, "SRC", src)
    code = mg.main()
    return code, capsys.readouterr().err


def test_the_real_tree_passes():
    out = subprocess.run([sys.executable, str(ROOT / "scripts/module_graph.py")], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr


def test_a_cycle_between_siblings_fails(tmp_path, monkeypatch, capsys):
    src = tree(tmp_path, {
        "lib.rs": "mod a;\nmod b;\n",
        "a.rs": "use crate::b::B;\npub struct A;\n",
        "b.rs": "pub struct B(crate::a::A);\n",
        "main.rs": "mod app;\n",
        "app/mod.rs": "mod args;\n",
        "app/args.rs": "",
    })
    code, err = problems(monkeypatch, src, capsys)
    assert code == 1 and "import cycle in (lib root) between a, b" in err


def test_a_subcommand_importing_another_fails(tmp_path, monkeypatch, capsys):
    src = tree(tmp_path, {
        "lib.rs": "",
        "main.rs": "mod app;\n",
        "app/mod.rs": "mod args;\nmod serve;\nmod batch;\n",
        "app/args.rs": "pub struct A;\n",
        "app/serve/mod.rs": "use super::args::A;\nuse crate::app::batch::rows::Row;\n",
        "app/batch/mod.rs": "mod rows;\nuse super::args::A;\n",
        "app/batch/rows.rs": "pub struct Row;\n",
    })
    code, err = problems(monkeypatch, src, capsys)
    assert code == 1 and "subcommand app::serve imports subcommand app::batch" in err


def test_a_module_and_its_own_submodule_may_refer_to_each_other(tmp_path, monkeypatch, capsys):
    src = tree(tmp_path, {
        "lib.rs": "mod engine;\n",
        "engine/mod.rs": "mod session;\nuse session::build;\npub struct Config;\n",
        "engine/session.rs": "use super::Config;\npub fn build() {}\n",
        "main.rs": "",
    })
    code, err = problems(monkeypatch, src, capsys)
    assert code == 0, err
