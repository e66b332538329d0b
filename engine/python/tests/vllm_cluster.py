"""The processes of a disaggregated vLLM cluster on loopback, for the tests: `vllm serve`
with TierkvConnector in a KV role, a real etcd, `tierkv register` keeping a worker in it,
and `tierkv frontend` discovering the workers there; plus the small HTTP helpers the
tests read replies and metrics with."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from conftest import free_port, wait_port

BLOCK = 128
MAX_TOKENS = 16
TOKEN = "pd-cluster-token"
# The workers' HTTP API key (vLLM's --api-key, through VLLM_API_KEY): the frontend
# presents it to them; tests calling a worker directly send it too.
API_KEY = "pd-cluster-api-key"


def full_blocks(n_tokens: int) -> int:
    return (n_tokens - 1) // BLOCK * BLOCK


class Server:
    """One `vllm serve` with TierkvConnector in `role`, its store under `root`."""

    def __init__(self, hf_model: str, workdir: Path, name: str, role: str):
        self.port = free_port()
        transfer = {
            "kv_connector": "TierkvConnector",
            "kv_connector_module_path": "tierkv.vllm",
            "kv_role": role,
            "engine_id": f"tierkv-pd-{name}",
            "kv_connector_extra_config": {
                "config": {"data_dir": str(workdir / name), "tier": [{"kind": "host", "capacity": "256MiB"}]},
                "rendezvous_dir": str(workdir / "rv"),
                "token": TOKEN,
                "request_log": str(workdir / f"{name}-requests.jsonl"),
            },
        }
        self.request_log = workdir / f"{name}-requests.jsonl"
        self.rendezvous_dir = workdir / "rv"
        self.log_path = workdir / f"vllm-{name}.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", hf_model, "--host",
             "127.0.0.1", "--port", str(self.port), "--dtype", "bfloat16", "--max-model-len", "1024",
             "--enforce-eager", "--served-model-name", "smollm2", "--enable-prompt-tokens-details",
             "--kv-transfer-config", json.dumps(transfer)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            # TIERKV_LOG: the connector's Rust side logs its warnings into the same log.
            env={
                "TIERKV_LOG": "warn",
                **os.environ,
                "VLLM_CPU_KVCACHE_SPACE": "1",
                "HF_HUB_OFFLINE": "1",
                "VLLM_API_KEY": API_KEY,
            },
            # Its own process group: `kill` takes vLLM's engine processes down with it.
            start_new_session=True,
        )
        self.engine_id = transfer["engine_id"]

    def kill(self) -> None:
        """Dies at once, as a crashed host would (no clean shutdown)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=60)

    def wait(self) -> None:
        try:
            wait_port(self.port, self.proc, f"vllm serve ({self.log_path.name})", timeout=400)
        except Exception:
            raise AssertionError(self.log_path.read_text()[-4000:])
        # The port opens before the engine answers; the first request waits for it.

    def complete(self, prompt: list[int], max_tokens: int, kv_transfer_params: dict | None = None, **extra) -> dict:
        return complete(self.port, prompt, max_tokens, kv_transfer_params, api_key=API_KEY, **extra)

    def metric(self, name: str) -> float:
        return metric(self.port, name)

    def tierkv_log(self) -> str:
        """The lines of this worker's log that tierkv wrote (connector and Rust side)."""
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(l for l in lines if "tierkv" in l.lower() or " WARN " in l)[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


def complete(
    port: int,
    prompt: list[int],
    max_tokens: int,
    kv_transfer_params: dict | None = None,
    api_key: str | None = None,
    **extra,
) -> dict:
    body = {"model": "smollm2", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "ignore_eos": True, **extra}
    if kv_transfer_params is not None:
        body["kv_transfer_params"] = kv_transfer_params
    headers = {"Content-Type": "application/json"}
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/completions",
        data=json.dumps(body).encode(),
        headers=headers,
    )
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read())


def metric(port: int, name: str) -> float:
    """The sum of the samples of `name` (with `{labels}` when given) at `/metrics`."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        text = r.read().decode()
    heads = (name + " ",) if "{" in name else (name + " ", name + "{")
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(heads))


def wait_until(what: str, ok, timeout: float = 60.0) -> None:
    """Polls ``ok()`` (a condition on a worker's state) until true."""
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def cached(reply: dict) -> int:
    details = (reply.get("usage") or {}).get("prompt_tokens_details") or {}
    return int(details.get("cached_tokens") or 0)


class Etcd:
    """A real single-member etcd on loopback ports."""

    def __init__(self, workdir: Path):
        client, peer = free_port(), free_port()
        self.url = f"http://127.0.0.1:{client}"
        peer_url = f"http://127.0.0.1:{peer}"
        self.log = open(workdir / "etcd.log", "w")
        self.proc = subprocess.Popen(
            ["etcd", "--data-dir", str(workdir / "etcd"), "--name", "t", "--listen-client-urls", self.url,
             "--advertise-client-urls", self.url, "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls",
             peer_url, "--initial-cluster", f"t={peer_url}", "--log-level", "error"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_port(client, self.proc, "etcd")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


class Registrar:
    """`tierkv register` keeping one vLLM worker in etcd."""

    def __init__(self, tierkv_bin: Path, etcd: Etcd, name: str, role: str, server: Server, workdir: Path):
        self.args = [str(tierkv_bin), "register", "--etcd", etcd.url, "--name", name, "--role", role,
                     "--http", f"http://127.0.0.1:{server.port}", "--rendezvous-dir", str(server.rendezvous_dir),
                     "--engine-id", server.engine_id, "--health-poll-ms", "200", "--lease-ttl-s", "5"]
        self.log = open(workdir / f"register-{name}.log", "a")
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


class Frontend:
    def __init__(self, tierkv_bin: Path, hf_model: str, etcd: Etcd, workdir: Path):
        self.port = free_port()
        config = workdir / "frontend.toml"
        config.write_text("[frontend]\nload_poll_ms = 100\n[frontend.prefill]\nremote_prefill_min_tokens = 200\n")
        self.log = open(workdir / "frontend.log", "w")
        self.proc = subprocess.Popen(
            [str(tierkv_bin), "frontend", "--model", hf_model, "--listen", f"127.0.0.1:{self.port}", "--config",
             str(config), "--etcd", etcd.url, "--served-model-name", "smollm2"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            # The token of the workers' block services (their event streams) and the
            # key of their HTTP APIs.
            env={**os.environ, "TIERKV_TOKEN": TOKEN, "TIERKV_WORKER_API_KEY": API_KEY},
        )
        wait_port(self.port, self.proc, "tierkv frontend")

    def complete(self, prompt: list[int], max_tokens: int) -> dict:
        return complete(self.port, prompt, max_tokens)

    def metric(self, name: str) -> float:
        return metric(self.port, name)

    def workers(self, role: str) -> float:
        return self.metric(f'tierkv_frontend_workers{{role="{role}"}}')

    def decisions(self, decision: str) -> float:
        return self.metric(f'tierkv_frontend_prefill_decisions_total{{decision="{decision}"}}')

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


def text(reply: dict) -> str:
    return reply["choices"][0]["text"]
