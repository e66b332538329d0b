"""How a worker tells its scheduler (another process) the KV namespace it computed
from its tensors and the address its lookups go to: one JSON file per engine and
tensor-parallel rank, written atomically."""

from __future__ import annotations

import json
import os
import time
from typing import Any


def path(directory: str, engine_id: str, tp_rank: int) -> str:
    return os.path.join(directory, f"{engine_id}.tp{tp_rank}.json")


def publish(file: str, info: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(file), mode=0o700, exist_ok=True)
    tmp = f"{file}.{os.getpid()}.tmp"
    # Only this user may read it: it carries the store's access token.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(info, f)
    os.replace(tmp, file)


def wait_for(file: str, timeout_s: float) -> dict[str, Any]:
    """The info at ``file``, waiting for it to appear (polling its directory)."""
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while True:
        try:
            with open(file) as f:
                return json.load(f)
        except FileNotFoundError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"no vLLM worker published {file} within {timeout_s} s"
                ) from None
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def remove(file: str) -> None:
    try:
        os.remove(file)
    except FileNotFoundError:
        pass
