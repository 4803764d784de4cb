"""A small safetensors reader and writer over plain file reads, with no torch.

Tensors are read one at a time with `os.pread` instead of a memory map, so pages of a 13 GB
checkpoint never accumulate in the process's resident set. bf16 is widened to fp32 by bit
shifting (numpy has no bf16), which is exact.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ExportError

NUMPY_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32, "U8": np.uint8}
ITEM_SIZE = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4, "U8": 1}


@dataclass
class TensorEntry:
    path: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute file offset
    end: int


def read_header(path: Path) -> dict[str, TensorEntry]:
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            raw_len = fh.read(8)
            if len(raw_len) < 8:
                raise ValueError("file shorter than its 8-byte header length")
            (n,) = struct.unpack("<Q", raw_len)
            if n > size - 8 or n > 100_000_000:
                raise ValueError(f"header length {n} exceeds the file size {size}")
            header = json.loads(fh.read(n))
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path.name} is not a readable safetensors file ({exc}); re-download it") from exc
    base = 8 + n
    entries: dict[str, TensorEntry] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = info.get("dtype")
        if dtype not in ITEM_SIZE:
            raise ExportError(f"tensor '{name}' in {path.name} has dtype {dtype}; supported: BF16, F16, F32")
        start, end = (base + int(x) for x in info["data_offsets"])
        shape = tuple(int(x) for x in info["shape"])
        if end - start != int(np.prod(shape, dtype=np.int64)) * ITEM_SIZE[dtype]:
            raise ExportError(f"tensor '{name}' in {path.name} has a byte range that does not match its shape; the file is corrupt")
        if end > size:
            raise ExportError(
                f"{path.name} is truncated: tensor '{name}' ends at byte {end} but the file has {size}; re-download it"
            )
        entries[name] = TensorEntry(path, dtype, shape, start, end)
    return entries


def read_tensor(entry: TensorEntry) -> np.ndarray:
    """The tensor as float32 (floating dtypes) or its own dtype (integers)."""
    length = entry.end - entry.start
    buf = bytearray(length)
    with open(entry.path, "rb", buffering=0) as fh:
        got = 0
        view = memoryview(buf)
        while got < length:
            n = os.preadv(fh.fileno(), [view[got:]], entry.start + got)
            if n == 0:
                raise ExportError(f"{entry.path.name} ended while reading a tensor; the file is truncated, re-download it")
            got += n
    if entry.dtype == "BF16":
        bits = np.frombuffer(buf, dtype=np.uint16).astype(np.uint32) << 16
        return bits.view(np.float32).reshape(entry.shape)
    arr = np.frombuffer(buf, dtype=NUMPY_DTYPES[entry.dtype]).reshape(entry.shape)
    if arr.dtype.kind == "f" and arr.dtype != np.float32:
        return arr.astype(np.float32)
    return arr


def write_safetensors(path: Path, tensors: dict[str, tuple[str, tuple[int, ...], bytes]]) -> None:
    """Write `{name: (dtype, shape, raw little-endian bytes)}`; used by tests and the synthetic
    checkpoint script (bf16 included, which the numpy API of `safetensors` cannot write)."""
    header: dict[str, dict] = {}
    offset = 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * ((-len(blob)) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)))
        fh.write(blob)
        for _, _, raw in tensors.values():
            fh.write(raw)


def to_bf16_bytes(array: np.ndarray) -> bytes:
    """Round-to-nearest-even fp32 -> bf16 bytes."""
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16).tobytes()
