"""The scheduler side of TierkvConnector (in vLLM's EngineCore process): hashes each
request's full blocks into tierkv's chain, answers "how many tokens can be loaded" from
a lookup (no payload I/O), and plans the loads and saves of every step.

Disaggregated serving: a prefill worker (``kv_role`` ``kv_producer``, or a request
carrying ``kv_transfer_params: {"do_remote_decode": true}``) answers
``request_finished`` with ``kv_transfer_params`` naming its block services
(:data:`PEER_KEY`); a decode worker given those params looks the request's chain up
there and loads what the prefill worker holds asynchronously (``get_finished``
reports it done). The hashes are not carried: the decode worker computes the chain
from the prompt in its own namespace, so it can only ever load blocks of this prompt
and this layout, and a block it cannot load is recomputed."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import tierkv

from . import rendezvous
from .config import ConnectorConfig
from .metadata import BlockTransfer, TierkvMetadata

# A child of vLLM's logger: its handler, format and level (VLLM_LOGGING_LEVEL).
logger = logging.getLogger("vllm.tierkv")

#: The key of ``kv_transfer_params`` that says where a prefill worker keeps a request's
#: blocks: ``{"addrs": [block service address per tensor-parallel rank], "blocks": n}``.
PEER_KEY = "tierkv_peer"


def peer_params(request: Any) -> dict[str, Any] | None:
    """The :data:`PEER_KEY` entry of a request's ``kv_transfer_params``, if any."""
    params = getattr(request, "kv_transfer_params", None)
    if not isinstance(params, dict):
        return None
    peer = params.get(PEER_KEY)
    return peer if isinstance(peer, dict) else None


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
    #: Where the planned load comes from when it is a prefill worker's (per rank).
    peer_addrs: list[str] | None = None
    #: Until when to wait for blocks a prefill worker has not stored yet.
    peer_deadline: float | None = None


