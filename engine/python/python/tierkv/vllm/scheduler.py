"""The scheduler side of TierkvConnector (in vLLM's EngineCore process): hashes each
request's full blocks into tierkv's chain, answers "how many tokens can be loaded" from
a lookup (no payload I/O), and plans the loads and saves of every step."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import tierkv

from . import rendezvous
from .config import ConnectorConfig
from .metadata import BlockTransfer, TierkvMetadata

# A child of vLLM's logger: its handler, format and level (VLLM_LOGGING_LEVEL).
logger = logging.getLogger("vllm.tierkv")


@dataclass
class _Request:
    request: Any
    #: vLLM block ids of the request (KV cache group 0).
    block_ids: list[int] = field(default_factory=list)
    #: Hashes of the request's full blocks so far, per rank.
    hashes: list[list[int]] = field(default_factory=list)
    #: Leading blocks known to be in the store (found by lookup or saved).
    stored: int = 0
    #: Blocks vLLM already had (its own prefix cache) when the load was planned.
    local_blocks: int = 0
    #: Blocks to load before the next forward pass: ``[start, end)``.
    load: tuple[int, int] | None = None


class SchedulerSide:
    def __init__(self, cfg: ConnectorConfig, block_size: int, engine_id: str, tp_size: int):
        self.cfg = cfg
        self.block_size = block_size
        self.engine_id = engine_id
        self.tp_size = tp_size
        self.requests: dict[str, _Request] = {}
        self._namespaces: list[tierkv.Namespace] | None = None
        self._salted: dict[tuple[int, str], tierkv.Namespace] = {}
        self._lookups: list[tierkv.Store] = []
        self._events: list[Any] = []
        #: Lookups asked and tokens they found (reported in the log at shutdown).
        self.lookup_tokens = 0
        self.hit_tokens = 0

    # -- namespaces and lookups, learned from the workers ------------------------------

    def _connect(self) -> None:
        if self._namespaces is not None:
            return
        namespaces, lookups = [], []
        for rank in range(self.tp_size):
            info = rendezvous.wait_for(
                rendezvous.path(self.cfg.rendezvous_dir, self.engine_id, rank),
                self.cfg.rendezvous_timeout_s,
            )
            namespaces.append(tierkv.Namespace(**info["namespace"]))
            lookups.append(tierkv.connect(info["addr"], token=info.get("token"), timeout_s=self.cfg.timeout_s))
        self._namespaces, self._lookups = namespaces, lookups
        logger.info(
            "TierkvConnector scheduler: %s mode, namespace %s",
            self.cfg.mode,
            namespaces[0].name,
        )

    def namespace(self, rank: int, salt: str | None) -> tierkv.Namespace:
        assert self._namespaces is not None
        base = self._namespaces[rank]
        if salt is None:
            return base
        key = (rank, salt)
        ns = self._salted.get(key)
        if ns is None:
            ns = self._salted[key] = base.salted(salt)
        return ns

    def _extend_hashes(self, state: _Request, tokens: list[int], upto_blocks: int) -> None:
        """Extends the request's chains to ``upto_blocks`` full blocks of ``tokens``."""
        b = self.block_size
        salt = getattr(state.request, "cache_salt", None)
        if not state.hashes:
            state.hashes = [[] for _ in range(self.tp_size)]
        for rank, chain in enumerate(state.hashes):
            ns = self.namespace(rank, salt)
            while len(chain) < upto_blocks:
                i = len(chain)
                chain.append(ns.hash_next(chain[-1] if chain else None, tokens[i * b : (i + 1) * b]))

    # -- vLLM's scheduler hooks ----------------------------------------------------------

    def get_num_new_matched_tokens(self, request: Any, num_computed_tokens: int) -> tuple[int, bool]:
        b = self.block_size
        tokens = list(request.prompt_token_ids or [])
        full = len(tokens) // b
        state = self.requests.get(request.request_id)
        if state is None:
            state = self.requests[request.request_id] = _Request(request)
        state.load = None
        if full == 0:
            return 0, False
        try:
            self._connect()
            self._extend_hashes(state, tokens, full)
            salt = getattr(request, "cache_salt", None)
            hit = min(
                store.lookup(self.namespace(rank, salt), state.hashes[rank][:full])
                for rank, store in enumerate(self._lookups)
            )
        except (tierkv.TierkvError, TimeoutError, OSError) as e:
            logger.warning("TierkvConnector: lookup failed, computing the prompt: %s", e)
            return 0, False
        state.stored = max(state.stored, hit)
        self.lookup_tokens += full * b
        if not self.cfg.load:
            return 0, False
        # vLLM computes at least the prompt's last token itself.
        loadable = min(hit, (len(tokens) - 1) // b)
        local = num_computed_tokens // b
        if loadable <= local:
            return 0, False
        state.local_blocks = local
        state.load = (local, loadable)
        self.hit_tokens += (loadable - local) * b
        return (loadable - local) * b - (num_computed_tokens - local * b), False

    def update_state_after_alloc(self, request: Any, blocks: Any, num_external_tokens: int) -> None:
        state = self.requests.get(request.request_id)
        if state is None:
            return
        if num_external_tokens == 0:
            state.load = None
        state.block_ids = list(blocks.get_block_ids()[0])

    def build_connector_meta(self, scheduler_output: Any) -> TierkvMetadata:
        meta = TierkvMetadata()
        for new in scheduler_output.scheduled_new_reqs:
            state = self.requests.get(new.req_id)
            if state is None:
                continue
            state.block_ids = list(new.block_ids[0])
            self._plan(meta, state, new.num_computed_tokens, scheduler_output.num_scheduled_tokens.get(new.req_id, 0))
        cached = scheduler_output.scheduled_cached_reqs
        for i, req_id in enumerate(cached.req_ids):
            state = self.requests.get(req_id)
            if state is None:
                continue
            new_ids = cached.new_block_ids[i]
            if req_id in cached.resumed_req_ids:
                state.block_ids = list(new_ids[0]) if new_ids is not None else []
            elif new_ids is not None:
                state.block_ids.extend(new_ids[0])
            self._plan(meta, state, cached.num_computed_tokens[i], scheduler_output.num_scheduled_tokens.get(req_id, 0))
        return meta

    def _transfer(self, state: _Request, start: int, end: int) -> BlockTransfer:
        return BlockTransfer(
            req_id=state.request.request_id,
            cache_salt=getattr(state.request, "cache_salt", None),
            block_ids=state.block_ids[start:end],
            hashes=[chain[start:end] for chain in state.hashes],
        )

    def _plan(self, meta: TierkvMetadata, state: _Request, num_computed: int, num_scheduled: int) -> None:
        b = self.block_size
        if state.load is not None:
            start, end = state.load
            state.load = None
            if end <= len(state.block_ids):
                meta.loads.append(self._transfer(state, start, end))
        if not self.cfg.save:
            return
        req = state.request
        tokens = req.all_token_ids if self.cfg.save_generated else (req.prompt_token_ids or [])
        # Full blocks whose KV is complete once this step's forward pass ran.
        done = min((num_computed + num_scheduled) // b, len(tokens) // b, len(state.block_ids))
        if done <= state.stored:
            return
        try:
            self._connect()
        except (tierkv.TierkvError, TimeoutError, OSError) as e:
            logger.warning("TierkvConnector: not saving, no worker layout: %s", e)
            return
        self._extend_hashes(state, list(tokens[: done * b]), done)
        transfer = self._transfer(state, state.stored, done)
        meta.saves.append(transfer)
        self._record_stored(state, state.stored, done, tokens)
        state.stored = done

    def _record_stored(self, state: _Request, start: int, end: int, tokens: Any) -> None:
        try:
            from vllm.distributed.kv_events import BlockStored
        except ImportError:
            return
        b = self.block_size
        chain = state.hashes[0]
        self._events.append(
            BlockStored(
                block_hashes=chain[start:end],
                parent_block_hash=chain[start - 1] if start > 0 else None,
                token_ids=list(tokens[start * b : end * b]),
                block_size=b,
                lora_id=None,
                medium="STORAGE",
                lora_name=None,
            )
        )

    def blocks_failed(self, invalid_block_ids: set[int]) -> None:
        """Blocks a worker could not load: the store no longer holds a usable copy, so
        they are saved again once vLLM has recomputed them."""
        if not invalid_block_ids:
            return
        for state in self.requests.values():
            for i, block_id in enumerate(state.block_ids[: state.stored]):
                if block_id in invalid_block_ids:
                    state.stored = i
                    break

    def take_events(self) -> list[Any]:
        events, self._events = self._events, []
        return events

    def request_finished(self, request: Any) -> None:
        self.requests.pop(request.request_id, None)
