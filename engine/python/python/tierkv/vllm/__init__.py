"""tierkv for vLLM: ``TierkvConnector``, a v1 KV connector.

Loaded by vLLM with ``"kv_connector": "TierkvConnector", "kv_connector_module_path":
"tierkv.vllm"``. The connector needs vLLM and is imported on first use, so the pieces
that do not (the worker side, driven by tests without vLLM) import without it;
``tierkv`` itself never needs vLLM."""

from __future__ import annotations

from typing import Any

from .config import ConnectorConfig

__all__ = ["ConnectorConfig", "TierkvConnector"]


def __getattr__(name: str) -> Any:
    if name == "TierkvConnector":
        from .connector import TierkvConnector

        return TierkvConnector
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
