"""What saving KV costs a forward pass on the GPU: TierkvConnector's worker side driven
as vLLM drives it (`save_kv_layer` after each attention layer, `wait_for_save` after
the forward), around a stand-in forward pass, against the same forward with no saves
measured in the same run.

The stand-in: per layer, a bf16 matmul sized like one Qwen3-32B decoder layer's
compute for `--tokens` prefill tokens at tensor parallelism 2 (hidden 5120, MLP 25600,
split over 2 ranks), then the layer's K/V written into the step's blocks of
FlashAttention-layout caches `[2, num_blocks, block_size, kv_heads, head_dim]` (64
layers, 4 KV heads per rank, head dim 128, bf16). Every step saves the blocks it wrote
(`--tokens / block_size` blocks, new hashes each step) into the embedded store's
pinned host tier.

Rows (medians of `--steps` steps, each timed from the host with the forward's stream
drained at both ends — the layer-wise copies to host run on behind the next step, as
in serving; if they fell behind, the next step's save would wait for a lane and show):
- no saves: the forward alone (the baseline);
- layer-wise: each layer's copy queued as it is written (the connector's GPU path);
- end of step: `save_gpu` after the forward (the whole copy on the host's critical
  path, as a connector that saves at `wait_for_save` does).

usage: python3 gpu_overlap_bench.py [--tokens 2048] [--steps 30] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from types import SimpleNamespace

import torch

from tierkv.vllm.config import ConnectorConfig
from tierkv.vllm.metadata import BlockTransfer, TierkvMetadata
from tierkv.vllm.worker import WorkerSide

LAYERS, HEADS, DIM = 64, 4, 128
HIDDEN, MLP_PER_RANK = 5120, 25600 // 2


def vllm_config(block: int) -> SimpleNamespace:
    return SimpleNamespace(
        model_config=SimpleNamespace(model="qwen3-32b-standin", get_num_kv_heads=lambda p: HEADS, get_head_size=lambda: DIM),
        cache_config=SimpleNamespace(block_size=block, cache_dtype="auto"),
        parallel_config=SimpleNamespace(tensor_parallel_size=1),
        compilation_config=SimpleNamespace(static_forward_context={}),
    )


def run(block: int, tokens: int, steps: int, host_gib: int, per_copy: int) -> dict:
    per_step = tokens // block
    num_blocks = 2 * per_step + 8
    caches = {
        f"model.layers.{i}.self_attn.attn": torch.zeros(2, num_blocks, block, HEADS, DIM, dtype=torch.bfloat16, device="cuda")
        for i in range(LAYERS)
    }
    x = torch.randn(tokens, HIDDEN, dtype=torch.bfloat16, device="cuda")
    w_up = torch.randn(HIDDEN, MLP_PER_RANK, dtype=torch.bfloat16, device="cuda") * 0.01
    w_down = torch.randn(MLP_PER_RANK, HIDDEN, dtype=torch.bfloat16, device="cuda") * 0.01
    kv_src = torch.randn(2, per_step, block, HEADS, DIM, dtype=torch.bfloat16, device="cuda")
    with tempfile.TemporaryDirectory() as d:
        cfg = ConnectorConfig(
            config={"data_dir": d, "tier": [{"kind": "host", "capacity": f"{host_gib}GiB"}]},
            rendezvous_dir=f"{d}/rv",
            token="overlap-bench",
            save_queue_bytes=8 << 30,
            save_layers_per_copy=per_copy,
        )
        w = WorkerSide(cfg, vllm_config(block), f"overlap-{block}", 0, "kv_both")
        w.register_kv_caches(caches, num_blocks)
        step_no = [0]

        def forward(mode: str) -> tuple[float, float]:
            """(step seconds, host seconds spent in the save calls)."""
            step_no[0] += 1
            # Alternate between two sets of block ids, as consecutive steps do.
            first = (step_no[0] % 2) * per_step
            ids = list(range(first, first + per_step))
            idx = torch.tensor(ids, device="cuda")
            hashes = [(step_no[0] << 20) + i for i in range(per_step)]
            meta = TierkvMetadata(
                saves=[BlockTransfer(req_id=f"s{step_no[0]}", cache_salt=None, block_ids=ids, hashes=[hashes], peer_addrs=None)]
            )
            # The forward's stream drained at both ends (not the device: the layer-wise
            # copies to host run on, behind the next step, as in serving).
            stream = torch.cuda.current_stream()
            stream.synchronize()
            t0 = time.perf_counter()
            h = x
            in_saves = 0.0
            for name, t in caches.items():
                h = (h @ w_up).relu_() @ w_down  # the layer's compute
                t.index_copy_(1, idx, kv_src)  # its K/V of the step's blocks
                if mode == "layer-wise":
                    s0 = time.perf_counter()
                    w.save_kv_layer(meta, name)
                    in_saves += time.perf_counter() - s0
            s0 = time.perf_counter()
            if mode == "layer-wise":
                w.wait_for_save(meta)
            elif mode == "end of step":
                w.store.save_gpu(w.namespace, w.gpu_kv, list(zip(hashes, ids)), stream.cuda_stream)
            in_saves += time.perf_counter() - s0
            stream.synchronize()
            return time.perf_counter() - t0, in_saves

        modes = ["no saves", "layer-wise", "end of step"]
        for m in modes:  # warm-up: kernels compiled, staging and pinned memory touched
            forward(m)
            forward(m)
        times: dict[str, list[float]] = {m: [] for m in modes}
        host: dict[str, list[float]] = {m: [] for m in modes}
        for _ in range(steps):
            for m in modes:  # interleaved, so drift hits every mode alike
                step_s, host_s = forward(m)
                times[m].append(step_s)
                host[m].append(host_s)
        assert w.store.flush(timeout_s=120)
        io = w.store.stats()["io"]
        w.shutdown()
    med = {m: statistics.median(v) for m, v in times.items()}
    host_med = {m: statistics.median(v) for m, v in host.items()}
    base = med["no saves"]
    block_bytes = 2 * LAYERS * block * HEADS * DIM * 2
    return {
        "block_size": block,
        "layers_per_copy": per_copy,
        "tokens": tokens,
        "blocks_per_step": per_step,
        "saved_mib_per_step": per_step * block_bytes / 2**20,
        "forward_ms": base * 1e3,
        "layer_wise_ms": med["layer-wise"] * 1e3,
        "end_of_step_ms": med["end of step"] * 1e3,
        "layer_wise_overhead_pct": (med["layer-wise"] / base - 1) * 100,
        "end_of_step_overhead_pct": (med["end of step"] / base - 1) * 100,
        "layer_wise_host_ms": host_med["layer-wise"] * 1e3,
        "end_of_step_host_ms": host_med["end of step"] * 1e3,
        "saved_blocks": io["saved_blocks"],
        "save_skipped": io["save_skipped"],
        "save_failed": io["save_failed"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--block-sizes", default="16,128")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--host-gib", type=int, default=16)
    ap.add_argument("--layers-per-copy", default="1", help="save_layers_per_copy values, e.g. 1,4")
    ap.add_argument("--json")
    a = ap.parse_args()
    rows = [
        run(b, a.tokens, a.steps, a.host_gib, k)
        for b in map(int, a.block_sizes.split(","))
        for k in map(int, a.layers_per_copy.split(","))
    ]
    print("| block | layers per copy | tokens | blocks/step | MiB saved/step | forward ms (no saves) | layer-wise ms | overhead | host ms in save calls | end-of-step save ms | overhead | host ms in save calls | saved | skipped |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['block_size']} | {r['layers_per_copy']} | {r['tokens']} | {r['blocks_per_step']} | {r['saved_mib_per_step']:.0f} "
            f"| {r['forward_ms']:.2f} | {r['layer_wise_ms']:.2f} | {r['layer_wise_overhead_pct']:+.1f}% | {r['layer_wise_host_ms']:.2f} "
            f"| {r['end_of_step_ms']:.2f} | {r['end_of_step_overhead_pct']:+.1f}% | {r['end_of_step_host_ms']:.2f} | {r['saved_blocks']} | {r['save_skipped']} |"
        )
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": rows, "device": torch.cuda.get_device_name()}, f, indent=1)


if __name__ == "__main__":
    main()
