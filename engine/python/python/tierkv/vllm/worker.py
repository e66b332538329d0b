"""The worker side of TierkvConnector (in each vLLM worker process): learns the KV
layout from ``register_kv_caches``, opens the store (embedded, serving its lookups to the
scheduler) or connects to the sidecar, loads planned blocks whole before the forward
pass, and saves completed blocks without stalling it (their bytes are copied out at
the end of the step — on a GPU, layer by layer while the forward pass runs — and
stored in the background).

A KV cache on the CPU is copied through registered memory ranges; one on a GPU through
the transfer engine (``Store.save_gpu`` / ``load_gpu``: gather/scatter kernels into the
pinned host tier), ordered after the work queued on the forward pass's stream."""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import tierkv

from . import rendezvous
from .config import ConnectorConfig
from ..layout import BlockMap, block_map
from .metadata import TierkvMetadata

# A child of vLLM's logger: its handler, format and level (VLLM_LOGGING_LEVEL).
logger = logging.getLogger("vllm.tierkv")

_STORE_IO_KEYS = (
    "saved_blocks",
    "saved_bytes",
    "save_skipped",
    "save_failed",
    "save_seconds",
    "loaded_blocks",
    "loaded_bytes",
    "load_failed",
    "load_seconds",
)
_IO_KEYS = (*_STORE_IO_KEYS, "peer_loaded_blocks", "peer_load_failed", "peer_load_seconds")


