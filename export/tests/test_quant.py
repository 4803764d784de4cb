import numpy as np
import pytest
from aligner_export.errors import ExportError
from aligner_export.gguf_source import unpermute_rotary
from aligner_export.quant import dequantize_blockwise, quantize_blockwise


def test_int8_roundtrip_error_is_within_half_a_step():
    w = np.random.default_rng(0).normal(size=(16, 64)).astype(np.float32)
    q = quantize_blockwise(w, 8, 32)
    assert q.data.shape == (16, 2, 32) and q.scales.shape == (16, 2) and q.zero_points.shape == (16, 2)
    err = np.abs(dequantize_blockwise(q) - w)
    step = np.repeat(q.scales, 32, axis=1)
    assert np.all(err <= step / 2 + 1e-6)


def test_int4_packs_two_values_per_byte_and_roundtrips():
    w = np.random.default_rng(1).normal(size=(4, 32)).astype(np.float32)
    q = quantize_blockwise(w, 4, 16)
    assert q.data.shape == (4, 2, 8)
    err = np.abs(dequantize_blockwise(q) - w)
    assert np.all(err <= np.repeat(q.scales, 16, axis=1) / 2 + 1e-6)


def test_constant_block_does_not_divide_by_zero():
    q = quantize_blockwise(np.zeros((2, 32), np.float32), 8, 32)
    assert np.all(dequantize_blockwise(q) == 0)


@pytest.mark.parametrize("bits,block", [(3, 32), (8, 24), (8, 8)])
def test_bad_quant_settings_are_errors(bits, block):
    with pytest.raises(ExportError):
        quantize_blockwise(np.zeros((2, 48), np.float32), bits, block)


def test_unpermute_inverts_llama_cpp_permute():
    n_heads, head_dim, cols = 3, 8, 5
    w = np.arange(n_heads * head_dim * cols, dtype=np.float32).reshape(n_heads * head_dim, cols)
    permuted = w.reshape(n_heads, 2, head_dim // 2, cols).swapaxes(1, 2).reshape(w.shape)
    assert np.array_equal(unpermute_rotary(permuted, n_heads), w)


def test_symmetric_blocks_have_no_zero_points_and_round_trip() -> None:
    rng = np.random.default_rng(1)
    w = rng.standard_normal((8, 64)).astype(np.float32)
    for bits, tol in ((8, 1 / 127), (4, 1 / 7)):
        q = quantize_blockwise(w, bits, 32, symmetric=True)
        assert q.zero_points is None
        err = np.abs(dequantize_blockwise(q) - w)
        amax = np.abs(w.reshape(8, 2, 32)).max(axis=2, keepdims=True)
        assert np.all(err.reshape(8, 2, 32) <= amax * tol / 2 + 1e-6)
