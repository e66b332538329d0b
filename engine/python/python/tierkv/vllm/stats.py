"""TierkvConnector's statistics: what its workers saved and loaded each interval (blocks,
bytes, seconds, skipped and failed) and hits per tier, aggregated by vLLM, logged, and
exported as Prometheus metrics (names prefixed ``tierkv_vllm_``) through vLLM's
connector-metrics hook."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vllm.distributed.kv_transfer.kv_connector.v1.metrics import (
    KVConnectorPromMetrics,
    KVConnectorStats,
)

#: Counter name -> (the stats key, help text).
PROM_COUNTERS = {
    "tierkv_vllm_loaded_blocks_total": ("loaded_blocks", "KV blocks loaded into vLLM from tierkv"),
    "tierkv_vllm_loaded_bytes_total": ("loaded_bytes", "KV bytes loaded into vLLM from tierkv"),
    "tierkv_vllm_load_seconds_total": ("load_seconds", "Time spent loading KV blocks"),
    "tierkv_vllm_load_failures_total": ("load_failed", "KV blocks that could not be loaded (recomputed)"),
    "tierkv_vllm_saved_blocks_total": ("saved_blocks", "KV blocks copied out of vLLM and queued for tierkv (failures: save_failures)"),
    "tierkv_vllm_saved_bytes_total": ("saved_bytes", "KV bytes saved from vLLM to tierkv"),
    "tierkv_vllm_save_seconds_total": ("save_seconds", "Background time spent storing KV blocks"),
    "tierkv_vllm_save_skipped_total": ("save_skipped", "KV blocks not saved because the queue was full"),
    "tierkv_vllm_save_failures_total": ("save_failed", "KV blocks whose store failed"),
    "tierkv_vllm_peer_loaded_blocks_total": ("peer_loaded_blocks", "KV blocks loaded from prefill workers' block services"),
    "tierkv_vllm_peer_load_failures_total": ("peer_load_failed", "KV blocks a prefill worker could not deliver (recomputed)"),
    "tierkv_vllm_peer_load_seconds_total": ("peer_load_seconds", "Time spent loading KV blocks from prefill workers"),
}
TIER_HITS = "tierkv_vllm_tier_hits_total"


@dataclass
class TierkvConnectorStats(KVConnectorStats):
    def __post_init__(self) -> None:
        if not self.data:
            self.reset()

    def reset(self) -> None:
        self.data = {key: 0 for key, _ in PROM_COUNTERS.values()}
        self.data["tier_hits"] = {}

    def aggregate(self, other: KVConnectorStats) -> KVConnectorStats:
        for key, _ in PROM_COUNTERS.values():
            self.data[key] = self.data.get(key, 0) + other.data.get(key, 0)
        hits = self.data.setdefault("tier_hits", {})
        for tier, n in other.data.get("tier_hits", {}).items():
            hits[tier] = hits.get(tier, 0) + n
        return self

    def reduce(self) -> dict[str, int | float]:
        out: dict[str, int | float] = {key: self.data.get(key, 0) for key, _ in PROM_COUNTERS.values()}
        for tier, n in self.data.get("tier_hits", {}).items():
            out[f"hits_{tier}"] = n
        secs = self.data.get("load_seconds", 0)
        if secs:
            out["load_GBps"] = round(self.data.get("loaded_bytes", 0) / secs / 1e9, 3)
        return out

    def is_empty(self) -> bool:
        return not any(self.data.get(key) for key, _ in PROM_COUNTERS.values()) and not self.data.get(
            "tier_hits"
        )


class TierkvPromMetrics(KVConnectorPromMetrics):
    def __init__(
        self,
        vllm_config: Any,
        metric_types: dict[type, type],
        labelnames: list[str],
        per_engine_labelvalues: dict[int, list[object]],
    ):
        super().__init__(vllm_config, metric_types, labelnames, per_engine_labelvalues)
        self._counters: dict[str, dict[int, Any]] = {}
        for name, (_, doc) in PROM_COUNTERS.items():
            counter = self._counter_cls(name=name, documentation=doc, labelnames=labelnames)
            self._counters[name] = {
                idx: counter.labels(*values) for idx, values in per_engine_labelvalues.items()
            }
        self._hits = self._counter_cls(
            name=TIER_HITS,
            documentation="KV blocks tierkv served, by tier",
            labelnames=labelnames + ["tier"],
        )

    def observe(self, transfer_stats_data: dict[str, Any], engine_idx: int = 0) -> None:
        for name, (key, _) in PROM_COUNTERS.items():
            value = transfer_stats_data.get(key, 0)
            if value:
                self._counters[name][engine_idx].inc(value)
        labels = self.per_engine_labelvalues[engine_idx]
        for tier, n in transfer_stats_data.get("tier_hits", {}).items():
            if n:
                self._hits.labels(*labels, tier).inc(n)
