"""What the scheduler tells the workers each step: which blocks to load before the
forward pass and which to save after it. Hashes are per tensor-parallel rank (the rank
is part of the namespace)."""

from __future__ import annotations

from dataclasses import dataclass, field

try:
    from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorMetadata
except ImportError:  # the package imports without vLLM; the connector needs it
    KVConnectorMetadata = object  # type: ignore[misc,assignment]


@dataclass
class BlockTransfer:
    req_id: str
    #: The request's ``cache_salt`` (namespaces are salted with it), or ``None``.
    cache_salt: str | None
    #: vLLM block ids, in chain order.
    block_ids: list[int]
    #: ``hashes[tp_rank][i]``: the hash of ``block_ids[i]`` in that rank's namespace.
    hashes: list[list[int]]
    #: A load from a prefill worker's block service instead of this worker's store:
    #: its address per tensor-parallel rank. Such loads run in the background and are
    #: reported done by ``get_finished``.
    peer_addrs: list[str] | None = None


@dataclass
class TierkvMetadata(KVConnectorMetadata):  # type: ignore[misc]
    loads: list[BlockTransfer] = field(default_factory=list)
    saves: list[BlockTransfer] = field(default_factory=list)
