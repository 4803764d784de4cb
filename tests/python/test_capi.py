"""libaligner.so, the C ABI: the C example compiled with the system compiler against the
checked-in header, the ctypes example, and the error contract (statuses, thread-local one-line
messages), each run in a clean environment (`env -i` with only PATH and HOME)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIB = ROOT / "target/release/libaligner.so"
HEADER = ROOT / "include/aligner.h"
MODEL = ROOT / "models/smollm2-135m-aligner-int8"
CLEAN = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}

sys.path.insert(0, str(ROOT / "examples/python"))
import correct_ctypes


@pytest.fixture(scope="module", autouse=True)
def built():
    for p in (LIB, HEADER, MODEL / "model.onnx"):
        assert p.exists(), f"{p} missing: run `make test`"


def test_c_example_compiles_against_the_header_and_runs_in_a_clean_environment(tmp_path):
    exe = tmp_path / "correct-c"
    subprocess.run(["cc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-I", str(HEADER.parent),
                    str(ROOT / "examples/c/correct.c"), "-L", str(LIB.parent), "-laligner",
                    f"-Wl,-rpath,{LIB.parent}", "-o", str(exe)], check=True)
    out = subprocess.run([str(exe), str(MODEL), "What is the capital of France?",
                          "The capital of France is Berlin."],
                         capture_output=True, text=True, env=CLEAN, cwd=tmp_path, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    m = re.search(r"finish=(\w+) prompt=(\d+) completion=(\d+) pieces=(\d+)", out.stdout)
    assert m, out.stdout
    assert m.group(1) in ("eos", "length", "stop") and int(m.group(3)) > 0 and int(m.group(4)) > 0
    info = json.loads(re.search(r"^info=(.*)$", out.stdout, re.MULTILINE).group(1))
    assert info["provider"] == "cpu" and info["onnxruntime"]["version"] == "1.31.1"
    assert info["manifest"]["template"] == info["template"] == "chatml-correction"
    assert "invalid_utf8_status=1 result_is_null=1 last_error=invalid request: question is not UTF-8" in out.stdout


def run_ctypes_example(*extra: str) -> dict:
    out = subprocess.run([sys.executable, str(ROOT / "examples/python/correct_ctypes.py"), str(LIB), str(MODEL),
                          "How do I keep a cast-iron pan from rusting?",
                          "Dry it right after washing and rub in a thin coat of oil.", *extra],
                         capture_output=True, text=True, env=CLEAN, cwd="/tmp", timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_ctypes_example_streams_the_whole_correction():
    out = run_ctypes_example()
    assert out["finish_reason"] in ("eos", "length", "stop")
    assert out["streamed_equals_text"] and out["pieces"] > 0 and out["completion_tokens"] > 0


def test_a_cancel_from_another_thread_stops_the_correction():
    out = run_ctypes_example("--cancel-after", "2")
    assert out["finish_reason"] == "cancelled"
    assert out["pieces"] >= 2 and out["streamed_is_prefix"]
    assert out["completion_tokens"] < 96


def test_errors_are_statuses_with_thread_local_one_line_messages():
    lib = correct_ctypes.Library(str(LIB))
    with pytest.raises(correct_ctypes.AlignerError) as e:
        correct_ctypes.Model(lib, "/nonexistent/model")
    assert e.value.status == 3  # ALIGNER_STATUS_LOAD_FAILED
    assert "cannot load model from /nonexistent/model" in str(e.value) and "\n" not in str(e.value)

    seen_elsewhere = []
    t = threading.Thread(target=lambda: seen_elsewhere.append(lib.c.aligner_last_error()))
    t.start()
    t.join()
    assert seen_elsewhere == [b""], "the last error belongs to the thread that failed"

    result = correct_ctypes.ctypes.c_void_p()
    status = lib.c.aligner_correct(None, b"q", 1, b"a", 1, None, correct_ctypes.PIECE_FN(0), None,
                                   correct_ctypes.ctypes.byref(result))
    assert status == 1 and result.value is None  # ALIGNER_STATUS_INVALID_ARGUMENT
    assert lib.c.aligner_last_error().decode().startswith("invalid request: model is NULL")


def test_settings_out_of_range_are_refused_by_name():
    lib = correct_ctypes.Library(str(LIB))
    model = correct_ctypes.Model(lib, str(MODEL))
    gen = lib.c.aligner_gen_options_default()
    gen.top_p = 2.0
    result = correct_ctypes.ctypes.c_void_p()
    status = lib.c.aligner_correct(model.ptr, b"q", 1, b"a", 1, correct_ctypes.ctypes.byref(gen),
                                   correct_ctypes.PIECE_FN(0), None, correct_ctypes.ctypes.byref(result))
    assert status == 1 and result.value is None
    assert "top_p 2 must be in (0, 1]" in lib.c.aligner_last_error().decode()
    model.close()


def test_the_header_declares_exactly_the_library_exports():
    exported = subprocess.run(["nm", "-D", "--defined-only", str(LIB)], capture_output=True, text=True,
                              check=True).stdout
    symbols = {line.split()[-1] for line in exported.splitlines() if " T aligner_" in line}
    declared = set(re.findall(r"\b(aligner_\w+)\(", HEADER.read_text()))
    assert symbols and symbols == declared
