"""GPU KV through the `tierkv` package (run on a GPU machine: `python3 -m pytest
engine/python/tests/gpu`; CI builds the wheel with GPU support but has no GPU to run
this on).

For each layout vLLM hands a connector (FlashAttention's `[2, N, B, H, D]` per layer,
FlashInfer's `[N, 2, B, H, D]`, per-layer views of a cross-layer `[N, L, 2, B, H, D]`),
block sizes 16 and 128, bf16 and fp8: random KV in torch tensors on the GPU -> save a
scattered set of blocks -> clear the cache -> load them into other block ids ->
bit-identical, from the host tier and from the disk tier. Transfers wait for the work
queued on the engine's stream. Bad addresses, sizes and block ids are errors, and a
missing block ends a load (the rest is recomputed, never garbage)."""

from __future__ import annotations

import pytest
import torch

import tierkv

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")

N, L, H, D = 48, 3, 4, 64
SAVED = [3, 7, 8, 20, 41, 0]
INTO = [45, 2, 9, 11, 33, 47]


def layers(layout: str, block: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """Random KV in `layout`, as per-layer tensors (views for the cross-layer one)."""
    esize = torch.empty((), dtype=dtype).element_size()

    def rand(*shape):
        bytes_shape = (*shape[:-1], shape[-1] * esize)
        return torch.randint(0, 256, bytes_shape, dtype=torch.uint8, device="cuda").view(dtype)

    if layout == "flash_attn":
        return [rand(2, N, block, H, D) for _ in range(L)]
    if layout == "flashinfer":
        return [rand(N, 2, block, H, D) for _ in range(L)]
    cross = rand(N, L, 2, block, H, D)
    return [cross[:, i] for i in range(L)]


def block_of(t: torch.Tensor, layout: str, b: int) -> torch.Tensor:
    return t[:, b] if layout == "flash_attn" else t[b]


def block_bytes_of(ts: list[torch.Tensor], layout: str, b: int) -> bytes:
    """Block `b`'s bytes in the store's order (layer by layer, K before V)."""
    return b"".join(
        block_of(t, layout, b).contiguous().view(torch.uint8).cpu().numpy().tobytes() for t in ts
    )


def clear(ts: list[torch.Tensor]) -> None:
    for t in ts:
        t.view(torch.uint8).zero_()


def namespace(dtype: torch.dtype, block: int, layout: str) -> tierkv.Namespace:
    name = {torch.bfloat16: "bf16", torch.float8_e4m3fn: "f8e4m3"}[dtype]
    return tierkv.Namespace("gpu-test", L, H, D, name, block, engine_layout=layout)


def store(tmp_path, block_bytes: int, disk: bool) -> tierkv.Store:
    tiers = [{"kind": "host", "capacity": (2 if disk else 64) * block_bytes}]
    if disk:
        tiers.append({"kind": "disk", "capacity": 64 * block_bytes})
    return tierkv.open_store({"data_dir": str(tmp_path), "slot_bytes": block_bytes, "tier": tiers})


@pytest.mark.parametrize("layout", ["flash_attn", "flashinfer", "cross_layer"])
@pytest.mark.parametrize("block", [16, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn], ids=["bf16", "fp8"])
@pytest.mark.parametrize("disk", [False, True], ids=["host", "disk"])
def test_scattered_blocks_round_trip_bit_identical(tmp_path, layout, block, dtype, disk):
    ts = layers(layout, block, dtype)
    kv = tierkv.gpu_kv(ts, N)
    want = [block_bytes_of(ts, layout, b) for b in SAVED]
    assert kv.block_bytes == len(want[0])
    ns = namespace(dtype, block, layout)
    s = store(tmp_path, kv.block_bytes, disk)
    hashes = [1000 + i for i in range(len(SAVED))]
    stream = torch.cuda.current_stream().cuda_stream
    assert s.save_gpu(ns, kv, list(zip(hashes, SAVED)), stream) == len(SAVED)
    assert s.flush(timeout_s=60)
    if disk:
        tier_blocks = {t["name"]: t["blocks"] for t in s.stats()["tiers"]}
        assert tier_blocks["disk"] >= len(SAVED) - 2, tier_blocks
    clear(ts)
    assert s.load_gpu(ns, kv, list(zip(hashes, INTO)), stream) == len(SAVED)
    torch.cuda.synchronize()
    for b, w in zip(INTO, want):
        assert block_bytes_of(ts, layout, b) == w, (layout, b)
    zero = bytes(len(want[0]))
    assert block_bytes_of(ts, layout, 1) == zero, "no block but the loaded ones was written"
    io = s.stats()["io"]
    assert io["loaded_blocks"] == len(SAVED) and io["load_failed"] == 0


def test_a_missing_block_ends_the_load(tmp_path):
    ts = layers("flash_attn", 16, torch.bfloat16)
    kv = tierkv.gpu_kv(ts, N)
    ns = namespace(torch.bfloat16, 16, "flash_attn")
    s = store(tmp_path, kv.block_bytes, False)
    assert s.save_gpu(ns, kv, [(1, 3), (3, 5)]) == 2
    assert s.flush(timeout_s=60)
    before = block_bytes_of(ts, "flash_attn", 12)
    # Hash 2 was never saved: block 3's load stops there, block 12 stays untouched.
    assert s.load_gpu(ns, kv, [(1, 10), (2, 11), (3, 12)]) == 1
    torch.cuda.synchronize()
    assert block_bytes_of(ts, "flash_attn", 10) == block_bytes_of(ts, "flash_attn", 3)
    assert block_bytes_of(ts, "flash_attn", 12) == before
    assert s.stats()["io"]["load_failed"] == 2


def test_a_save_waits_for_the_engines_stream(tmp_path):
    ts = layers("flash_attn", 128, torch.bfloat16)
    kv = tierkv.gpu_kv(ts, N)
    ns = namespace(torch.bfloat16, 128, "flash_attn")
    s = store(tmp_path, kv.block_bytes, False)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU time before the "forward" writes
        for t in ts:
            t[:, 4].fill_(1.5)
    # Queued behind the sleep and the fill: what is saved is what the fill wrote.
    assert s.save_gpu(ns, kv, [(77, 4)], side.cuda_stream) == 1
    assert s.flush(timeout_s=60)
    torch.cuda.synchronize()
    clear(ts)
    assert s.load_gpu(ns, kv, [(77, 6)]) == 1
    torch.cuda.synchronize()
    for t in ts:
        assert torch.all(t[:, 6] == 1.5)


def test_a_load_waits_for_kernels_still_reading_the_block(tmp_path):
    ts = layers("flashinfer", 16, torch.bfloat16)
    kv = tierkv.gpu_kv(ts, N)
    ns = namespace(torch.bfloat16, 16, "flashinfer")
    s = store(tmp_path, kv.block_bytes, False)
    assert s.save_gpu(ns, kv, [(5, 1)]) == 1
    assert s.flush(timeout_s=60)
    old = [t[9].clone() for t in ts]
    side = torch.cuda.Stream()
    scratch = []
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)
        scratch = [t[9].clone() for t in ts]  # reads block 9 after the sleep
    assert s.load_gpu(ns, kv, [(5, 9)], side.cuda_stream) == 1
    torch.cuda.synchronize()
    bits = lambda x: x.view(torch.uint8)  # noqa: E731 - random bits hold NaNs: compare bytes
    for o, sc, t in zip(old, scratch, ts):
        assert torch.equal(bits(sc), bits(o)), "the read saw the block as it was before the load"
        assert torch.equal(bits(t[9]), bits(t[1]))


