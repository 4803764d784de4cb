#!/usr/bin/env bash
# GPU validation, meant for the GPU machine (CUDA 13 libraries and PyTorch, no network).
#
# The bundle made by scripts/gpu-pack.sh travels in parts, one per call to a warm machine:
#   call k:   carry=[".gpu-parts/bundle.tar.zst.part-0k", ".gpu-parts/PARTS", ".gpu-parts/bundle.sha256"]
#             command: scripts/gpu-check.sh receive
#   last:     the same with the last part and ".gpu-parts/tools" (zstd, in case the machine
#             lacks it), then: scripts/gpu-check.sh run
# (or `scripts/gpu-check.sh receive run` in the call that brings the last part).
#
# `run` reassembles and verifies the bundle, installs the onnxruntime-gpu libraries in
# $STAGE/ort-gpu, then for every model folder runs greedy generation on the CPU, CUDA and
# TensorRT providers of that same library and compares the tokens:
#   fp32 folders: the CUDA and TensorRT tokens must equal the CPU tokens exactly;
#   fp16 folders: the first FP16_PREFIX (16) of 32 tokens must agree (fp16 kernels accumulate
#                 in different orders, so a later near-tie may legitimately flip);
#   int8/int4 folders: reported, not asserted (MatMulNBits differs between providers).
# Finally it prints decode tok/s (aligner bench) for the default model as `make model` builds it
# (int8 for the CPU) and for its int4 CUDA-target export, on the CPU, CUDA (with and without CUDA
# graphs) and TensorRT, and the correction workload on CUDA.
# Exit status: 0 when every assertion held and at least one GPU provider was checked; a provider
# whose libraries are missing (TensorRT on the 2026-11 image) is listed as not checked.
set -uo pipefail
cd "$(dirname "$0")/.."

STAGE=${STAGE:-$HOME/aligner-gpu}
FP16_PREFIX=16
NEW_TOKENS=32

