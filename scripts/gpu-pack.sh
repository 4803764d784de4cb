#!/usr/bin/env bash
# Prepares everything scripts/gpu-check.sh needs on the GPU machine, as compressed parts small
# enough to travel one per `run` call (the device tool carries at most 64 MiB a call, tracked
# tree included).
#
#   scripts/gpu-pack.sh            # here, after `make test` (needs network access to PyPI)
#
# Writes the git-ignored folder .gpu-parts/:
#   bundle.tar.zst.part-00, -01, ...   44 MiB each (the tracked tree, ~19 MB, travels with each)
#   bundle.sha256                      checksum of the whole bundle, checked after reassembly
#   PARTS                              the part names, in order
# The bundle holds:
#   ort-gpu/        libonnxruntime.so.1.31.1 and the CUDA / TensorRT / shared provider libraries
#                   from the onnxruntime-gpu==1.31.1 wheel (CUDA 13), pinned by its sha256 below
#   aligner         the release binary built here
#   models/         tiny fixtures exported at fp32 and fp16 (the four architectures and the tiny
#                   Llama GGUF), the default model as `make model` builds it (int8 for the CPU:
#                   fp32 activations and cache) and the same model exported for CUDA (int4,
#                   fp16 activations and cache: what a GPU user should run)
# Sizes: libonnxruntime.so ~29 MB, libonnxruntime_providers_cuda.so ~284 MB (~188 MB
# compressed); the whole bundle is about 400 MB, so about 9 parts.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEEL_VERSION=1.31.1
PART_SIZE=44M
OUT=.gpu-parts
WORK=.cache/gpu-bundle
PY=.venv/bin/python
EXPORT="env PYTHONPATH=$PWD/export $PY -m aligner_export"

[ -x target/release/aligner ] || { echo "error: target/release/aligner is missing; run make test first" >&2; exit 1; }
[ -f models/smollm2-135m-aligner-int8/model.onnx ] || { echo "error: the default model is missing; run make model first" >&2; exit 1; }

mkdir -p .cache/ort-gpu
if ! ls .cache/ort-gpu/onnxruntime_gpu-$WHEEL_VERSION-*.whl >/dev/null 2>&1; then
    $PY -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        "onnxruntime-gpu==$WHEEL_VERSION" -d .cache/ort-gpu
fi
WHEEL=$(ls .cache/ort-gpu/onnxruntime_gpu-$WHEEL_VERSION-*.whl | head -1)
(cd .cache/ort-gpu && grep " $(basename "$WHEEL")\$" ../../scripts/ort-gpu.sha256 | sha256sum --check --quiet)

rm -rf "$WORK" "$OUT"
mkdir -p "$WORK/ort-gpu" "$WORK/models" "$OUT"
$PY - "$WHEEL" "$WORK/ort-gpu" <<'PY'
import sys, zipfile, pathlib
wheel, dest = sys.argv[1], pathlib.Path(sys.argv[2])
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        base = name.rsplit("/", 1)[-1]
        if name.startswith("onnxruntime/capi/") and base.startswith("libonnxruntime"):
            (dest / base).write_bytes(z.read(name))
            print("  ", base, z.getinfo(name).file_size // 1_000_000, "MB")
PY
cp target/release/aligner "$WORK/aligner"
cp -r models/smollm2-135m-aligner-int8 "$WORK/models/"
$EXPORT convert .cache/SmolLM2-135M-Instruct.Q4_1.gguf --lora train/adapters/smollm2-135m-aligner \
    --template chatml-correction --out "$WORK/models/smollm2-135m-aligner-int4-cuda" \
    --precision int4 --target cuda --force >/dev/null
for p in fp32 fp16; do
    $EXPORT convert tests/fixtures/tiny-llama/tiny-llama.gguf --out "$WORK/models/tiny-llama-$p" --precision $p --force >/dev/null
    for arch in llama mistral qwen2 gemma; do
        $EXPORT convert tests/fixtures/hf-$arch --out "$WORK/models/hf-$arch-$p" --precision $p --force >/dev/null
    done
done
tar -C "$WORK" -cf - . | zstd -q -T0 -10 -o "$OUT/bundle.tar.zst"
(cd "$OUT" && sha256sum bundle.tar.zst > bundle.sha256 && split -b "$PART_SIZE" -d bundle.tar.zst bundle.tar.zst.part- && rm bundle.tar.zst && ls bundle.tar.zst.part-* > PARTS)
# zstd and the libraries it links, for a GPU machine without it (carried with the last part).
mkdir -p "$OUT/tools"
cp "$(command -v zstd)" "$OUT/tools/"
ldd "$(command -v zstd)" | awk '/=> \// && !/libc\.so/ {print $3}' | xargs -r cp -t "$OUT/tools/"
echo "wrote $(wc -l < "$OUT/PARTS") parts to $OUT/:"
ls -la "$OUT"
