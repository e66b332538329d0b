"""tierkv for vLLM: ``TierkvConnector``, a v1 KV connector.

Loaded by vLLM with ``"kv_connector": "TierkvConnector", "kv_connector_module_path":
"tierkv.vllm"``. Importing this module needs vLLM; ``tierkv`` itself does not."""

from .config import ConnectorConfig
from .connector import TierkvConnector

__all__ = ["ConnectorConfig", "TierkvConnector"]
