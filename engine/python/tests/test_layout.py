"""TierkvConnector's block map: for each KV cache layout vLLM hands a connector, the
ranges of block i cover exactly block i's bytes of every layer, nothing else."""

from __future__ import annotations

import ctypes

import pytest
import torch

from tierkv.layout import block_map

N, B, H, D, LAYERS = 6, 16, 2, 8, 3


def gathered(ranges) -> bytes:
    return b"".join(ctypes.string_at(addr, n) for addr, n in ranges)


def layers(shape, make=None):
    out = {}
    for i in range(LAYERS):
        t = torch.arange(torch.Size(shape).numel(), dtype=torch.int32).reshape(shape).to(torch.bfloat16) + i
        out[f"model.layers.{i}.self_attn.attn"] = t if make is None else make(t)
    return out


@pytest.mark.parametrize(
    "name, shape, select",
    [
        ("cpu [N, H, B, 2D]", (N, H, B, 2 * D), lambda t, i: [t[i]]),
        ("flash-attn [2, N, B, H, D]", (2, N, B, H, D), lambda t, i: [t[0, i], t[1, i]]),
        ("flashinfer [N, 2, B, H, D]", (N, 2, B, H, D), lambda t, i: [t[i]]),
    ],
)
def test_ranges_cover_each_block_of_every_layer(name, shape, select):
    kv = layers(shape)
    m = block_map(kv, N)
    assert m.block_bytes == LAYERS * 2 * B * H * D * 2, name
    for i in range(N):
        want = b"".join(p.contiguous().view(torch.int16).numpy().tobytes() for t in kv.values() for p in select(t, i))
        assert gathered(m.ranges(i)) == want, (name, i)
    assert "N" in m.signature
    with pytest.raises(IndexError):
        m.ranges(N)


def test_views_of_a_cross_layer_tensor():
    # One tensor [N, LAYERS, 2, B, H, D]; each layer's view is strided by the layer count.
    whole = torch.arange(N * LAYERS * 2 * B * H * D, dtype=torch.int32).to(torch.bfloat16).reshape(N, LAYERS, 2, B, H, D)
    kv = {f"l{i}": whole[:, i] for i in range(LAYERS)}
    m = block_map(kv, N)
    for i in range(N):
        want = b"".join(whole[i, l].contiguous().view(torch.int16).numpy().tobytes() for l in range(LAYERS))
        assert gathered(m.ranges(i)) == want


def test_a_layout_without_a_dense_block_dimension_is_refused():
    t = torch.zeros(B, N, H, D, dtype=torch.bfloat16).transpose(0, 1)  # block dim strided
    t = t.transpose(1, 2)  # and its inner dims not dense either
    with pytest.raises(ValueError, match="dense block dimension"):
        block_map({"l0": t}, N)