def test_bad_input_is_an_error(tmp_path):
    ts = layers("flash_attn", 16, torch.bfloat16)
    kv = tierkv.gpu_kv(ts, N)
    ns = namespace(torch.bfloat16, 16, "flash_attn")
    s = store(tmp_path, kv.block_bytes, False)
    with pytest.raises(tierkv.TierkvError, match="outside"):
        s.save_gpu(ns, kv, [(1, N)])
    with pytest.raises(tierkv.TierkvError, match="outside"):
        s.load_gpu(ns, kv, [(1, N + 5)])
    with pytest.raises(tierkv.TierkvError, match="block of"):
        s.save_gpu(namespace(torch.bfloat16, 128, "flash_attn"), kv, [(1, 0)])
    with pytest.raises(tierkv.TierkvError, match="CUDA device"):
        tierkv.gpu_kv([torch.zeros(2, N, 16, H, D)], N)
    with pytest.raises(tierkv.TierkvError, match="not device memory"):
        tierkv._tierkv.GpuKv(0, [(0x1000, 4096), (0x2000, 4096)], 1024, 4, None)
    # Pieces that run past the tensor's allocation.
    t = ts[0]
    piece = t[0, 0].numel() * t.element_size()
    with pytest.raises(tierkv.TierkvError, match="past their allocation"):
        tierkv._tierkv.GpuKv(0, [(t.data_ptr(), piece), (t.data_ptr() + 16, piece)], piece, 10 * N, ts)
    with pytest.raises(tierkv.TierkvError, match="multiples of 16"):
        tierkv._tierkv.GpuKv(0, [(t.data_ptr() + 8, piece), (t.data_ptr() + 64, piece)], piece, 2, ts)
    assert s.stats()["io"]["saved_blocks"] == 0


