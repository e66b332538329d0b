"""``TierkvConnector``: a vLLM v1 KV connector that keeps and reuses KV in tierkv's
tiers (host -> disk -> object), embedded in the worker or through a ``tierkv serve``
sidecar. Load it with::

    --kv-transfer-config '{"kv_connector":"TierkvConnector","kv_connector_module_path":"tierkv.vllm","kv_role":"kv_both","kv_connector_extra_config":{...}}'

The keys of ``kv_connector_extra_config`` are in :mod:`tierkv.vllm.config`."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)

from .config import ConnectorConfig
from .metadata import TierkvMetadata
from .scheduler import SchedulerSide
from .stats import TierkvConnectorStats, TierkvPromMetrics
from .worker import WorkerSide

if TYPE_CHECKING:
    from vllm.forward_context import ForwardContext
    from vllm.v1.request import Request

# A child of vLLM's logger: its handler, format and level (VLLM_LOGGING_LEVEL).
logger = logging.getLogger("vllm.tierkv")


def _tp_rank() -> int:
    try:
        from vllm.distributed.parallel_state import get_tensor_model_parallel_rank

        return get_tensor_model_parallel_rank()
    except (ImportError, AssertionError, AttributeError):
        return 0


class TierkvConnector(KVConnectorBase_V1):
    def __init__(self, vllm_config: Any, role: KVConnectorRole, kv_cache_config: Any = None):
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        transfer = vllm_config.kv_transfer_config
        self.cfg = ConnectorConfig.from_extra(transfer.kv_connector_extra_config)
        engine_id = str(transfer.engine_id)
        block_size = vllm_config.cache_config.block_size
        self._scheduler: SchedulerSide | None = None
        self._worker: WorkerSide | None = None
        if role == KVConnectorRole.SCHEDULER:
            # A block tierkv cannot deliver is a cache miss, never an error: vLLM
            # recomputes it (the scheduler reads this right after building us).
            if transfer.kv_load_failure_policy != "recompute":
                logger.info("TierkvConnector: kv_load_failure_policy set to 'recompute'")
                transfer.kv_load_failure_policy = "recompute"
            self._scheduler = SchedulerSide(
                self.cfg,
                block_size,
                engine_id,
                vllm_config.parallel_config.tensor_parallel_size,
                role=str(transfer.kv_role),
            )
        else:
            self._worker = WorkerSide(self.cfg, vllm_config, engine_id, _tp_rank(), role=str(transfer.kv_role))

    # -- worker side -------------------------------------------------------------------

    def register_kv_caches(self, kv_caches: dict[str, Any]) -> None:
        assert self._worker is not None
        num_blocks = self._kv_cache_config.num_blocks
        self._worker.register_kv_caches(kv_caches, num_blocks)

    def start_load_kv(self, forward_context: "ForwardContext", **kwargs: Any) -> None:
        assert self._worker is not None
        meta = self._get_connector_metadata()
        assert isinstance(meta, TierkvMetadata)
        self._worker.start_load_kv(meta)

    def wait_for_layer_load(self, layer_name: str) -> None:
        # start_load_kv loaded every planned block (all layers) before the forward pass.
        return

    def save_kv_layer(self, layer_name: str, kv_layer: Any, attn_metadata: Any, **kwargs: Any) -> None:
        # On a GPU each layer's copy is queued as soon as the layer is written; on the
        # CPU whole blocks are copied once the step's forward pass is done.
        assert self._worker is not None
        meta = self._get_connector_metadata()
        assert isinstance(meta, TierkvMetadata)
        self._worker.save_kv_layer(meta, layer_name)

    def wait_for_save(self) -> None:
        assert self._worker is not None
        meta = self._get_connector_metadata()
        assert isinstance(meta, TierkvMetadata)
        self._worker.wait_for_save(meta)

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
        if self._worker is None:
            return None, None
        return None, self._worker.finished_peer_loads() or None

    def get_block_ids_with_load_errors(self) -> set[int]:
        if self._worker is None:
            return set()
        return self._worker.take_invalid_blocks()

    def get_kv_connector_stats(self) -> TierkvConnectorStats | None:
        if self._worker is None:
            return None
        delta = self._worker.stats_delta()
        return None if delta is None else TierkvConnectorStats(data=delta)

    def shutdown(self) -> None:
        if self._worker is not None:
            self._worker.shutdown()

    # -- scheduler side ----------------------------------------------------------------

    def get_num_new_matched_tokens(self, request: "Request", num_computed_tokens: int) -> tuple[int | None, bool]:
        assert self._scheduler is not None
        return self._scheduler.get_num_new_matched_tokens(request, num_computed_tokens)

    def update_state_after_alloc(self, request: "Request", blocks: Any, num_external_tokens: int) -> None:
        assert self._scheduler is not None
        self._scheduler.update_state_after_alloc(request, blocks, num_external_tokens)

    def build_connector_meta(self, scheduler_output: Any) -> KVConnectorMetadata:
        assert self._scheduler is not None
        return self._scheduler.build_connector_meta(scheduler_output)

    def update_connector_output(self, connector_output: Any) -> None:
        super().update_connector_output(connector_output)
        if self._scheduler is not None:
            self._scheduler.blocks_failed(set(connector_output.invalid_block_ids or ()))

    def request_finished(self, request: "Request", block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        assert self._scheduler is not None
        # Saves copy their bytes out during the step that computed them, so the blocks
        # can be freed at once; a prefill worker says where a decode worker finds them.
        return False, self._scheduler.request_finished(request)

    def take_events(self) -> Any:
        if self._scheduler is None:
            return []
        return self._scheduler.take_events()

    # -- statistics hooks ----------------------------------------------------------------

    @classmethod
    def build_kv_connector_stats(cls, data: dict[str, Any] | None = None) -> TierkvConnectorStats:
        return TierkvConnectorStats(data=dict(data) if data else {})

    @classmethod
    def build_prom_metrics(
        cls,
        vllm_config: Any,
        metric_types: dict[type, type],
        labelnames: list[str],
        per_engine_labelvalues: dict[int, list[object]],
    ) -> TierkvPromMetrics:
        return TierkvPromMetrics(vllm_config, metric_types, labelnames, per_engine_labelvalues)