receive() {
    mkdir -p "$STAGE/parts"
    local got=0
    for f in .gpu-parts/bundle.tar.zst.part-* .gpu-parts/PARTS .gpu-parts/bundle.sha256; do
        [ -f "$f" ] || continue
        cp "$f" "$STAGE/parts/" && got=$((got + 1))
    done
    # zstd itself, in case the GPU machine lacks it (gpu-pack.sh copies it with its libraries).
    if [ -d .gpu-parts/tools ]; then mkdir -p "$STAGE/tools" && cp .gpu-parts/tools/* "$STAGE/tools/"; fi
    echo "received $got files; staged: $(ls "$STAGE/parts" | grep -c part-) of $(cat "$STAGE/parts/PARTS" 2>/dev/null | wc -l) parts"
}

install_bundle() {
    local parts="$STAGE/parts"
    [ -f "$parts/PARTS" ] || { echo "error: no parts received; run 'receive' first" >&2; return 1; }
    while read -r p; do
        [ -f "$parts/$p" ] || { echo "error: part $p has not arrived yet" >&2; return 1; }
    done < "$parts/PARTS"
    (cd "$parts" && xargs cat < PARTS > bundle.tar.zst && sha256sum --check --quiet bundle.sha256) \
        || { echo "error: the reassembled bundle does not match bundle.sha256" >&2; return 1; }
    rm -rf "$STAGE/bundle" && mkdir -p "$STAGE/bundle"
    local unzstd=(zstd)
    command -v zstd >/dev/null || unzstd=(env LD_LIBRARY_PATH="$STAGE/tools" "$STAGE/tools/zstd")
    "${unzstd[@]}" -q -d -c "$parts/bundle.tar.zst" | tar -C "$STAGE/bundle" -xf - \
        || { echo "error: could not unpack the bundle (zstd missing? carry .gpu-parts/tools)" >&2; return 1; }
    echo "installed: $(ls "$STAGE/bundle/ort-gpu" | tr '\n' ' ')"
}

tokens() {  # tokens MODEL EP -> space-separated greedy tokens (or FAIL: reason)
    local out
    if out=$(timeout 120 "$BIN" generate --model "$1" --ep "$2" --ort-lib "$ORT" --prompt "The capital of France is" \
            --max-new-tokens $NEW_TOKENS --suppress-eos --temperature 0 --json 2>"$STAGE/last.err"); then
        echo "$out" | python3 -c 'import json,sys; print(" ".join(map(str, json.load(sys.stdin)["tokens"])))'
    else
        echo "FAIL: $(tail -1 "$STAGE/last.err")"
    fi
}

compare() {  # compare CPU OTHER PRECISION -> prints verdict, returns 1 on a failed assertion
    python3 - "$1" "$2" "$3" "$FP16_PREFIX" <<'PY'
import sys
cpu, other, precision, need = sys.argv[1].split(), sys.argv[2].split(), sys.argv[3], int(sys.argv[4])
if sys.argv[2].startswith("FAIL"):
    print(f"  {sys.argv[2]}"); sys.exit(1)
same = next((i for i, (a, b) in enumerate(zip(cpu, other)) if a != b), min(len(cpu), len(other)))
verdict = f"common prefix {same}/{len(cpu)}"
if precision == "fp32":
    ok = cpu == other
elif precision == "fp16":
    ok = same >= need
else:
    ok = True; verdict += " (reported only)"
print(f"  {'ok  ' if ok else 'FAIL'} {verdict}")
sys.exit(0 if ok else 1)
PY
}

run_checks() {
    install_bundle || return 1
    BIN="$STAGE/bundle/aligner"
    ORT="$STAGE/bundle/ort-gpu/libonnxruntime.so.1.31.1"
    # The CUDA provider needs cuBLAS, cuRAND and the CUDA runtime (13); TensorRT's provider also
    # needs libnvinfer 10 and cuDNN 9. The GPU image ships CUDA as pip packages beside PyTorch.
    local pysite cuda_dirs
    pysite=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null || true)
    cuda_dirs=$(timeout 60 find ${pysite:+"$pysite"} /usr/local/cuda/lib64 /usr/local/nvidia /usr/lib/x86_64-linux-gnu /opt \
        \( -name 'libcudart.so.13*' -o -name 'libcublas*.so.13*' -o -name 'libcurand.so.10*' \
        -o -name 'libcuda.so.1' -o -name 'libcudnn.so.9*' -o -name 'libnvinfer.so.10*' -o -name 'libnvonnxparser.so.10*' \) \
        -printf '%h\n' 2>/dev/null | sort -u | paste -sd: -)
    echo "CUDA libraries found in: ${cuda_dirs:-nowhere}"
    export LD_LIBRARY_PATH="$STAGE/bundle/ort-gpu${cuda_dirs:+:$cuda_dirs}:${LD_LIBRARY_PATH:-}"
    # A provider whose libraries are not installed is reported as not checked (loudly, in the
    # summary), not as a token mismatch: the H200 image of 2026-11 has CUDA but no TensorRT.
    local eps="" skipped="" ep missing
    for ep in cuda tensorrt; do
        missing=$(ldd "$STAGE/bundle/ort-gpu/libonnxruntime_providers_$ep.so" | awk '/not found/ {printf "%s ", $1}')
        if [ -z "$missing" ]; then eps="$eps $ep"; else skipped="$skipped $ep (missing: ${missing% })"; fi
    done
    echo "providers to check:${eps:- none}; not checked:${skipped:- none}"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    "$BIN" info --model "$STAGE/bundle/models/tiny-llama-fp32" --ort-lib "$ORT" --ep auto | tail -3
    local failures=0
    for model in "$STAGE"/bundle/models/*/; do
        local name precision cpu
        name=$(basename "$model")
        case "$name" in *fp16*) precision=fp16 ;; *fp32*) precision=fp32 ;; *) precision=quantized ;; esac
        cpu=$(tokens "$model" cpu)
        for ep in $eps; do
            echo "$name on $ep vs cpu ($precision):"
            compare "$cpu" "$(tokens "$model" $ep)" "$precision" || failures=$((failures + 1))
        done
    done
    echo "decode speed (64 new tokens after a 122-token prompt, median of 5):"
    local cpu_int8="$STAGE/bundle/models/smollm2-135m-aligner-int8"
    local cuda_int4="$STAGE/bundle/models/smollm2-135m-aligner-int4-cuda"
    local run
    for run in "$cpu_int8 cpu" "$cpu_int8 cpu --threads 2" "$cpu_int8 cuda" \
        "$cuda_int4 cpu" "$cuda_int4 cuda" "$cuda_int4 cuda --cuda-graph" "$cuda_int4 tensorrt"; do
        # shellcheck disable=SC2086 # $run is a folder, an EP and its options
        set -- $run
        [[ " cpu $eps " == *" $2 "* ]] || continue
        timeout 120 "$BIN" bench --model "$1" --ort-lib "$ORT" --ep "${@:2}" --no-corrections \
            --json 2>"$STAGE/last.err" \
            | python3 -c "import json,sys; v=json.load(sys.stdin); print(f\"  $(basename "$1") ${*:2}: decode {v['decode_tok_s']:.1f} tok/s, prefill {v['prefill_tok_s']:.0f} tok/s, ttft {v['ttft_ms']:.1f} ms\")" 2>/dev/null \
            || echo "  $(basename "$1") ${*:2}: bench failed: $(tail -1 "$STAGE/last.err" | cut -c1-600)"
    done
    if [[ " $eps " == *" cuda "* ]]; then
        echo "corrections on cuda, int4 cuda folder (16 workload pairs, 3 runs: one run is cold for each new shape; JSON in $STAGE/corrections-cuda.json):"
        timeout 180 "$BIN" bench --model "$cuda_int4" --ort-lib "$ORT" --ep cuda --correction-runs 3 --json \
            >"$STAGE/corrections-cuda.json" 2>"$STAGE/last.err" \
            && python3 -c "import json,sys; v=json.load(open(sys.argv[1])); print('  ' + json.dumps({k: x for k, x in v.items() if not isinstance(x, (list, dict))}))" "$STAGE/corrections-cuda.json" \
            || echo "  failed: $(tail -1 "$STAGE/last.err" | cut -c1-600)"
    fi
    echo "assertion failures: $failures; not checked:${skipped:- none}"
    [ -n "$eps" ] || { echo "error: no GPU provider could be checked on this machine" >&2; return 1; }
    [ "$failures" -eq 0 ]
}

status=0
for step in "${@:-run}"; do
    case "$step" in
        receive) receive || status=1 ;;
        run) run_checks || status=1 ;;
        *) echo "usage: scripts/gpu-check.sh [receive] [run]" >&2; exit 2 ;;
    esac
done
exit $status
