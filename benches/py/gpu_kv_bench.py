"""vLLM-shaped GPU KV tensors <-> tierkv's host tier through the `tierkv` package
(`Store.save_gpu` / `Store.load_gpu`), beside two baselines measured in the same run:

- ceiling: one contiguous copy of the same bytes between HBM and pinned host memory
  (torch, non_blocking into a pinned tensor);
- torch: what an offloader written in torch does — per layer `index_select` of the
  blocks on the GPU, then a copy into pinned memory (onboard: pinned -> GPU, then
  `index_copy_`).

Layout FlashAttention's `[2, num_blocks, block_size, kv_heads, head_dim]` per layer
(vLLM's default on Hopper), bf16; shapes Qwen3-32B (64 layers) and Llama-3-8B (32
layers), 8 KV heads, head dim 128; block sizes 16 and 128; batches of 1, 16, 256
scattered blocks. Medians of `--repeats`.

usage: python3 gpu_kv_bench.py [--repeats 7] [--json out.json]   (on a GPU machine)
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

import tierkv

SHAPES = {"qwen3-32b": 64, "llama3-8b": 32}
HEADS, DIM = 8, 128


def timed(fn, repeats: int) -> float:
    """Median seconds of `fn` (which ends synchronised)."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(shape: str, block: int, batches: list[int], repeats: int) -> list[dict]:
    layers = SHAPES[shape]
    most = max(batches)
    n = 2 * most + 8
    caches = [torch.randn(2, n, block, HEADS, DIM, dtype=torch.bfloat16, device="cuda") for _ in range(layers)]
    kv = tierkv.gpu_kv(caches, n)
    bb = kv.block_bytes
    ns = tierkv.Namespace(shape, layers, HEADS, DIM, "bf16", block, engine_layout="flash_attn")
    rows = []
    with tempfile.TemporaryDirectory() as d:
        # Room for three batches: repetitions beyond that evict the oldest blocks, as a
        # full cache does (the last batch saved stays for the loads).
        cap = bb * most * 3
        store = tierkv.open_store({"data_dir": d, "tier": [{"kind": "host", "capacity": cap}]}, min_slot_bytes=bb)
        stream = torch.cuda.current_stream().cuda_stream
        for batch in batches:
            g = torch.Generator().manual_seed(batch)
            src = torch.randperm(n, generator=g)[:batch].tolist()
            dst = [b for b in torch.randperm(n, generator=g).tolist() if b not in src][:batch]
            dev = torch.empty(batch * bb, dtype=torch.uint8, device="cuda")
            pinned = torch.empty(batch * bb, dtype=torch.uint8, pin_memory=True)
            ceiling_off = timed(lambda: pinned.copy_(dev, non_blocking=True), repeats)
            ceiling_on = timed(lambda: dev.copy_(pinned, non_blocking=True), repeats)
            idx_src = torch.tensor(src, device="cuda")
            idx_dst = torch.tensor(dst, device="cuda")
            per_layer = [torch.empty(2, batch, block, HEADS, DIM, dtype=torch.bfloat16, pin_memory=True) for _ in range(layers)]

            def torch_off():
                for c, p in zip(caches, per_layer):
                    p.copy_(c.index_select(1, idx_src), non_blocking=True)

            def torch_on():
                for c, p in zip(caches, per_layer):
                    c.index_copy_(1, idx_dst, p.to("cuda", non_blocking=True))

            t_torch_off = timed(torch_off, repeats)
            t_torch_on = timed(torch_on, repeats)
            # tierkv: every repetition saves under fresh hashes (a stored block is
            # content-addressed: saving it again would skip the copy).
            rep = iter(range(10**9))
            last = []

            def tk_off():
                r = next(rep)
                hashes = [(r << 32) | (batch << 16) | i for i in range(batch)]
                assert store.save_gpu(ns, kv, list(zip(hashes, src)), stream) == batch
                last[:] = hashes

            t_tk_off = timed(tk_off, repeats)
            assert store.flush(timeout_s=120)
            saved = list(last)

            def tk_on():
                assert store.load_gpu(ns, kv, list(zip(saved, dst)), stream) == batch

            t_tk_on = timed(tk_on, repeats)
            nbytes = batch * bb
            row = {
                "shape": shape,
                "block_size": block,
                "batch": batch,
                "block_bytes": bb,
                "ceiling_offload_gbps": nbytes / ceiling_off / 1e9,
                "ceiling_onboard_gbps": nbytes / ceiling_on / 1e9,
                "tierkv_offload_gbps": nbytes / t_tk_off / 1e9,
                "tierkv_onboard_gbps": nbytes / t_tk_on / 1e9,
                "torch_offload_gbps": nbytes / t_torch_off / 1e9,
                "torch_onboard_gbps": nbytes / t_torch_on / 1e9,
            }
            row["offload_vs_ceiling"] = row["tierkv_offload_gbps"] / row["ceiling_offload_gbps"]
            row["onboard_vs_ceiling"] = row["tierkv_onboard_gbps"] / row["ceiling_onboard_gbps"]
            row["offload_vs_torch"] = row["tierkv_offload_gbps"] / row["torch_offload_gbps"]
            row["onboard_vs_torch"] = row["tierkv_onboard_gbps"] / row["torch_onboard_gbps"]
            rows.append(row)
            print(json.dumps(row), flush=True)
            del dev, pinned, per_layer
        store.close()
    del caches, kv
    torch.cuda.empty_cache()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="qwen3-32b,llama3-8b")
    ap.add_argument("--block-sizes", default="16,128")
    ap.add_argument("--batches", default="1,16,256")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json")
    a = ap.parse_args()
    rows = []
    for shape in a.shapes.split(","):
        for block in map(int, a.block_sizes.split(",")):
            rows += run(shape, block, [int(b) for b in a.batches.split(",")], a.repeats)
    print("| shape | block | batch | block MiB | offload GB/s | vs ceiling | vs torch | onboard GB/s | vs ceiling | vs torch | ceiling off/on GB/s | torch off/on GB/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['shape']} | {r['block_size']} | {r['batch']} | {r['block_bytes'] / 2**20:.2f} "
            f"| {r['tierkv_offload_gbps']:.1f} | {r['offload_vs_ceiling']:.2f}x | {r['offload_vs_torch']:.2f}x "
            f"| {r['tierkv_onboard_gbps']:.1f} | {r['onboard_vs_ceiling']:.2f}x | {r['onboard_vs_torch']:.2f}x "
            f"| {r['ceiling_offload_gbps']:.1f}/{r['ceiling_onboard_gbps']:.1f} | {r['torch_offload_gbps']:.1f}/{r['torch_onboard_gbps']:.1f} |"
        )
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": rows, "device": torch.cuda.get_device_name()}, f, indent=1)


if __name__ == "__main__":
    main()
