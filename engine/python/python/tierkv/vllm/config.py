"""The keys of ``kv_connector_extra_config`` that TierkvConnector reads, with their
defaults, in one place."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Any

from .. import DEFAULT_SAVE_QUEUE_BYTES


@dataclass(frozen=True)
class ConnectorConfig:
    #: Embedded mode: the store's TOML file (the format of ``tierkv serve --config``) or
    #: the same as a dict. Default ``None``: the built-in default, host 512 MiB -> disk
    #: 4 GiB -> object directory 16 GiB under ``./tierkv-data``.
    config: str | dict[str, Any] | None = None
    #: Sidecar mode: the ``host:port`` of a ``tierkv serve`` shared by every vLLM on the
    #: machine. Default ``None`` (embedded mode).
    sidecar: str | None = None
    #: The sidecar's bearer token. Default ``$TIERKV_TOKEN``, else none.
    token: str | None = None
    #: The model part of the namespace. Default: vLLM's ``--model`` value.
    model_id: str | None = None
    #: Load cached blocks into vLLM. Default true.
    load: bool = True
    #: Save newly computed full blocks. Default true.
    save: bool = True
    #: Also save blocks of generated tokens (not only the prompt's). Default true.
    save_generated: bool = True
    #: Bytes of copied blocks waiting to be stored before saves are skipped. 256 MiB.
    save_queue_bytes: int = DEFAULT_SAVE_QUEUE_BYTES
    #: How long the scheduler waits for the workers to publish their layout (and, in
    #: embedded mode, their store's address). Default 300 s.
    rendezvous_timeout_s: float = 300.0
    #: Where workers publish that. Default ``$TMPDIR/tierkv-vllm``.
    rendezvous_dir: str = os.path.join(tempfile.gettempdir(), "tierkv-vllm")
    #: Per-call timeout of the scheduler's lookups and of sidecar calls. Default 10 s.
    timeout_s: float = 10.0
    #: Embedded mode: where the store's block service listens (the scheduler's lookups,
    #: and in disaggregated serving the decode workers' fetches; give a routable
    #: ``host:port`` when they run on other machines). Default ``127.0.0.1:0``.
    serve_addr: str = "127.0.0.1:0"
    #: Disaggregated serving: how long a decode worker waits for the blocks a prefill
    #: worker said it stored (its saves finish in the background) before computing
    #: what is missing. Default 2 s.
    peer_wait_s: float = 2.0
    #: KV cache on a GPU: the layers one copy into the layer-wise save's staging
    #: takes (every this many layers the blocks' newest layers are copied while the
    #: next layers compute). Default 1: each layer as soon as it is written.
    save_layers_per_copy: int = 1
    #: Append one JSON line per request (arrival ms, prompt and output lengths, the
    #: block size and the prompt's chain hashes of TP rank 0; never its tokens) to this
    #: file: a trace for ``tierkv-bench replay`` and ``tune``. Default ``None``.
    request_log: str | None = None

    @staticmethod
    def from_extra(extra: dict[str, Any] | None) -> "ConnectorConfig":
        extra = dict(extra or {})
        known = set(ConnectorConfig.__dataclass_fields__)
        unknown = sorted(set(extra) - known)
        if unknown:
            raise ValueError(
                f"TierkvConnector: unknown kv_connector_extra_config keys {unknown}; "
                f"known: {sorted(known)}"
            )
        if extra.get("token") is None and os.environ.get("TIERKV_TOKEN"):
            extra["token"] = os.environ["TIERKV_TOKEN"]
        cfg = ConnectorConfig(**extra)
        if cfg.save_layers_per_copy < 1:
            raise ValueError("TierkvConnector: save_layers_per_copy must be at least 1")
        if cfg.sidecar is not None and cfg.config is not None:
            raise ValueError(
                "TierkvConnector: give `config` (embedded store) or `sidecar`, not both"
            )
        return cfg

    @property
    def mode(self) -> str:
        return "sidecar" if self.sidecar else "embedded"
