"""Disaggregated serving with vLLM on both sides: a prefill `vllm serve`
(`kv_role: kv_producer`, embedded store) computes a prompt with one output token and
answers with `kv_transfer_params` naming its block service; a decode `vllm serve`
(`kv_role: kv_consumer`) given those params fetches the blocks from it asynchronously
and decodes.

The oracle is vLLM's own prefix-cache hit on the prefill worker (the same split between
loaded and computed tokens): the decode worker's greedy text must equal it, and its
`cached_tokens` must count the fetched blocks. With the prefill worker gone, the decode
worker computes the prompt itself and still answers.

The same two workers then run behind `tierkv frontend`, discovered through a real etcd
where `tierkv register` keeps each of them while it is healthy: the frontend runs the
prefill-then-decode flow for long prompts and lets the decode worker compute short
ones, stops using a prefill worker whose registration left, and still answers every
request (same tokens) when the prefill worker is killed with requests in flight.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
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
            env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"},
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
        return complete(self.port, prompt, max_tokens, kv_transfer_params, **extra)

    def metric(self, name: str) -> float:
        return metric(self.port, name)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


def complete(port: int, prompt: list[int], max_tokens: int, kv_transfer_params: dict | None = None, **extra) -> dict:
    body = {"model": "smollm2", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "ignore_eos": True, **extra}
    if kv_transfer_params is not None:
        body["kv_transfer_params"] = kv_transfer_params
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
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
            # The token of the workers' block services (their event streams).
            env={**os.environ, "TIERKV_TOKEN": TOKEN},
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


@pytest.fixture(scope="module")
def frontend(cluster, tierkv_bin, hf_model, tmp_path_factory):
    prefill, decode = cluster
    workdir = tmp_path_factory.mktemp("vllm-frontend")
    etcd = Etcd(workdir)
    registrars = {
        "prefill": Registrar(tierkv_bin, etcd, "prefill-0", "prefill", prefill, workdir),
        "decode": Registrar(tierkv_bin, etcd, "decode-0", "decode", decode, workdir),
    }
    fe = Frontend(tierkv_bin, hf_model, etcd, workdir)
    try:
        wait_until("both workers in the frontend", lambda: fe.workers("prefill") == 1 and fe.workers("decode") == 1)
        yield fe, registrars
    finally:
        fe.stop()
        for r in registrars.values():
            r.stop()
        etcd.stop()


def text(reply: dict) -> str:
    return reply["choices"][0]["text"]


def test_the_frontend_prefills_long_prompts_on_the_prefill_worker(cluster, frontend, prompts):
    prefill, decode = cluster
    fe, _ = frontend
    remote, loaded = fe.decisions("remote"), decode.metric("tierkv_vllm_peer_loaded_blocks_total")
    names = ("f0", "f1", "f2")
    for name in names:
        prompt = prompts[name]
        via = fe.complete(prompt, MAX_TOKENS)
        # Aggregated vLLM with the prompt in its own prefix cache (it prefilled it).
        local = prefill.complete(prompt, MAX_TOKENS)
        assert cached(local) == full_blocks(len(prompt)), name
        assert cached(via) == full_blocks(len(prompt)), (name, via["usage"])
        assert text(via) == text(local), name
    assert fe.decisions("remote") - remote == len(names)
    fetched = decode.metric("tierkv_vllm_peer_loaded_blocks_total") - loaded
    assert fetched == sum(len(prompts[n]) // BLOCK for n in names)


def test_short_and_mostly_cached_prompts_stay_on_the_decode_worker(cluster, frontend, prompts):
    prefill, decode = cluster
    fe, _ = frontend
    loaded = decode.metric("tierkv_vllm_peer_loaded_blocks_total")
    short_before = fe.decisions("local_short")
    short = prompts["f3"][:150]
    via = fe.complete(short, MAX_TOKENS)
    assert text(via) == text(prefill.complete(short, MAX_TOKENS)), "both computed it cold"
    # A prompt the decode worker computed itself is in its store: the frontend sees
    # its blocks in the worker's event stream and leaves the rest to it.
    prompt = prompts["f4"]
    blocks = fe.metric('tierkv_frontend_index_blocks{worker="decode-0"}')
    decode.complete(prompt, 1)
    wait_until("the decode worker's blocks in the frontend's index",
               lambda: fe.metric('tierkv_frontend_index_blocks{worker="decode-0"}') >= blocks + len(prompt) // BLOCK)
    via = fe.complete(prompt, MAX_TOKENS)
    assert cached(via) == full_blocks(len(prompt))
    assert fe.decisions("local_short") - short_before == 2
    assert decode.metric("tierkv_vllm_peer_loaded_blocks_total") == loaded, "nothing was fetched"


def test_a_prefill_worker_that_leaves_etcd_is_not_used(cluster, frontend, prompts):
    prefill, decode = cluster
    fe, registrars = frontend
    none_before, remote = fe.decisions("local_no_prefill_worker"), fe.decisions("remote")
    registrars["prefill"].stop()
    wait_until("the prefill worker gone from the frontend", lambda: fe.workers("prefill") == 0)
    prompt = prompts["f5"]
    via = fe.complete(prompt, MAX_TOKENS)
    assert cached(via) == 0
    assert text(via) == text(prefill.complete(prompt, MAX_TOKENS)), "both computed it cold"
    assert fe.decisions("local_no_prefill_worker") - none_before == 1
    registrars["prefill"].start()
    wait_until("the prefill worker back in the frontend", lambda: fe.workers("prefill") == 1)
    prompt = prompts["f6"]
    via = fe.complete(prompt, MAX_TOKENS)
    assert cached(via) == full_blocks(len(prompt))
    assert fe.decisions("remote") - remote == 1


def test_killing_the_prefill_worker_with_requests_in_flight(cluster, frontend, prompts):
    prefill, decode = cluster
    fe, _ = frontend
    # Blocks the prefill worker stored for a decode request that comes after its death.
    params = prefill.complete(prompts["p5"], 1, {"do_remote_decode": True})["kv_transfer_params"]
    assert params["tierkv_peer"]["blocks"] == len(prompts["p5"]) // BLOCK
    names = ("f7", "f8", "f9")
    results: dict[str, object] = {}

    def run(name: str) -> None:
        try:
            results[name] = fe.complete(prompts[name], MAX_TOKENS)
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            results[name] = e

    answered = fe.metric("tierkv_frontend_remote_prefill_seconds_count")
    threads = [threading.Thread(target=run, args=(n,)) for n in names]
    for t in threads:
        t.start()
    # Kill it once it answered one of them: the others are mid-prefill or mid-fetch.
    wait_until("a remote prefill answered",
               lambda: fe.metric("tierkv_frontend_remote_prefill_seconds_count") > answered or len(results) == len(names),
               timeout=300)
    prefill.kill()
    for t in threads:
        t.join(timeout=300)
    for name in names:
        reply = results[name]
        assert isinstance(reply, dict), (name, reply)
        assert reply["usage"]["completion_tokens"] == MAX_TOKENS
        # The reference with the same split between loaded and computed tokens: a
        # cache hit on the decode worker (it holds the prompt now), or a cold run
        # (a cache salt misses every cache).
        if cached(reply) == 0:
            ref = decode.complete(prompts[name], MAX_TOKENS, cache_salt="cold")
        else:
            ref = decode.complete(prompts[name], MAX_TOKENS)
        assert cached(ref) == cached(reply), name
        assert text(reply) == text(ref), name
    after = fe.complete(prompts["f3"], MAX_TOKENS)
    assert after["usage"]["completion_tokens"] == MAX_TOKENS
    # The decode worker handed blocks of a dead prefill worker computes them.
    failures = decode.metric("tierkv_vllm_peer_load_failures_total")
    decoded = decode.complete(prompts["p5"], MAX_TOKENS, params)
    assert cached(decoded) == 0, "nothing could be fetched: the prompt was computed"
    assert decoded["usage"]["completion_tokens"] == MAX_TOKENS
    assert decode.metric("tierkv_vllm_peer_load_failures_total") > failures
