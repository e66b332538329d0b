"""tierkv for Python engines.

- ``Namespace``: model + KV geometry + tensor-parallel rank/size + an outside engine's
  block packing + tenant salt; it seeds the block-hash chain (``hash_blocks``,
  ``hash_next``), computed by the same Rust code as the store and the tierkv engine.
- ``open_store(config)``: a tiered KV store (host -> disk -> object) in this process.
- ``connect(addr)``: a client of a ``tierkv serve`` sidecar; the same methods.
- ``register_memory(addr, nbytes)`` / ``register_tensor(t)``: memory that whole-block
  copies (``put_from``, ``get_into``, ``save``, ``load``) may read and write.
- ``gpu_kv(kv_caches, num_blocks)``: an engine's KV cache tensors on a GPU, for
  ``Store.save_gpu`` / ``Store.load_gpu`` (the transfer engine gathers and scatters the
  blocks on the GPU; ``gpu_available()`` says whether this machine can).
- ``tierkv.vllm.TierkvConnector``: the vLLM KV connector.

Every I/O call releases the GIL; errors are ``TierkvError`` with the Rust message.
"""

from __future__ import annotations

import json
import os
from typing import Any

from . import _tierkv
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
    "gpu_available",
    "gpu_kv",
    "namespace_id",
    "open_store",
    "register_memory",
    "register_tensor",
    "unregister_memory",
]

# The Rust side's logs (store, block service, clients) go to stderr when TIERKV_LOG
# holds a filter (e.g. ``info``, ``tierkv_kvstore=debug``); off otherwise.
if os.environ.get("TIERKV_LOG"):
    _tierkv.init_logging(os.environ["TIERKV_LOG"])

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


def gpu_available() -> bool:
    """Whether this build and machine can copy blocks to and from GPU memory."""
    probe = getattr(_tierkv, "gpu_available", None)
    return bool(probe and probe())


def gpu_kv(kv_caches: Any, num_blocks: int) -> Any:
    """Describes an engine's KV cache tensors on one GPU (vLLM's ``kv_caches``: a dict of
    layer name -> tensor, or a list) for ``Store.save_gpu`` / ``Store.load_gpu``.

    Any layout with a dense block dimension of size ``num_blocks`` works
    (FlashAttention's ``[2, N, B, H, D]``, FlashInfer's ``[N, 2, B, H, D]``, per-layer
    views of a cross-layer tensor): a block is its pieces in layer order, the same bytes
    as the CPU path's ``save``/``load`` ranges. The tensors are kept alive by the result.
    """
    from .layout import block_map

    tensors = list(kv_caches.values()) if isinstance(kv_caches, dict) else list(kv_caches)
    if not tensors:
        raise TierkvError("gpu_kv: no KV cache tensors")
    devices = {t.device for t in tensors}
    if len(devices) != 1 or next(iter(devices)).type != "cuda":
        raise TierkvError(f"gpu_kv: the tensors must all be on one CUDA device, not {devices}")
    if not hasattr(_tierkv, "GpuKv"):
        raise TierkvError("gpu_kv: this tierkv build has no GPU support (feature `cuda`)")
    try:
        bmap = block_map({str(i): t for i, t in enumerate(tensors)}, num_blocks)
    except ValueError as e:
        raise TierkvError(str(e)) from None
    groups = [(lr.base + outer, lr.block_stride) for lr in bmap.layers for outer in lr.outers]
    piece = bmap.layers[0].run_bytes
    device = next(iter(devices)).index or 0
    per_layer = {len(lr.outers) for lr in bmap.layers}
    # A block's pieces are its layers' in order: saved layer by layer when all layers
    # have as many (`Store.begin_save_gpu`).
    pieces_per_layer = per_layer.pop() if len(per_layer) == 1 else len(groups)
    return _tierkv.GpuKv(device, groups, piece, num_blocks, tensors, pieces_per_layer)