class WorkerSide:
    def __init__(self, cfg: ConnectorConfig, vllm_config: Any, engine_id: str, tp_rank: int, role: str = "kv_both"):
        self.cfg = cfg
        self.role = role
        #: Loads from prefill workers in flight: request id -> (its future, block ids).
        self._peer_loads: dict[str, tuple[Future, list[int]]] = {}
        self._peer_pool: ThreadPoolExecutor | None = None
        self._peers: dict[str, tierkv.Store] = {}
        self._peers_lock = threading.Lock()
        #: Blocks loaded from prefill workers, and loads of them that failed.
        self.peer_loaded_blocks = 0
        self.peer_load_failed = 0
        #: Seconds the finished loads from prefill workers took (fetch and copy).
        self.peer_load_seconds = 0.0
        self.vllm_config = vllm_config
        self.engine_id = engine_id
        self.tp_rank = tp_rank
        self.store: tierkv.Store | None = None
        self.namespace: tierkv.Namespace | None = None
        self.blocks: BlockMap | None = None
        self._salted: dict[str, tierkv.Namespace] = {}
        self._regions: list[int] = []
        #: The KV cache as the GPU transfer engine sees it, when it is on a GPU.
        self.gpu_kv: Any = None
        #: Layer name -> its index in a block (the order of ``kv_caches``).
        self._layer_index: dict[str, int] = {}
        #: This step's layer-wise GPU saves: its metadata, and per save its job (or
        #: None: saved whole at the end of the step).
        self._layered_meta: TierkvMetadata | None = None
        self._layered: list[tuple[Any, Any]] = []
        self._layered_stream = 0
        #: Layers written since the last copy was queued (see `save_layers_per_copy`).
        self._layered_pending: list[int] = []
        self._invalid: set[int] = set()
        self._reported: dict[str, Any] = {}
        self._reported_at = 0.0
        #: A load or save ran since the last report.
        self._active = False
        self._rendezvous_file: str | None = None

    # -- set-up ----------------------------------------------------------------------

    def register_kv_caches(self, kv_caches: dict[str, Any], num_blocks: int) -> None:
        vc = self.vllm_config
        model, cache, parallel = vc.model_config, vc.cache_config, vc.parallel_config
        self.blocks = block_map(kv_caches, num_blocks)
        first = next(iter(kv_caches.values()))
        engine_layout = f"{_backend_name(vc, next(iter(kv_caches)))}/{_packing(first, cache, model)}/{self.blocks.signature}"
        info = dict(
            model_id=self.cfg.model_id or model.model,
            num_layers=len(kv_caches),
            num_kv_heads=model.get_num_kv_heads(parallel),
            head_dim=model.get_head_size(),
            dtype=str(first.dtype).removeprefix("torch."),
            block_size=cache.block_size,
            tp_rank=self.tp_rank,
            tp_size=parallel.tensor_parallel_size,
            engine_layout=engine_layout,
        )
        self.namespace = tierkv.Namespace(**info)
        if self.namespace.block_bytes != self.blocks.block_bytes:
            raise ValueError(
                f"TierkvConnector: a block of {self.namespace.name} has "
                f"{self.namespace.block_bytes} bytes, but the KV cache tensors hold "
                f"{self.blocks.block_bytes} per block (layout {self.blocks.signature})"
            )
        self._layer_index = {name: i for i, name in enumerate(kv_caches)}
        if first.device.type == "cuda":
            self.gpu_kv = tierkv.gpu_kv(kv_caches, num_blocks)
        elif first.device.type != "cpu":
            raise ValueError(f"TierkvConnector copies KV caches on the CPU or a CUDA GPU, not on {first.device}")
        else:
            seen = set()
            for t in kv_caches.values():
                storage = t.untyped_storage()
                if storage.data_ptr() in seen:
                    continue
                seen.add(storage.data_ptr())
                tierkv.register_memory(storage.data_ptr(), storage.nbytes())
                self._regions.append(storage.data_ptr())
        if self.cfg.sidecar:
            self.store = tierkv.connect(
                self.cfg.sidecar,
                token=self.cfg.token,
                timeout_s=self.cfg.timeout_s,
                save_queue_bytes=self.cfg.save_queue_bytes,
            )
            addr, token = self.cfg.sidecar, self.cfg.token
        else:
            tp_size = parallel.tensor_parallel_size
            self.store = tierkv.open_store(
                self.cfg.config,
                min_slot_bytes=self.blocks.block_bytes,
                save_queue_bytes=self.cfg.save_queue_bytes,
                # Each rank keeps its own store (its own slice of every block).
                data_subdir=f"tp{self.tp_rank}" if tp_size > 1 else None,
            )
            # The scheduler (another process) asks this store's block service, with a
            # token only the rendezvous file (mode 0600) carries; decode workers of a
            # disaggregated cluster fetch from it with the cluster's `token` (a prefill
            # worker given none serves its blocks to anyone who reaches `serve_addr`).
            if self.cfg.token is not None:
                token = self.cfg.token
            else:
                token = None if self.role == "kv_producer" else secrets.token_hex(16)
            addr = self.store.serve(self.cfg.serve_addr, token=token)
        self._rendezvous_file = rendezvous.path(self.cfg.rendezvous_dir, self.engine_id, self.tp_rank)
        rendezvous.publish(
            self._rendezvous_file,
            # `namespace_name`: what a tierkv frontend hashes this worker's prompts in
            # (`tierkv register` reads it from here).
            {"namespace": info, "namespace_name": self.namespace.name, "addr": addr, "token": token, "pid": os.getpid()},
        )
        self._reported = self._snapshot()
        logger.info(
            "TierkvConnector worker: %s store, namespace %s, %d blocks of %d bytes, lookups at %s",
            self.store.kind,
            self.namespace.name,
            num_blocks,
            self.blocks.block_bytes,
            addr,
        )

    def _ns(self, salt: str | None) -> tierkv.Namespace:
        assert self.namespace is not None
        if salt is None:
            return self.namespace
        ns = self._salted.get(salt)
        if ns is None:
            ns = self._salted[salt] = self.namespace.salted(salt)
        return ns

    # -- per step --------------------------------------------------------------------

    def _blocks(self, t: Any) -> list[tuple[int, list[tuple[int, int]]]]:
        """``(hash, ranges)`` of a transfer's blocks in this rank's namespace."""
        assert self.blocks is not None
        return [(h, self.blocks.ranges(b)) for h, b in zip(t.hashes[self.tp_rank], t.block_ids)]

    def _load(self, store: tierkv.Store, t: Any, stream: int | None = None) -> int:
        """Loads a transfer's leading blocks from `store` into the KV cache; how many."""
        ns = self._ns(t.cache_salt)
        if self.gpu_kv is None:
            return store.load(ns, self._blocks(t))
        blocks = list(zip(t.hashes[self.tp_rank], t.block_ids))
        return store.load_gpu(ns, self.gpu_kv, blocks, _current_stream() if stream is None else stream)

    def _save(self, t: Any) -> None:
        assert self.store is not None
        ns = self._ns(t.cache_salt)
        if self.gpu_kv is None:
            self.store.save(ns, self._blocks(t))
        else:
            blocks = list(zip(t.hashes[self.tp_rank], t.block_ids))
            self.store.save_gpu(ns, self.gpu_kv, blocks, _current_stream())

    def start_load_kv(self, meta: TierkvMetadata) -> None:
        if self.store is None or self.blocks is None:
            return
        for t in meta.loads:
            self._active = True
            if t.peer_addrs is not None:
                self._start_peer_load(t)
                continue
            blocks = t.block_ids
            try:
                loaded = self._load(self.store, t)
            except tierkv.TierkvError as e:
                logger.warning("TierkvConnector: load of %s failed: %s", t.req_id, e)
                loaded = 0
            if loaded < len(blocks):
                # vLLM recomputes from the first block that could not be loaded.
                self._invalid.update(t.block_ids[loaded:])
                logger.warning(
                    "TierkvConnector: %s: loaded %d of %d blocks; the rest is recomputed",
                    t.req_id,
                    loaded,
                    len(blocks),
                )

    def save_kv_layer(self, meta: TierkvMetadata, layer_name: str) -> None:
        """On a GPU, right after layer `layer_name` wrote its K/V in the forward pass:
        queue the copy of that layer of every block this step saves, without waiting
        (it runs on the transfer engine's stream while the next layers compute)."""
        if self.gpu_kv is None or self.store is None or not meta.saves:
            return
        if self._layered_meta is not meta:
            self._begin_layered(meta)
        layer = self._layer_index.get(layer_name)
        if layer is None:
            return
        self._layered_pending.append(layer)
        if len(self._layered_pending) < self.cfg.save_layers_per_copy and layer + 1 < len(self._layer_index):
            return
        pending, self._layered_pending = self._layered_pending, []
        stream = self._layered_stream
        for i, (t, job) in enumerate(self._layered):
            if job is None:
                continue
            try:
                for p in pending:
                    job.layer(p, stream)
            except tierkv.TierkvError as e:
                # Dropping the job waits for what it queued; the blocks are saved
                # whole at the end of the step instead.
                logger.warning("TierkvConnector: layer-wise save of %s: %s", t.req_id, e)
                self._layered[i] = (t, None)

    def _begin_layered(self, meta: TierkvMetadata) -> None:
        assert self.store is not None
        self._layered_meta, self._layered, self._layered_pending = meta, [], []
        self._layered_stream = _current_stream()
        for t in meta.saves:
            job = None
            try:
                blocks = list(zip(t.hashes[self.tp_rank], t.block_ids))
                job = self.store.begin_save_gpu(self._ns(t.cache_salt), self.gpu_kv, blocks)
            except tierkv.TierkvError as e:
                logger.warning("TierkvConnector: layer-wise save of %s: %s", t.req_id, e)
            self._layered.append((t, job))

    def wait_for_save(self, meta: TierkvMetadata) -> None:
        if self.store is None or self.blocks is None:
            return
        layered = self._layered if self._layered_meta is meta else []
        self._layered_meta, self._layered = None, []
        if layered:
            stream = _current_stream()
        for t, job in layered or [(t, None) for t in meta.saves]:
            self._active = True
            try:
                if job is not None:
                    # Queues the last copies and returns; the forward's stream waits on
                    # the GPU only until the blocks have been read.
                    job.finish(stream)
                else:
                    # Copies the bytes out now; the store writes them in the background.
                    self._save(t)
            except tierkv.TierkvError as e:
                logger.warning("TierkvConnector: save of %s failed: %s", t.req_id, e)

    # -- loads from prefill workers (disaggregated serving) ---------------------------

    def _peer(self, addr: str) -> tierkv.Store:
        with self._peers_lock:
            client = self._peers.get(addr)
            if client is None:
                client = self._peers[addr] = tierkv.connect(addr, token=self.cfg.token, timeout_s=self.cfg.timeout_s)
            return client

    def _start_peer_load(self, t: Any) -> None:
        """Fetches a request's blocks from the prefill worker of this rank into the KV
        cache in the background; `finished_peer_loads` reports it done."""
        if self._peer_pool is None:
            self._peer_pool = ThreadPoolExecutor(
                max_workers=4, thread_name_prefix="tierkv-peer-load", initializer=_run_on_every_core
            )
        addr = t.peer_addrs[self.tp_rank]
        # On a GPU the copy is ordered after everything queued on the legacy default
        # stream (blocks that were just freed may still be read by the last step).
        def load() -> tuple[int, float]:
            t0 = time.perf_counter()
            return self._load(self._peer(addr), t, stream=0), time.perf_counter() - t0

        future = self._peer_pool.submit(load)
        self._peer_loads[t.req_id] = (future, list(t.block_ids))

    def finished_peer_loads(self) -> set[str]:
        """Requests whose load from a prefill worker ended; blocks it could not load
        are reported invalid (recomputed by vLLM) in the same step."""
        done = set()
        for req_id, (future, block_ids) in list(self._peer_loads.items()):
            if not future.done():
                continue
            del self._peer_loads[req_id]
            done.add(req_id)
            self._active = True
            try:
                loaded, seconds = future.result()
                self.peer_load_seconds += seconds
            except (tierkv.TierkvError, OSError, ValueError) as e:
                logger.warning("TierkvConnector: load of %s from the prefill worker failed: %s", req_id, e)
                loaded = 0
            self.peer_loaded_blocks += loaded
            if loaded < len(block_ids):
                self.peer_load_failed += len(block_ids) - loaded
                self._invalid.update(block_ids[loaded:])
                logger.warning(
                    "TierkvConnector: %s: loaded %d of %d blocks from the prefill worker; the rest is recomputed",
                    req_id,
                    loaded,
                    len(block_ids),
                )
        return done

    def take_invalid_blocks(self) -> set[int]:
        invalid, self._invalid = self._invalid, set()
        return invalid

    # -- statistics ------------------------------------------------------------------

    def _snapshot(self) -> dict[str, Any]:
        if self.store is None:
            return {}
        s = self.store.stats()
        snap: dict[str, Any] = {k: s["io"][k] for k in _STORE_IO_KEYS}
        snap["peer_loaded_blocks"] = self.peer_loaded_blocks
        snap["peer_load_failed"] = self.peer_load_failed
        snap["peer_load_seconds"] = self.peer_load_seconds
        snap["tier_hits"] = {t["name"]: t["hits"] for t in s["tiers"]}
        return snap

    #: Seconds between two reads of the store's figures in steps without loads or saves
    #: (vLLM asks every step; background saves finish after their step).
    STATS_INTERVAL_S = 1.0

    def stats_delta(self) -> dict[str, Any] | None:
        """What moved since the last report, or ``None`` if nothing did."""
        if self.store is None:
            return None
        if not self._active and time.monotonic() - self._reported_at < self.STATS_INTERVAL_S:
            return None
        self._active = False
        self._reported_at = time.monotonic()
        now = self._snapshot()
        prev, self._reported = self._reported, now
        delta: dict[str, Any] = {k: now[k] - prev.get(k, 0) for k in _IO_KEYS}
        hits = {
            tier: n - prev.get("tier_hits", {}).get(tier, 0) for tier, n in now["tier_hits"].items()
        }
        delta["tier_hits"] = {t: n for t, n in hits.items() if n}
        if not any(delta[k] for k in _IO_KEYS) and not delta["tier_hits"]:
            return None
        return delta

    def shutdown(self) -> None:
        if self._peer_pool is not None:
            self._peer_pool.shutdown(wait=True, cancel_futures=True)
        for client in self._peers.values():
            try:
                client.close()
            except tierkv.TierkvError:
                pass
        if self.store is not None:
            try:
                self.store.flush(timeout_s=30.0)
                self.store.close()
            except tierkv.TierkvError as e:
                logger.warning("TierkvConnector: shutdown: %s", e)
        if self._rendezvous_file:
            rendezvous.remove(self._rendezvous_file)
        for addr in self._regions:
            tierkv.unregister_memory(addr)
        self._regions.clear()


def _run_on_every_core() -> None:
    """vLLM's CPU backend binds its main thread to one core and threads started from it
    inherit that core, where they starve behind the engine's busy threads: let this one
    (a load thread) run anywhere."""
    if hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, range(os.cpu_count() or 1))
        except OSError:
            pass


def _current_stream() -> int:
    """The raw handle of torch's current CUDA stream (the forward pass's)."""
    import torch

    return torch.cuda.current_stream().cuda_stream


def _backend_name(vllm_config: Any, layer_name: str) -> str:
    try:
        layer = vllm_config.compilation_config.static_forward_context[layer_name]
        return layer.get_attn_backend().get_name()
    except (KeyError, AttributeError):
        return "unknown"


def _packing(tensor: Any, cache: Any, model: Any) -> str:
    """The CPU backend packs K and V inside a block per instruction set."""
    if tensor.device.type != "cpu":
        return tensor.device.type
    try:
        from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

        return _get_attn_isa(tensor.dtype, cache.block_size, model.get_head_size(), cache.cache_dtype)
    except (ImportError, TypeError):
        return "cpu"
