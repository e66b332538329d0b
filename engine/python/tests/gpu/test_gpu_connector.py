"""TierkvConnector's worker side with its KV cache on a GPU, driven as vLLM drives it
(vLLM itself is not installed on the GPU machine): `register_kv_caches` with
FlashAttention-layout CUDA tensors, a "forward pass" that writes blocks on the current
stream, `wait_for_save`, then `start_load_kv` into other block ids before a "next
layer" that reads them on the same stream — and a decode worker's load from a prefill
worker's block service (disaggregated serving), reported by `finished_peer_loads`."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch

from tierkv.vllm import rendezvous
from tierkv.vllm.config import ConnectorConfig
from tierkv.vllm.metadata import BlockTransfer, TierkvMetadata
from tierkv.vllm.worker import WorkerSide

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")

N, B, H, D, L = 32, 16, 4, 64, 4


def vllm_config() -> SimpleNamespace:
    return SimpleNamespace(
        model_config=SimpleNamespace(model="fake-model", get_num_kv_heads=lambda p: H, get_head_size=lambda: D),
        cache_config=SimpleNamespace(block_size=B, cache_dtype="auto"),
        parallel_config=SimpleNamespace(tensor_parallel_size=1),
        compilation_config=SimpleNamespace(static_forward_context={}),
    )


def worker(tmp_path, name: str, role: str) -> tuple[WorkerSide, dict[str, torch.Tensor]]:
    cfg = ConnectorConfig(
        config={"data_dir": str(tmp_path / name), "tier": [{"kind": "host", "capacity": "64MiB"}]},
        rendezvous_dir=str(tmp_path / "rv"),
        token="gpu-connector-test",
    )
    caches = {f"layers.{i}.attn": torch.zeros(2, N, B, H, D, dtype=torch.bfloat16, device="cuda") for i in range(L)}
    w = WorkerSide(cfg, vllm_config(), f"gpu-{name}", 0, role)
    w.register_kv_caches(caches, N)
    assert w.gpu_kv is not None, "a CUDA KV cache takes the GPU path"
    return w, caches


def forward_writes(caches: dict[str, torch.Tensor], blocks: list[int]) -> None:
    """A slow kernel, then each layer's K/V of `blocks` written, on the current stream."""
    torch.cuda._sleep(100_000_000)
    for layer, t in enumerate(caches.values()):
        for i, b in enumerate(blocks):
            t[:, b].fill_(float(1 + layer * 10 + i))


def transfer(req: str, block_ids: list[int], hashes: list[int], peer: list[str] | None = None) -> BlockTransfer:
    return BlockTransfer(req_id=req, cache_salt=None, block_ids=block_ids, hashes=[hashes], peer_addrs=peer)


def test_saves_after_the_forward_and_loads_before_the_next_layer(tmp_path):
    w, caches = worker(tmp_path, "agg", "kv_both")
    try:
        forward_writes(caches, [2, 5])
        # vLLM calls this right after launching the forward: the copy must wait for it.
        w.wait_for_save(TierkvMetadata(saves=[transfer("r1", [2, 5], [11, 12])]))
        assert w.store.flush(timeout_s=60)
        torch.cuda.synchronize()
        for t in caches.values():
            t.zero_()
        w.start_load_kv(TierkvMetadata(loads=[transfer("r2", [7, 9], [11, 12])]))
        # The next layer reads the loaded blocks on the forward's stream.
        seen = [(t[:, 7].float().mean().item(), t[:, 9].float().mean().item()) for t in caches.values()]
        assert seen == [(1 + layer * 10, 2 + layer * 10) for layer in range(L)]
        assert w.take_invalid_blocks() == set()
        delta = w.stats_delta()
        assert delta["saved_blocks"] == 2 and delta["loaded_blocks"] == 2 and delta["load_failed"] == 0
        # A block the store does not hold is reported invalid (recomputed), not used.
        w.start_load_kv(TierkvMetadata(loads=[transfer("r3", [3, 4], [11, 99])]))
        assert w.take_invalid_blocks() == {4}
    finally:
        w.shutdown()


def test_a_decode_worker_loads_the_prefill_workers_blocks_on_the_gpu(tmp_path):
    prefill, pc = worker(tmp_path, "prefill", "kv_producer")
    decode, dc = worker(tmp_path, "decode", "kv_consumer")
    try:
        forward_writes(pc, [1, 2, 3])
        prefill.wait_for_save(TierkvMetadata(saves=[transfer("p", [1, 2, 3], [21, 22, 23])]))
        assert prefill.store.flush(timeout_s=60)
        # Where the prefill worker's block service listens, as its rendezvous file says.
        addr = rendezvous.wait_for(rendezvous.path(str(tmp_path / "rv"), "gpu-prefill", 0), 10)["addr"]
        decode.start_load_kv(TierkvMetadata(loads=[transfer("d", [10, 11, 12], [21, 22, 23], peer=[addr])]))
        deadline = time.monotonic() + 60
        done: set[str] = set()
        while "d" not in done:
            assert time.monotonic() < deadline, "the peer load never finished"
            done |= decode.finished_peer_loads()
            time.sleep(0.01)
        assert decode.take_invalid_blocks() == set()
        assert decode.peer_loaded_blocks == 3
        torch.cuda.synchronize()
        for p, d in zip(pc.values(), dc.values()):
            assert torch.equal(d[:, 10:13].view(torch.uint8), p[:, 1:4].view(torch.uint8))
    finally:
        decode.shutdown()
        prefill.shutdown()


def test_layer_wise_saves_run_while_the_forward_computes_and_never_block_it(tmp_path):
    """vLLM calls `save_kv_layer` right after each attention layer and `wait_for_save`
    after the forward: each layer's copy is queued as it is written, the host returns
    before the GPU has finished, and the next step may overwrite the blocks at once."""
    w, caches = worker(tmp_path, "layered", "kv_both")
    try:
        meta = TierkvMetadata(saves=[transfer("r1", [4, 6], [31, 32]), transfer("r2", [8], [33])])
        stream = torch.cuda.current_stream()
        t0 = time.perf_counter()
        for layer, (name, t) in enumerate(caches.items()):
            torch.cuda._sleep(50_000_000)  # the layer's compute
            for i, b in enumerate([4, 6, 8]):
                t[:, b].fill_(float(3 + layer * 10 + i))
            w.save_kv_layer(meta, name)
        w.wait_for_save(meta)
        host_s = time.perf_counter() - t0
        assert not stream.query(), "wait_for_save returned before the forward finished"
        # The next step reuses the blocks on the same stream.
        for t in caches.values():
            t[:, [4, 6, 8]].fill_(-1.0)
        torch.cuda.synchronize()
        gpu_s = time.perf_counter() - t0
        assert host_s < gpu_s / 2, (host_s, gpu_s)
        assert w.store.flush(timeout_s=60)
        w.start_load_kv(TierkvMetadata(loads=[transfer("r3", [10, 11, 12], [31, 32, 33])]))
        seen = [tuple(t[:, b].float().mean().item() for b in (10, 11, 12)) for t in caches.values()]
        assert seen == [(3 + layer * 10, 4 + layer * 10, 5 + layer * 10) for layer in range(L)]
        assert w.take_invalid_blocks() == set()
        assert w.stats_delta()["saved_blocks"] == 3
    finally:
        w.shutdown()
