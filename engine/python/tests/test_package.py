"""The `tierkv` Python package without vLLM: hashes as the Rust side computes them (checked
against an independent XXH3 implementation), an embedded store with host, disk and
object tiers, copies to and from registered memory, background saves, a corrupt block,
restarts, and a `tierkv serve` sidecar."""

from __future__ import annotations

import ctypes
import os
import threading

import pytest
import xxhash

import tierkv

LAYERS, HEADS, DIM, BLOCK = 2, 2, 8, 4
BLOCK_BYTES = 2 * LAYERS * HEADS * DIM * BLOCK * 2  # f16


def ns(**kw) -> tierkv.Namespace:
    return tierkv.Namespace("m", LAYERS, HEADS, DIM, "f16", BLOCK, **kw)


def store_config(root, disk=True, object_dir=True, host="1MiB") -> dict:
    tier = [{"kind": "host", "capacity": host}]
    if disk:
        tier.append({"kind": "disk", "capacity": "1MiB", "write_through": True})
    if object_dir:
        tier.append({"kind": "object", "capacity": "4MiB", "local_dir": "object", "write_through": True})
    return {"data_dir": str(root), "slot_bytes": "4KiB", "tier": tier}


def payload(i: int) -> bytes:
    return bytes((i * 31 + j) % 251 for j in range(BLOCK_BYTES))


