"""Where each block's bytes sit in vLLM's KV cache tensors, for any backend: per layer
the tensor's block dimension is found from its shape, and a block is the run (or the
runs, one per leading index: K and V for FlashAttention's ``[2, N, B, H, D]``) of the
contiguous dimensions after it. Works for the CPU backend's ``[N, H, B, 2D]``,
FlashInfer's ``[N, 2, B, H, D]`` and per-layer views of a cross-layer tensor."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LayerRuns:
    """One layer: ``base + outer + block_id * block_stride`` for each ``outer``, each
    run ``run_bytes`` long."""

    base: int
    block_stride: int
    outers: tuple[int, ...]
    run_bytes: int


@dataclass(frozen=True)
class BlockMap:
    layers: tuple[LayerRuns, ...]
    #: Shape of one layer's cache with the block dimension written ``N``, e.g.
    #: ``N,3,128,128``: part of the namespace, so two packings never share blocks.
    signature: str
    block_bytes: int
    num_blocks: int

    def ranges(self, block_id: int) -> list[tuple[int, int]]:
        if not 0 <= block_id < self.num_blocks:
            raise IndexError(f"block id {block_id} outside 0..{self.num_blocks}")
        return [
            (layer.base + outer + block_id * layer.block_stride, layer.run_bytes)
            for layer in self.layers
            for outer in layer.outers
        ]


def _layer_runs(t: Any, num_blocks: int) -> tuple[LayerRuns, str]:
    shape, stride, elem = tuple(t.shape), tuple(t.stride()), t.element_size()
    for d, size in enumerate(shape):
        if size != num_blocks:
            continue
        inner = shape[d + 1 :]
        # The dimensions after the block dimension must be one dense run.
        expect = 1
        dense = True
        for s, st in zip(reversed(inner), reversed(stride[d + 1 :])):
            if s != 1 and st != expect:
                dense = False
                break
            expect *= s
        if not dense:
            continue
        run = math.prod(inner) * elem
        outers = tuple(
            sum(i * st * elem for i, st in zip(idx, stride[:d]))
            for idx in itertools.product(*(range(s) for s in shape[:d]))
        )
        sig = ",".join("N" if i == d else str(s) for i, s in enumerate(shape))
        return LayerRuns(t.data_ptr(), stride[d] * elem, outers, run), sig
    raise ValueError(
        f"TierkvConnector: cannot find a dense block dimension of size {num_blocks} "
        f"in a KV cache tensor of shape {shape} and strides {stride}"
    )


def block_map(kv_caches: dict[str, Any], num_blocks: int) -> BlockMap:
    layers, signatures = [], set()
    for t in kv_caches.values():
        runs, sig = _layer_runs(t, num_blocks)
        layers.append(runs)
        signatures.add(sig)
    if len(signatures) != 1:
        raise ValueError(f"TierkvConnector: layers differ in layout: {signatures}")
    block_bytes = sum(len(lr.outers) * lr.run_bytes for lr in layers)
    return BlockMap(tuple(layers), signatures.pop(), block_bytes, num_blocks)
