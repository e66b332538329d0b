"""tierkv for Python engines.

- ``Namespace``: model + KV geometry + tensor-parallel rank/size + an outside engine's
  block packing + tenant salt; it seeds the block-hash chain (``hash_blocks``,
  ``hash_next``), computed by the same Rust code as the store and the tierkv engine.
- ``open_store(config)``: a tiered KV store (host -> disk -> object) in this process.
- ``connect(addr)``: a client of a ``tierkv serve`` sidecar; the same methods.
- ``register_memory(addr, nbytes)`` / ``register_tensor(t)``: memory that whole-block
  copies (``put_from``, ``get_into``, ``save``, ``load``) may read and write.
- ``tierkv.vllm.TierkvConnector``: the vLLM KV connector.

Every I/O call releases the GIL; errors are ``TierkvError`` with the Rust message.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ._tierkv import (
    Namespace,
    Store,
    TierkvError,
    __version__,
    namespace_id,
    register_memory,
    unregister_memory,
)

__all__ = [
    "Namespace",
    "Store",
    "TierkvError",
    "__version__",
    "connect",
    "namespace_id",
    "open_store",
    "register_memory",
    "register_tensor",
    "unregister_memory",
]

#: Bytes of copied blocks ``save`` may keep waiting for storage (256 MiB).
DEFAULT_SAVE_QUEUE_BYTES = 256 << 20


def open_store(
    config: str | os.PathLike | dict[str, Any] | None = None,
    *,
    min_slot_bytes: int = 0,
    save_queue_bytes: int = DEFAULT_SAVE_QUEUE_BYTES,
    data_subdir: str | None = None,
) -> Store:
    """Opens a tiered store in this process.

    ``config``: a TOML file (the format of ``tierkv serve --config``), the same as a
    dict, or ``None`` for the default (host 512 MiB -> disk 4 GiB -> object directory
    16 GiB under ``./tierkv-data``). ``min_slot_bytes`` raises ``slot_bytes`` to hold one
    block of the caller's model; ``data_subdir`` puts the tiers under
    ``data_dir/data_subdir``. S3 credentials the config leaves out come from
    ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``.
    """
    if isinstance(config, dict):
        return Store.open(
            config_json=json.dumps(config),
            min_slot_bytes=min_slot_bytes,
            save_queue_bytes=save_queue_bytes,
            data_subdir=data_subdir,
        )
    path = None if config is None else os.fspath(config)
    return Store.open(
        config=path,
        min_slot_bytes=min_slot_bytes,
        save_queue_bytes=save_queue_bytes,
        data_subdir=data_subdir,
    )


def connect(
    addr: str,
    *,
    token: str | None = None,
    timeout_s: float = 60.0,
    retries: int = 3,
    save_queue_bytes: int = DEFAULT_SAVE_QUEUE_BYTES,
) -> Store:
    """A client of the ``tierkv serve`` block service at ``addr`` (``host:port``).

    ``put``/``put_many`` publish, ``get``/``get_many`` fetch (crc32c-verified),
    ``lookup`` asks for the longest cached prefix. ``token`` defaults to
    ``$TIERKV_TOKEN``.
    """
    if token is None:
        token = os.environ.get("TIERKV_TOKEN")
    return Store.connect(
        addr,
        token=token,
        timeout_s=timeout_s,
        retries=retries,
        save_queue_bytes=save_queue_bytes,
    )


def register_tensor(tensor: Any) -> tuple[int, int]:
    """Registers the whole storage of a (CPU) tensor for block copies and returns
    ``(address, nbytes)``. Keep the tensor alive while registered."""
    storage = tensor.untyped_storage()
    addr, nbytes = storage.data_ptr(), storage.nbytes()
    register_memory(addr, nbytes)
    return addr, nbytes
