"""Disaggregated serving with vLLM on both sides: a prefill `vllm serve`
(`kv_role: kv_producer`, embedded store) computes a prompt with one output token and
answers with `kv_transfer_params` naming its block service; a decode `vllm serve`
(`kv_role: kv_consumer`) given those params fetches the blocks from it asynchronously
and decodes.

The oracle is vLLM's own prefix-cache hit on the prefill worker (the same split between
loaded and computed tokens): the decode worker's greedy text must equal it, and its
`cached_tokens` must count the fetched blocks. With the prefill worker gone, the decode
worker computes the prompt itself and still answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port, wait_port

BLOCK = 128
MAX_TOKENS = 16
TOKEN = "pd-cluster-token"


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
        self.log_path = workdir / f"vllm-{name}.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", hf_model, "--host",
             "127.0.0.1", "--port", str(self.port), "--dtype", "bfloat16", "--max-model-len", "1024",
             "--enforce-eager", "--served-model-name", "smollm2", "--enable-prompt-tokens-details",
             "--kv-transfer-config", json.dumps(transfer)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"},
        )

    def wait(self) -> None:
        try:
            wait_port(self.port, self.proc, f"vllm serve ({self.log_path.name})", timeout=400)
        except Exception:
            raise AssertionError(self.log_path.read_text()[-4000:])
        # The port opens before the engine answers; the first request waits for it.

    def complete(self, prompt: list[int], max_tokens: int, kv_transfer_params: dict | None = None) -> dict:
        body = {"model": "smollm2", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "ignore_eos": True}
        if kv_transfer_params is not None:
            body["kv_transfer_params"] = kv_transfer_params
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/v1/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=300) as r:
            return json.loads(r.read())

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=30) as r:
            text = r.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def cached(reply: dict) -> int:
    details = (reply.get("usage") or {}).get("prompt_tokens_details") or {}
    return int(details.get("cached_tokens") or 0)


@pytest.fixture(scope="module")
def cluster(hf_model, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("vllm-pd")
    prefill = Server(hf_model, workdir, "prefill", "kv_producer")
    decode = Server(hf_model, workdir, "decode", "kv_consumer")
    try:
        prefill.wait()
        decode.wait()
        yield prefill, decode
    finally:
        prefill.stop()
        decode.stop()


def test_decode_worker_fetches_the_prefill_workers_blocks(cluster, prompts):
    prefill, decode = cluster
    for name in ("p1", "p3", "p2"):
        prompt = prompts[name]
        first = prefill.complete(prompt, 1, {"do_remote_decode": True})
        params = first.get("kv_transfer_params")
        assert params and params["tierkv_peer"]["blocks"] == len(prompt) // BLOCK, (name, params)
        assert all(isinstance(a, str) for a in params["tierkv_peer"]["addrs"])
        decoded = decode.complete(prompt, MAX_TOKENS, params)
        # vLLM's own prefix-cache hit of the same blocks, on the prefill worker.
        local = prefill.complete(prompt, MAX_TOKENS)
        assert cached(local) == full_blocks(len(prompt)), name
        assert cached(decoded) == full_blocks(len(prompt)), (name, decoded.get("usage"))
        assert decoded["choices"][0]["text"] == local["choices"][0]["text"], name
    assert decode.metric("tierkv_vllm_peer_loaded_blocks_total") >= 2 + 3 + 1
    assert decode.metric("tierkv_vllm_peer_load_failures_total") == 0
    # The decode worker's request log: one line per request, lengths and chain hashes.
    lines = [json.loads(l) for l in decode.request_log.read_text().splitlines()]
    assert [l["input_length"] for l in lines] == [len(prompts[n]) for n in ("p1", "p3", "p2")]
    assert all(l["block_tokens"] == BLOCK and l["output_length"] == MAX_TOKENS for l in lines)
    assert [len(l["block_hashes"]) for l in lines] == [len(prompts[n]) // BLOCK for n in ("p1", "p3", "p2")]
    assert "prompt" not in lines[0] and "prompt_token_ids" not in lines[0]


def test_a_short_prompt_has_nothing_to_fetch(cluster, prompts):
    prefill, decode = cluster
    short = prompts["p4"][:100]  # no full block
    first = prefill.complete(short, 1, {"do_remote_decode": True})
    assert first.get("kv_transfer_params") is None
    decoded = decode.complete(short, MAX_TOKENS)
    assert cached(decoded) == 0
    assert len(decoded["choices"][0]["text"]) > 0


def test_with_the_prefill_worker_gone_the_decode_worker_computes(cluster, prompts):
    prefill, decode = cluster
    prompt = prompts["p5"]
    params = prefill.complete(prompt, 1, {"do_remote_decode": True})["kv_transfer_params"]
    assert params["tierkv_peer"]["blocks"] == len(prompt) // BLOCK
    prefill.stop()
    decoded = decode.complete(prompt, MAX_TOKENS, params)
    assert cached(decoded) == 0, "nothing could be fetched: the prompt was computed"
    assert decoded["usage"]["completion_tokens"] == MAX_TOKENS