class SchedulerSide:
    def __init__(
        self, cfg: ConnectorConfig, block_size: int, engine_id: str, tp_size: int, role: str = "kv_both"
    ):
        self.cfg = cfg
        self.role = role
        #: Block-service addresses of this engine's workers, per rank.
        self._addrs: list[str] = []
        #: Clients of prefill workers' block services, by address.
        self._peers: dict[str, tierkv.Store] = {}
        #: Loads from prefill workers planned at allocation, sent with the next step.
        self._async_loads: list[BlockTransfer] = []
        self.block_size = block_size
        self.engine_id = engine_id
        self.tp_size = tp_size
        self.requests: dict[str, _Request] = {}
        self._namespaces: list[tierkv.Namespace] | None = None
        self._salted: dict[tuple[int, str], tierkv.Namespace] = {}
        self._lookups: list[tierkv.Store] = []
        self._events: list[Any] = []
        self._log = open(cfg.request_log, "a") if cfg.request_log else None
        self._log_start = time.monotonic()
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
            self._addrs.append(info["addr"])
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
            self._log_request(state, tokens, full)
        state.load = None
        state.peer_addrs = None
        if full == 0:
            return 0, False
        peer = peer_params(request)
        if peer is not None and self.cfg.load:
            return self._match_peer(state, tokens, full, num_computed_tokens, peer)
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

    def _log_request(self, state: _Request, tokens: list[int], full: int) -> None:
        """One line of the request log (see ``ConnectorConfig.request_log``)."""
        if self._log is None:
            return
        try:
            self._connect()
            self._extend_hashes(state, tokens, full)
            chain = state.hashes[0][:full] if state.hashes else []
        except (tierkv.TierkvError, TimeoutError, OSError) as e:
            logger.warning("TierkvConnector: request log: no namespace yet: %s", e)
            return
        params = getattr(state.request, "sampling_params", None)
        line = {
            "timestamp": int((time.monotonic() - self._log_start) * 1000),
            "input_length": len(tokens),
            "output_length": int(getattr(params, "max_tokens", 0) or 0),
            "block_tokens": self.block_size,
            "block_hashes": [f"{h:032x}" for h in chain],
        }
        self._log.write(json.dumps(line) + "\n")
        self._log.flush()

    def _peer(self, addr: str) -> tierkv.Store:
        client = self._peers.get(addr)
        if client is None:
            client = self._peers[addr] = tierkv.connect(addr, token=self.cfg.token, timeout_s=self.cfg.timeout_s)
        return client

    def _match_peer(
        self, state: _Request, tokens: list[int], full: int, num_computed_tokens: int, peer: dict[str, Any]
    ) -> tuple[int | None, bool]:
        """How many tokens a prefill worker's block services hold for this prompt; they
        are loaded asynchronously. ``None`` (ask again next step) while fewer blocks are
        there than the prefill worker stored, for up to ``peer_wait_s``."""
        b = self.block_size
        addrs = peer.get("addrs")
        if not (isinstance(addrs, list) and len(addrs) == self.tp_size and all(isinstance(a, str) for a in addrs)):
            logger.warning(
                "TierkvConnector: %s: %s names %r, not one block service per rank (%d); computing the prompt",
                state.request.request_id,
                PEER_KEY,
                addrs,
                self.tp_size,
            )
            return 0, False
        try:
            self._connect()
            self._extend_hashes(state, tokens, full)
            salt = getattr(state.request, "cache_salt", None)
            hit = min(
                self._peer(addr).lookup(self.namespace(rank, salt), state.hashes[rank][:full])
                for rank, addr in enumerate(addrs)
            )
        except (tierkv.TierkvError, TimeoutError, OSError) as e:
            logger.warning("TierkvConnector: lookup at the prefill worker failed, computing the prompt: %s", e)
            return 0, False
        # vLLM computes at least the prompt's last token itself.
        promised = peer.get("blocks")
        expected = min(promised if isinstance(promised, int) else 0, (len(tokens) - 1) // b)
        if hit < expected:
            now = time.monotonic()
            if state.peer_deadline is None:
                state.peer_deadline = now + self.cfg.peer_wait_s
            if now < state.peer_deadline:
                return None, False
            logger.warning(
                "TierkvConnector: %s: the prefill worker holds %d of the %d blocks it stored; computing the rest",
                state.request.request_id,
                hit,
                expected,
            )
        self.lookup_tokens += full * b
        loadable = min(hit, (len(tokens) - 1) // b)
        local = num_computed_tokens // b
        if loadable <= local:
            return 0, False
        state.load = (local, loadable)
        state.peer_addrs = list(addrs)
        self.hit_tokens += (loadable - local) * b
        return (loadable - local) * b - (num_computed_tokens - local * b), True

    def update_state_after_alloc(self, request: Any, blocks: Any, num_external_tokens: int) -> None:
        state = self.requests.get(request.request_id)
        if state is None:
            return
        if num_external_tokens == 0:
            state.load = None
            state.peer_addrs = None
        state.block_ids = list(blocks.get_block_ids()[0])
        if state.load is not None and state.peer_addrs is not None:
            # An asynchronous load: the request waits (not scheduled) until the
            # workers report it done, so it is planned now, not in `_plan`.
            start, end = state.load
            state.load = None
            if end <= len(state.block_ids):
                self._async_loads.append(self._transfer(state, start, end, state.peer_addrs))
            state.peer_addrs = None

    def build_connector_meta(self, scheduler_output: Any) -> TierkvMetadata:
        meta = TierkvMetadata()
        meta.loads.extend(self._async_loads)
        self._async_loads = []
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

    def _transfer(self, state: _Request, start: int, end: int, peer_addrs: list[str] | None = None) -> BlockTransfer:
        return BlockTransfer(
            req_id=state.request.request_id,
            cache_salt=getattr(state.request, "cache_salt", None),
            block_ids=state.block_ids[start:end],
            hashes=[chain[start:end] for chain in state.hashes],
            peer_addrs=peer_addrs,
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

    def request_finished(self, request: Any) -> dict[str, Any] | None:
        """Forgets the request; for a prefill worker, the ``kv_transfer_params`` that
        tell a decode worker where its blocks are."""
        state = self.requests.pop(request.request_id, None)
        params = getattr(request, "kv_transfer_params", None)
        asked = isinstance(params, dict) and bool(params.get("do_remote_decode"))
        if state is None or not (asked or self.role == "kv_producer") or not self._addrs or state.stored == 0:
            return None
        return {PEER_KEY: {"addrs": list(self._addrs), "blocks": state.stored}}