def test_hash_chain_matches_an_independent_xxh3():
    n = ns(tp_rank=1, tp_size=2, engine_layout="CPU_ATTN/vec")
    assert n.name == "m@L2xH2xD8xf16xB4@tp1of2@CPU_ATTN/vec"
    assert n.seed == xxhash.xxh3_128_intdigest(n.name.encode())
    assert n.id == xxhash.xxh3_64_intdigest(n.name.encode()) == tierkv.namespace_id(n.name)
    tokens = list(range(100, 111))  # 2 full blocks and a partial one
    want, prev = [], n.seed
    for i in range(len(tokens) // BLOCK):
        data = prev.to_bytes(16, "little") + b"".join(t.to_bytes(4, "little") for t in tokens[i * BLOCK : (i + 1) * BLOCK])
        prev = xxhash.xxh3_128_intdigest(data)
        want.append(prev)
    assert n.hash_blocks(tokens) == want
    assert n.hash_next(None, tokens[:4]) == want[0]
    assert n.hash_next(want[0], tokens[4:8]) == want[1]
    with pytest.raises(tierkv.TierkvError, match="one full block"):
        n.hash_next(None, tokens[:3])


def test_every_part_of_the_namespace_separates_chains():
    tokens = list(range(8))
    base = ns().hash_blocks(tokens)
    others = [
        ns(tp_rank=0, tp_size=2),
        ns(engine_layout="CPU_ATTN/amx"),
        ns(cache_salt="a"),
        ns().salted("b"),
        tierkv.Namespace("m", LAYERS, HEADS, DIM, "bf16", BLOCK),
        tierkv.Namespace("m2", LAYERS, HEADS, DIM, "f16", BLOCK),
    ]
    for o in others:
        assert o.hash_blocks(tokens)[0] != base[0], o.name
    assert "a" not in ns(cache_salt="a").name.split("@salt")[0][-1:], "salt itself never in the name"
    with pytest.raises(tierkv.TierkvError, match="dtype"):
        tierkv.Namespace("m", 1, 1, 1, "int3", 4)
    with pytest.raises(tierkv.TierkvError, match="rank"):
        ns(tp_rank=2, tp_size=2)


def test_embedded_store_put_get_lookup_and_stats(tmp_path):
    store = tierkv.open_store(store_config(tmp_path))
    n = ns()
    hashes = n.hash_blocks(list(range(4 * BLOCK)))
    assert store.put(n, hashes[0], payload(0)) is True
    assert store.put(n, hashes[0], payload(0)) is False, "content-addressed: already there"
    assert store.put_many(n, [(hashes[1], payload(1)), (hashes[2], bytearray(payload(2)))]) == 2
    assert store.get(n, hashes[1]) == payload(1)
    assert store.get(n, hashes[3]) is None
    assert store.get_many(n, hashes) == [payload(0), payload(1), payload(2), None]
    assert store.lookup(n, hashes) == 3
    assert store.contains(n, hashes[2]) and not store.contains(n, hashes[3])
    assert store.lookup(n.salted("x"), hashes) == 0
    with pytest.raises(tierkv.TierkvError, match=f"needs exactly {BLOCK_BYTES}|has {BLOCK_BYTES}"):
        store.put(n, hashes[3], b"short")
    stats = store.stats()
    assert [t["name"] for t in stats["tiers"]] == ["host", "disk", "object"]
    assert stats["blocks"] == 3
    assert stats["tiers"][0]["hits"] >= 3


def test_bad_config_is_a_clear_error(tmp_path):
    with pytest.raises(tierkv.TierkvError, match="capacityy|unknown field"):
        tierkv.open_store({"data_dir": str(tmp_path), "tier": [{"kind": "host", "capacityy": "1MiB"}]})
    with pytest.raises(tierkv.TierkvError, match="config file"):
        tierkv.open_store(tmp_path / "missing.toml")


def test_copies_to_and_from_registered_memory(tmp_path):
    store = tierkv.open_store(store_config(tmp_path, disk=False, object_dir=False))
    n = ns()
    h = n.hash_blocks(list(range(3 * BLOCK)))
    arena = (ctypes.c_ubyte * (8 * BLOCK_BYTES))()
    base = ctypes.addressof(arena)
    for i in range(4 * BLOCK_BYTES):
        arena[i] = (i * 7) % 256
    # Unregistered memory is refused, never read.
    with pytest.raises(tierkv.TierkvError, match="not inside a registered region"):
        store.put_from(n, h[0], [(base, BLOCK_BYTES)])
    tierkv.register_memory(base, len(arena))
    try:
        with pytest.raises(tierkv.TierkvError, match="overlaps"):
            tierkv.register_memory(base + 16, 64)
        # A block scattered in two pieces, as a backend with separate K and V runs.
        half = BLOCK_BYTES // 2
        pieces = [(base + 3 * half, half), (base, half)]
        assert store.put_from(n, h[0], pieces)
        expect = bytes(arena[3 * half : 4 * half]) + bytes(arena[0:half])
        assert store.get(n, h[0]) == expect
        with pytest.raises(tierkv.TierkvError, match="ranges cover"):
            store.put_from(n, h[1], [(base, BLOCK_BYTES - 2)])
        with pytest.raises(tierkv.TierkvError, match="not inside"):
            store.put_from(n, h[1], [(base + 8 * BLOCK_BYTES - 8, BLOCK_BYTES)])
        # Background saves copy at once; the memory can change right after.
        assert store.save(n, [(h[1], [(base + BLOCK_BYTES, BLOCK_BYTES)]), (h[2], [(base + 2 * BLOCK_BYTES, BLOCK_BYTES)])]) == 2
        saved = bytes(arena[BLOCK_BYTES : 3 * BLOCK_BYTES])
        ctypes.memset(base + BLOCK_BYTES, 0, 2 * BLOCK_BYTES)
        assert store.flush(timeout_s=10)
        assert store.get(n, h[1]) + store.get(n, h[2]) == saved
        # Loads go into memory in chain order and stop at the first missing block.
        dst = [(base + (4 + i) * BLOCK_BYTES, BLOCK_BYTES) for i in range(3)]
        missing = n.hash_next(h[2], list(range(4)))
        loaded = store.load(n, [(h[1], [dst[0]]), (missing, [dst[1]]), (h[2], [dst[2]])])
        assert loaded == 1
        assert bytes(arena[4 * BLOCK_BYTES : 5 * BLOCK_BYTES]) == saved[:BLOCK_BYTES]
        assert bytes(arena[6 * BLOCK_BYTES : 7 * BLOCK_BYTES]) == bytes(BLOCK_BYTES), "nothing after the miss"
        assert store.get_into(n, h[2], [dst[2]])
        io = store.stats()["io"]
        assert io["saved_blocks"] == 2 and io["loaded_blocks"] == 2 and io["load_failed"] == 2
    finally:
        assert tierkv.unregister_memory(base)
    with pytest.raises(tierkv.TierkvError, match="not inside"):
        store.get_into(n, h[2], [(base, BLOCK_BYTES)])


def test_a_full_save_queue_skips_and_counts(tmp_path):
    store = tierkv.open_store(store_config(tmp_path, disk=False, object_dir=False), save_queue_bytes=BLOCK_BYTES)
    n = ns()
    buf = (ctypes.c_ubyte * (64 * BLOCK_BYTES))()
    base = ctypes.addressof(buf)
    tierkv.register_memory(base, len(buf))
    try:
        hashes = n.hash_blocks(list(range(64 * BLOCK)))
        queued = sum(store.save(n, [(h, [(base + i * BLOCK_BYTES, BLOCK_BYTES)])]) for i, h in enumerate(hashes))
        assert store.flush(timeout_s=10)
        io = store.stats()["io"]
        assert queued + io["save_skipped"] == 64
        assert io["saved_blocks"] == queued >= 1
    finally:
        tierkv.unregister_memory(base)


def test_blocks_survive_a_restart_and_a_corrupt_block_is_never_returned(tmp_path):
    n = ns()
    hashes = n.hash_blocks(list(range(3 * BLOCK)))
    store = tierkv.open_store(store_config(tmp_path, object_dir=False))
    store.put_many(n, [(h, payload(i)) for i, h in enumerate(hashes)])
    store.close()
    del store
    # Flip a payload byte of block 1 on disk.
    data = tmp_path / "disk" / "blocks.dat"
    raw = bytearray(data.read_bytes())
    at = raw.find(hashes[1].to_bytes(16, "little"))
    if at < 0:
        at = raw.find(hashes[1].to_bytes(16, "big"))
    assert at >= 0
    slot = at - at % 4096
    raw[slot + 64 + 5] ^= 0xFF
    data.write_bytes(bytes(raw))
    store = tierkv.open_store(store_config(tmp_path, object_dir=False))
    assert store.get(n, hashes[0]) == payload(0)
    assert store.get(n, hashes[1]) is None, "a corrupt block is a miss"
    assert store.get(n, hashes[2]) == payload(2)
    disk = next(t for t in store.stats()["tiers"] if t["name"] == "disk")
    assert disk["corrupt_blocks"] == 1


def test_sidecar_client_publish_fetch_lookup(sidecar):
    a, b = tierkv.connect(sidecar.addr), tierkv.connect(sidecar.addr)
    assert a.kind == "sidecar"
    n = ns()
    hashes = n.hash_blocks(list(range(3 * BLOCK)))
    assert a.put_many(n, [(h, payload(i)) for i, h in enumerate(hashes[:2])]) == 2
    assert b.lookup(n, hashes) == 2
    assert b.get_many(n, hashes) == [payload(0), payload(1), None]
    with pytest.raises(tierkv.TierkvError, match="serve"):
        a.serve()
    assert b.stats()["blocks"] == 2


def test_an_embedded_store_serves_other_processes(tmp_path):
    store = tierkv.open_store(store_config(tmp_path, disk=False, object_dir=False))
    n = ns()
    h = n.hash_blocks(list(range(BLOCK)))[0]
    store.put(n, h, payload(7))
    with pytest.raises(tierkv.TierkvError, match="at least 8 characters"):
        store.serve("127.0.0.1:0", token="short")
    addr = store.serve("127.0.0.1:0", token="s3cret-token")
    with pytest.raises(tierkv.TierkvError, match="Unauthenticated|PermissionDenied|token"):
        tierkv.connect(addr, token="wrong", retries=0).lookup(n, [h])
    client = tierkv.connect(addr, token="s3cret-token")
    assert client.lookup(n, [h]) == 1
    assert client.get(n, h) == payload(7)
    store.close()


def test_unreachable_sidecar_is_an_error_not_a_crash():
    client = tierkv.connect("127.0.0.1:1", timeout_s=1.0, retries=0)
    with pytest.raises(tierkv.TierkvError, match="127.0.0.1:1|transport|connect|Unavailable"):
        client.lookup(ns(), [1])


def test_io_releases_the_gil(tmp_path):
    """A Python thread keeps running while another waits on a sidecar that never answers."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts TCP connections, never speaks HTTP/2
    client = tierkv.connect(f"127.0.0.1:{silent.getsockname()[1]}", timeout_s=2.0, retries=0)
    ticks = []
    stop = threading.Event()

    def ticker():
        while not stop.is_set():
            ticks.append(1)
            stop.wait(0.01)

    t = threading.Thread(target=ticker)
    t.start()
    with pytest.raises(tierkv.TierkvError):
        client.lookup(ns(), [1])
    stop.set()
    t.join()
    silent.close()
    assert len(ticks) >= 20, "the ticker ran while lookup waited"
