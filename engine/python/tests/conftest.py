"""Shared set-up of the Python tests: the repository, the `tierkv` binary, free ports,
a real moto S3 server, a `tierkv serve` sidecar, the default model in Hugging Face
format, and prompts of exact token lengths."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} did not listen on {port} within {timeout} s")
            time.sleep(0.1)


@pytest.fixture(scope="session")
def tierkv_bin() -> Path:
    path = REPO / "target" / "release" / "tierkv"
    if not path.exists():
        subprocess.run(["cargo", "build", "--release", "--workspace", "--bins"], cwd=REPO, check=True)
    return path


class Sidecar:
    def __init__(self, tierkv_bin: Path, data_dir: Path, config: str | None = None):
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        args = [str(tierkv_bin), "serve", "--listen", self.addr, "--data-dir", str(data_dir)]
        if config is not None:
            cfg = data_dir / "serve.toml"
            data_dir.mkdir(parents=True, exist_ok=True)
            cfg.write_text(config)
            args += ["--config", str(cfg)]
        self.log = open(data_dir.parent / f"serve-{self.port}.log", "w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        wait_port(self.port, self.proc, "tierkv serve")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


@pytest.fixture
def sidecar(tierkv_bin, tmp_path):
    s = Sidecar(tierkv_bin, tmp_path / "serve", config=SIDECAR_CONFIG)
    yield s
    s.stop()


#: A sidecar store with room for a few hundred 3 MiB vLLM blocks.
SIDECAR_CONFIG = """
slot_bytes = "4MiB"
[[tier]]
kind = "host"
capacity = "512MiB"
[[tier]]
kind = "disk"
capacity = "512MiB"
"""


class S3:
    """A real moto S3 server on a free loopback port."""

    def __init__(self, log_dir: Path):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        python = os.environ.get("TIERKV_MOTO_PYTHON", "python3")
        self.log = open(log_dir / "moto.log", "w")
        self.proc = subprocess.Popen(
            [python, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_port(self.port, self.proc, "moto S3 server")

    def create_bucket(self, bucket: str) -> None:
        req = urllib.request.Request(f"{self.endpoint}/{bucket}", method="PUT", data=b"")
        with urllib.request.urlopen(req) as r:
            assert r.status == 200

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.log.close()


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    server = S3(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def hf_model() -> str:
    path = os.environ.get("TIERKV_HF_MODEL")
    if path:
        return path
    out = subprocess.run(
        [str(REPO / "scripts" / "fetch-model"), "--hf"],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "TIERKV_PYTHON": sys.executable},
    )
    return out.stdout.strip().splitlines()[-1]


TEXT = (
    "The history of computing is a story of memory. Early machines kept their state in "
    "delay lines and drums; later ones in magnetic cores, then in transistors etched on "
    "silicon. Each generation made memory larger and faster, yet programs always wanted "
    "more of it. Caches appeared to hide the distance between a processor and its data, "
    "and hierarchies of caches followed: registers, several levels of static memory, "
    "dynamic memory, flash, spinning disks and finally storage far away across a network. "
    "Language models repeat this story. A transformer keeps the keys and values of every "
    "token it has read, and a long conversation fills gigabytes of accelerator memory. "
)


@pytest.fixture(scope="session")
def prompts(hf_model):
    """Token-id prompts of exact lengths, each from a different starting word."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_model)
    ids = tok(TEXT * 12, add_special_tokens=False)["input_ids"]
    words = tok(" ".join(f"Question {i}:" for i in range(40)), add_special_tokens=False)["input_ids"]

    def make(seed: int, n: int) -> list[int]:
        # A distinct opening, then the shared text: distinct chains from block 0.
        head = words[seed * 3 : seed * 3 + 3]
        return (head + ids[seed * 7 :])[:n]

    return {
        "p1": make(1, 300),  # not a multiple of the block size: 2 full blocks
        "p2": make(2, 256),  # exactly 2 blocks: vLLM computes the last token itself
        "p3": make(3, 400),  # 3 full blocks
        "p3_300": make(3, 300),
        "p4": make(4, 200),
        "p5": make(5, 330),
        # Fresh prompts for the frontend's tests (no worker has seen them before).
        **{f"f{i}": make(10 + i, 300 + 40 * i) for i in range(10)},
    }


def run_vllm(spec: dict, workdir: Path, label: str, timeout: float = 600) -> dict:
    """One vLLM process through ``spec``'s steps (see vllm_scenario.py)."""
    spec_file, out_file = workdir / f"{label}.spec.json", workdir / f"{label}.out.json"
    spec_file.write_text(json.dumps(spec))
    log = workdir / f"{label}.log"
    with open(log, "w") as f:
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).parent / "vllm_scenario.py"), str(spec_file), str(out_file)],
            stdout=f,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"},
        )
    if proc.returncode != 0:
        tail = log.read_text()[-6000:]
        raise AssertionError(f"vLLM run {label} failed ({proc.returncode}):\n{tail}")
    return json.loads(out_file.read_text())