@pytest.mark.parametrize("layout", ["flash_attn", "flashinfer", "cross_layer"])
@pytest.mark.parametrize("block", [16, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn], ids=["bf16", "fp8"])
def test_a_layer_wise_save_copies_each_layer_as_written_and_never_blocks(tmp_path, layout, block, dtype):
    ts = layers(layout, block, dtype)
    kv = tierkv.gpu_kv(ts, N)
    ns = namespace(dtype, block, layout)
    s = store(tmp_path, kv.block_bytes, False)
    want = [block_bytes_of(ts, layout, b) for b in SAVED]
    hashes = [2000 + i for i in range(len(SAVED))]
    stream = torch.cuda.current_stream()
    job = s.begin_save_gpu(ns, kv, list(zip(hashes, SAVED)))
    assert job is not None and job.layers == L
    # The "forward": each layer first computes a while, then writes its K/V, then the
    # layer's copy is queued; the host never waits for the GPU meanwhile.
    scratch = [t.clone() for t in ts]
    clear(ts)
    for layer, t in enumerate(ts):
        torch.cuda._sleep(20_000_000)
        t.view(torch.uint8).copy_(scratch[layer].view(torch.uint8))
        job.layer(layer, stream.cuda_stream)
    assert job.finish(stream.cuda_stream) == len(SAVED)
    assert not stream.query(), "the host did not wait for the forward pass"
    # The next step overwrites the saved blocks on the same stream right away: the
    # stream waited (on the GPU) until they were read, so the copies are intact.
    for t in ts:
        t.view(torch.uint8).fill_(0xAB)
    assert s.flush(timeout_s=60)
    clear(ts)
    assert s.load_gpu(ns, kv, list(zip(hashes, INTO)), stream.cuda_stream) == len(SAVED)
    torch.cuda.synchronize()
    for b, w in zip(INTO, want):
        assert block_bytes_of(ts, layout, b) == w, (layout, b)
    with pytest.raises(tierkv.TierkvError, match="finished"):
        job.layer(0, stream.cuda_stream)


def test_a_layer_wise_save_left_unfinished_saves_nothing_and_frees_its_lane(tmp_path):
    ts = layers("flash_attn", 16, torch.bfloat16)
    kv = tierkv.gpu_kv(ts, N)
    ns = namespace(torch.bfloat16, 16, "flash_attn")
    s = store(tmp_path, kv.block_bytes, False)
    stream = torch.cuda.current_stream().cuda_stream
    for round_ in range(3):  # more jobs than lanes: each dropped job released its own
        job = s.begin_save_gpu(ns, kv, [(3000 + round_, 1)])
        job.layer(0, stream)
        with pytest.raises(tierkv.TierkvError, match="layer 9 of 3"):
            job.layer(9, stream)
        del job
    assert s.flush(timeout_s=60)
    assert s.load_gpu(ns, kv, [(3000, 2)], stream) == 0, "an unfinished save stored nothing"
    assert s.stats()["io"]["saved_blocks"] == 0
    # Too many blocks for the layer-wise staging, or a layout of one run per block:
    # no layer-wise job (the caller saves at the end of the step).
    cross = tierkv._tierkv.GpuKv(0, [(ts[0].data_ptr(), 1 << 14)], 1 << 14, 4, ts)
    assert s.begin_save_gpu(tierkv.Namespace("one-run", 1, 1, 1024, "bf16", 4), cross, [(1, 0)]) is None
