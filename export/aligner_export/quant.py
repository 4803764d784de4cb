"""Block-wise weight-only quantization in the layouts ONNX Runtime's contrib ops read.

MatMulNBits wants B as [N, K/block, block*bits/8] uint8 with per-block float scales and uint8
zero points (two 4-bit zero points per byte for int4). The 8-bit embedding table uses the same
layout, gathered and dequantized row by row in the graph, so a tied embedding/lm_head is stored
once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ExportError


@dataclass
class BlockQuantized:
    data: np.ndarray  # uint8 [N, K/block, block*bits/8]
    scales: np.ndarray  # float32 [N, K/block]
    zero_points: np.ndarray | None  # uint8 [N, K/block] (8 bits) or packed nibbles (4 bits); None: symmetric
    bits: int
    block_size: int
    n: int
    k: int


def quantize_blockwise(weight: np.ndarray, bits: int = 8, block_size: int = 32, symmetric: bool = False) -> BlockQuantized:
    """Min/max quantization of `weight` ([N, K], rows are output features).

    Asymmetric stores a zero point per block. Symmetric stores none: MatMulNBits then uses its
    implicit zero point 2^(bits-1) (onnxruntime-genai's builder does this)."""
    if bits not in (4, 8):
        raise ExportError(f"--bits {bits} is not supported; use 4 or 8")
    if block_size < 16 or block_size & (block_size - 1):
        raise ExportError(f"block size {block_size} must be a power of two >= 16")
    n, k = weight.shape
    if k % block_size:
        raise ExportError(f"input width {k} is not a multiple of block size {block_size}; pick a smaller --block-size")
    blocks = weight.astype(np.float32).reshape(n, k // block_size, block_size)
    qmax = (1 << bits) - 1
    if symmetric:
        mid = 1 << (bits - 1)
        amax = np.abs(blocks).max(axis=2)
        scales = np.where(amax == 0, 1.0, amax / (mid - 1)).astype(np.float32)
        q = np.clip(np.round(blocks / scales[..., None]) + mid, 0, qmax).astype(np.uint8)
        if bits == 4:
            q = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
        return BlockQuantized(q, scales, None, bits, block_size, n, k)
    lo = np.minimum(blocks.min(axis=2), 0.0)
    hi = np.maximum(blocks.max(axis=2), 0.0)
    scales = (hi - lo) / qmax
    scales = np.where(scales == 0, 1.0, scales).astype(np.float32)
    zero = np.clip(np.round(-lo / scales), 0, qmax).astype(np.uint8)
    q = np.clip(np.round(blocks / scales[..., None]) + zero[..., None], 0, qmax).astype(np.uint8)
    if bits == 4:
        q = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
        if zero.shape[1] % 2:
            zero = np.concatenate([zero, np.zeros((n, 1), np.uint8)], axis=1)
        zero = (zero[:, 0::2] | (zero[:, 1::2] << 4)).astype(np.uint8)
    return BlockQuantized(q, scales, zero, bits, block_size, n, k)


def dequantize_blockwise(qw: BlockQuantized) -> np.ndarray:
    """Reference inverse, used by tests and by `verify`."""
    q = qw.data
    zero = qw.zero_points
    if zero is None:
        if qw.bits == 4:
            q = np.stack([q & 0x0F, q >> 4], axis=-1).reshape(qw.n, -1, qw.block_size)
        w = (q.astype(np.float32) - float(1 << (qw.bits - 1))) * qw.scales[..., None]
        return w.reshape(qw.n, qw.k)
    if qw.bits == 4:
        q = np.stack([q & 0x0F, q >> 4], axis=-1).reshape(qw.n, -1, qw.block_size)
        zero = np.stack([zero & 0x0F, zero >> 4], axis=-1).reshape(qw.n, -1)[:, : qw.k // qw.block_size]
    w = (q.astype(np.float32) - zero[..., None].astype(np.float32)) * qw.scales[..., None]
    return w.reshape(qw.n, qw.k)


ROW_CHUNK = 2048  # rows quantized at a time, which bounds the fp32 temporaries


def quantize_rows(parts: list[np.ndarray], bits: int, block_size: int, symmetric: bool = False) -> BlockQuantized:
    """Quantize the row-wise concatenation of `parts` chunk by chunk; quantization is per row,
    so this equals quantizing the concatenated matrix, without materializing it in fp32."""
    pieces = [
        quantize_blockwise(part[start : start + ROW_CHUNK], bits, block_size, symmetric)
        for part in parts
        for start in range(0, part.shape[0], ROW_CHUNK)
    ]
    if len(pieces) == 1:
        return pieces[0]
    first = pieces[0]
    return BlockQuantized(
        np.concatenate([p.data for p in pieces]),
        np.concatenate([p.scales for p in pieces]),
        None if first.zero_points is None else np.concatenate([p.zero_points for p in pieces]),
        bits,
        block_size,
        sum(p.n for p in pieces),
        first.k,
    )
