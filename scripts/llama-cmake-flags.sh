#!/usr/bin/env bash
# Prints the CMake flags for a llama.cpp build that runs on this machine and is the fastest that
# does: GGML_NATIVE is off (-march=native once produced a build that died with SIGILL where the
# CPU reported AMX), and each x86 extension is turned on only when /proc/cpuinfo reports it.
# AMX is turned on only when a probe program can actually use a tile (the kernel must grant the
# tile state through arch_prctl; a CPU flag alone is not enough).
set -euo pipefail

flags=" $(grep -m1 -E '^flags' /proc/cpuinfo | cut -d: -f2) "
has() { [[ "$flags" == *" $1 "* ]]; }
on() { if has "$2"; then echo -n " -D$1=ON"; else echo -n " -D$1=OFF"; fi; }

out="-DGGML_NATIVE=OFF"
out+=$(on GGML_SSE42 sse4_2)
out+=$(on GGML_AVX avx)
out+=$(on GGML_AVX2 avx2)
out+=$(on GGML_BMI2 bmi2)
out+=$(on GGML_FMA fma)
out+=$(on GGML_F16C f16c)
out+=$(on GGML_AVX_VNNI avx_vnni)
if has avx512f && has avx512cd && has avx512vl && has avx512dq && has avx512bw; then
  out+=" -DGGML_AVX512=ON"
  out+=$(on GGML_AVX512_VBMI avx512vbmi)
  out+=$(on GGML_AVX512_VNNI avx512_vnni)
  out+=$(on GGML_AVX512_BF16 avx512_bf16)
else
  out+=" -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF"
fi

amx=OFF
if has amx_tile && has amx_int8; then
  probe=$(mktemp -d)
  cat > "$probe/amx.c" <<'C'
#include <sys/syscall.h>
#include <unistd.h>
#include <immintrin.h>
int main(void) {
    /* ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA: ask the kernel for the tile state. */
    if (syscall(SYS_arch_prctl, 0x1023, 18) != 0) return 1;
    unsigned char cfg[64] = {0};
    cfg[0] = 1;      /* palette 1 */
    cfg[16] = 64;    /* tile 0: 64 bytes per row */
    cfg[48] = 16;    /* tile 0: 16 rows */
    _tile_loadconfig(cfg);
    _tile_zero(0);
    _tile_release();
    return 0;
}
C
  if cc -O1 -mamx-tile "$probe/amx.c" -o "$probe/amx" 2>/dev/null && "$probe/amx" 2>/dev/null; then
    amx=ON
  fi
  rm -rf "$probe"
fi
out+=" -DGGML_AMX_TILE=$amx -DGGML_AMX_INT8=$amx"
if has amx_bf16; then out+=" -DGGML_AMX_BF16=$amx"; else out+=" -DGGML_AMX_BF16=OFF"; fi
echo "$out"
