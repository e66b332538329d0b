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
import threading

import pytest

import urllib.error

from vllm_cluster import (
    BLOCK,
    MAX_TOKENS,
    Etcd,
    Frontend,
    Registrar,
    Server,
    cached,
    complete,
    full_blocks,
    text,
    wait_until,
)


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
    assert decode.metric("tierkv_vllm_peer_load_failures_total") == 0, decode.tierkv_log()
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


def test_the_workers_refuse_requests_without_their_api_key(cluster, prompts):
    """vLLM's --api-key (VLLM_API_KEY) on both workers: a request without it is 401;
    the frontend below presents it (TIERKV_WORKER_API_KEY) and is served."""
    prefill, decode = cluster
    for worker in (prefill, decode):
        for key in (None, "wrong-key"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                complete(worker.port, prompts["p4"][:20], 1, api_key=key)
            assert refused.value.code == 401, (worker.log_path.name, key)


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
    # The decode worker handed the blocks of a dead prefill worker computes the prompt:
    # its lookup there fails (nothing was promised to vLLM, so nothing is recomputed),
    # and the text is a cold run's.
    loaded = decode.metric("tierkv_vllm_peer_loaded_blocks_total")
    decoded = decode.complete(prompts["p5"], MAX_TOKENS, params)
    assert cached(decoded) == 0, "nothing could be fetched: the prompt was computed"
    assert text(decoded) == text(decode.complete(prompts["p5"], MAX_TOKENS, cache_salt="cold"))
    assert decode.metric("tierkv_vllm_peer_loaded_blocks_total") == loaded
    assert "lookup at the prefill worker failed" in decode.log_path.read_text()
