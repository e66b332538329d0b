"""tierkv-bench vllm: vLLM (CPU) with and without TierkvConnector, same run, same model.

    python vllm_bench.py SPEC.json      (tierkv-bench vllm writes SPEC and reads --json)

Workloads, sent one request at a time through `vllm serve` (streaming, the official
openai client) so that TTFT is the time to the first streamed token:
- chat: multi-turn sessions; each turn's prompt is the session so far plus a question;
- docqa: long documents (~1k tokens), several questions each;
- unique: distinct ~1k-token prompts (no reuse), for the connector's overhead.
Setups: vLLM without prefix caching; vLLM's prefix cache; TierkvConnector embedded
(warm from host after vLLM's cache is reset; from disk after a restart); TierkvConnector
through a `tierkv serve` sidecar; vLLM's ExampleConnector. Each reports TTFT p50/p99,
throughput, the cached share of prompt tokens and tierkv's hits per tier. Then block loads
from an embedded store beside a memcpy of the same bytes.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(url)


class Server:
    def __init__(self, spec, name, transfer=None, prefix_cache=True):
        self.port = free_port()
        self.log = open(Path(spec["work"]) / f"{name}.log", "a")
        args = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", spec["model"],
                "--host", "127.0.0.1", "--port", str(self.port), "--dtype", "bfloat16",
                "--max-model-len", "2048", "--enforce-eager", "--served-model-name", "m",
                "--enable-prompt-tokens-details", "--max-num-seqs", "4"]
        if not prefix_cache:
            args.append("--no-enable-prefix-caching")
        if transfer is not None:
            args += ["--kv-transfer-config", json.dumps(transfer)]
        # VLLM_SERVER_DEV_MODE: serves POST /reset_prefix_cache.
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2", "HF_HUB_OFFLINE": "1", "VLLM_SERVER_DEV_MODE": "1"}
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        wait_http(f"http://127.0.0.1:{self.port}/health", self.proc)
        from openai import OpenAI

        self.client = OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key="none", timeout=600)

    def reset_prefix_cache(self):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/reset_prefix_cache", method="POST", data=b"")
        urllib.request.urlopen(req).read()

    def tier_hits(self) -> dict[str, float]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics").read().decode()
        hits: dict[str, float] = {}
        for m in re.finditer(r'^tierkv_vllm_tier_hits_total\{[^}]*tier="([^"]+)"[^}]*\} ([0-9.e+]+)$', text, re.M):
            hits[m.group(1)] = hits.get(m.group(1), 0) + float(m.group(2))
        return hits

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def complete(client, prompt: str, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    ttft, text, usage = None, [], None
    stream = client.completions.create(model="m", prompt=prompt, max_tokens=max_tokens, temperature=0.0,
                                       stream=True, stream_options={"include_usage": True},
                                       extra_body={"ignore_eos": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].text and ttft is None:
            ttft = time.perf_counter() - t0
        if chunk.choices:
            text.append(chunk.choices[0].text)
        if chunk.usage is not None:
            usage = chunk.usage
    details = getattr(usage, "prompt_tokens_details", None)
    return {
        "ttft": ttft if ttft is not None else time.perf_counter() - t0,
        "seconds": time.perf_counter() - t0,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "cached_tokens": (details.cached_tokens or 0) if details else 0,
        "text": "".join(text),
    }


def words(seed: int, n: int) -> str:
    vocab = ("memory cache tier block token model layer prefill decode host disk object network "
             "latency bandwidth request session document question answer system engine key value").split()
    x = seed * 2654435761 % 2**32
    out = []
    for _ in range(n):
        x = (x * 1103515245 + 12345) % 2**31
        out.append(vocab[x % len(vocab)])
    return " ".join(out)


def run_chat(client, users: int, turns: int, answer_tokens: int) -> list[dict]:
    system = "You are a helpful assistant for storage systems. " + words(1, 220)
    out, sessions = [], [system for _ in range(users)]
    for t in range(turns):
        for u in range(users):
            sessions[u] += f"\nUser: {words(100 + u * 10 + t, 90)}\nAssistant:"
            r = complete(client, sessions[u], answer_tokens)
            sessions[u] += r["text"]
            out.append(r)
    return out


def run_docqa(client, docs: int, questions: int, doc_words: int) -> list[dict]:
    out = []
    for d in range(docs):
        doc = f"Document {d}. " + words(1000 + d, doc_words)
        for q in range(questions):
            out.append(complete(client, f"{doc}\nQuestion {q}: {words(5000 + d * 10 + q, 12)}?\nAnswer:", 16))
    return out


def run_unique(client, n: int, doc_words: int) -> list[dict]:
    return [complete(client, f"Note {i}. " + words(90000 + i, doc_words), 16) for i in range(n)]


def summarize(results: list[dict], wall: float) -> dict:
    ttfts = sorted(r["ttft"] for r in results)
    prompt = sum(r["prompt_tokens"] for r in results)
    return {
        "requests": len(results),
        "ttft_p50_ms": 1000 * statistics.median(ttfts),
        "ttft_p99_ms": 1000 * ttfts[min(len(ttfts) - 1, int(round(0.99 * (len(ttfts) - 1))))],
        "tokens_per_s": (prompt + sum(r["completion_tokens"] for r in results)) / wall,
        "prompt_tokens": prompt,
        "cached_share": sum(r["cached_tokens"] for r in results) / max(prompt, 1),
    }


def workload(spec, server, name) -> dict:
    q = spec["quick"]
    before = server.tier_hits()
    t0 = time.perf_counter()
    if name == "chat":
        res = run_chat(server.client, 2 if q else 3, 3 if q else 4, 24)
    elif name == "docqa":
        res = run_docqa(server.client, 2 if q else 3, 3, 640)
    else:
        res = run_unique(server.client, 4 if q else 8, 640)
    s = summarize(res, time.perf_counter() - t0)
    after = server.tier_hits()
    s["tier_hit_blocks"] = {t: after[t] - before.get(t, 0) for t in after if after[t] - before.get(t, 0)}
    return s


def tierkv_transfer(extra: dict, engine_id: str) -> dict:
    return {"kv_connector": "TierkvConnector", "kv_connector_module_path": "tierkv.vllm", "kv_role": "kv_both",
            "engine_id": engine_id, "kv_connector_extra_config": extra}


def store_config(root: Path) -> dict:
    return {"data_dir": str(root), "tier": [
        {"kind": "host", "capacity": "1GiB"},
        {"kind": "disk", "capacity": "2GiB", "write_through": True, "path": "disk"},
    ]}


def bench_setups(spec) -> list[dict]:
    work = Path(spec["work"])
    rows = []

    def row(setup, wl, phase, s):
        s.update(setup=setup, workload=wl, phase=phase)
        rows.append(s)
        print(f"{setup:>24} {wl:>6} {phase:>16}: TTFT p50 {s['ttft_p50_ms']:8.1f} ms p99 {s['ttft_p99_ms']:8.1f} ms, "
              f"{s['tokens_per_s']:7.1f} tok/s, cached {100 * s['cached_share']:5.1f}%, tierkv hits {s['tier_hit_blocks']}",
              file=sys.stderr, flush=True)

    def two_passes(setup, server, reset_between=True, phase2="warm"):
        for wl in ("chat", "docqa"):
            row(setup, wl, "first", workload(spec, server, wl))
            if reset_between:
                server.reset_prefix_cache()
            row(setup, wl, phase2, workload(spec, server, wl))

    # 1. No reuse at all.
    srv = Server(spec, "no-cache", prefix_cache=False)
    for wl in ("chat", "docqa", "unique"):
        row("vllm, no prefix cache", wl, "cold", workload(spec, srv, wl))
    srv.stop()
    # 2. vLLM's own prefix cache (the second pass hits it).
    srv = Server(spec, "prefix")
    row("vllm prefix cache", "unique", "cold", workload(spec, srv, "unique"))
    two_passes("vllm prefix cache", srv, reset_between=False, phase2="warm (vllm)")
    srv.stop()
    # 3. TierkvConnector, embedded: warm from host, then from disk after a restart.
    root = work / "tierkv-embedded"
    shutil.rmtree(root, ignore_errors=True)
    extra = {"config": store_config(root), "rendezvous_dir": str(work / "rv")}
    srv = Server(spec, "tierkv-embedded", transfer=tierkv_transfer(extra, "bench-embedded"))
    row("tierkv embedded", "unique", "cold", workload(spec, srv, "unique"))
    two_passes("tierkv embedded", srv, phase2="warm (host)")
    srv.stop()
    srv = Server(spec, "tierkv-embedded-restart", transfer=tierkv_transfer(extra, "bench-embedded-2"))
    for wl in ("chat", "docqa"):
        row("tierkv embedded", wl, "restart (disk)", workload(spec, srv, wl))
    srv.stop()
    # 4. TierkvConnector through a sidecar.
    side_root = work / "tierkv-sidecar"
    shutil.rmtree(side_root, ignore_errors=True)
    side_root.mkdir(parents=True)
    (side_root / "serve.toml").write_text('slot_bytes = "4MiB"\n[[tier]]\nkind = "host"\ncapacity = "1GiB"\n')
    port = free_port()
    sidecar = subprocess.Popen([spec["tierkv"], "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(side_root),
                                "--config", str(side_root / "serve.toml")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    extra = {"sidecar": f"127.0.0.1:{port}", "rendezvous_dir": str(work / "rv")}
    srv = Server(spec, "tierkv-sidecar", transfer=tierkv_transfer(extra, "bench-sidecar"))
    two_passes("tierkv sidecar", srv, phase2="warm (sidecar)")
    srv.stop()
    sidecar.terminate()
    sidecar.wait()
    # 5. vLLM's ExampleConnector (files per layer).
    ex_dir = work / "example-connector"
    shutil.rmtree(ex_dir, ignore_errors=True)
    ex_dir.mkdir(parents=True)
    srv = Server(spec, "example", transfer={"kv_connector": "ExampleConnector", "kv_role": "kv_both",
                                            "kv_connector_extra_config": {"shared_storage_path": str(ex_dir)}})
    two_passes("ExampleConnector", srv, phase2="warm (files)")
    srv.stop()
    return rows


def bench_block_loads(spec) -> list[dict]:
    """Whole-block loads from the host tier into registered memory beside memmove."""
    import tierkv

    layers, heads, dim, block = 30, 3, 64, 128  # SmolLM2-135M, vLLM CPU, bf16
    ns = tierkv.Namespace("bench", layers, heads, dim, "bf16", block, engine_layout="CPU_ATTN/vec")
    nbytes = ns.block_bytes
    rows = []
    for n in (8, 32):
        store = tierkv.open_store({"data_dir": str(Path(spec["work"]) / f"loads-{n}"),
                                   "tier": [{"kind": "host", "capacity": f"{(n + 2) * 4}MiB"}]},
                                  min_slot_bytes=nbytes)
        src = (ctypes.c_ubyte * (n * nbytes))()
        dst = (ctypes.c_ubyte * (n * nbytes))()
        ctypes.memset(src, 7, len(src))
        s_addr, d_addr = ctypes.addressof(src), ctypes.addressof(dst)
        tierkv.register_memory(s_addr, len(src))
        tierkv.register_memory(d_addr, len(dst))
        hashes = ns.hash_blocks(list(range(n * block)))
        for i, h in enumerate(hashes):
            store.put_from(ns, h, [(s_addr + i * nbytes, nbytes)])
        # vLLM's CPU layout: one run per layer per block.
        per_layer = nbytes // layers
        blocks = [(h, [(d_addr + i * nbytes + l * per_layer, per_layer) for l in range(layers)]) for i, h in enumerate(hashes)]
        t_load, t_copy = [], []
        for _ in range(9):
            t0 = time.perf_counter()
            assert store.load(ns, blocks) == n
            t_load.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for i in range(n):
                for l in range(layers):
                    ctypes.memmove(d_addr + i * nbytes + l * per_layer, s_addr + i * nbytes + l * per_layer, per_layer)
            t_copy.append(time.perf_counter() - t0)
        load, copy = statistics.median(t_load), statistics.median(t_copy)
        rows.append({"blocks": n, "bytes": n * nbytes, "load_gbps": n * nbytes / load / 1e9,
                     "memcpy_gbps": n * nbytes / copy / 1e9, "ratio": copy / load,
                     "load_ms": load * 1000, "memcpy_ms": copy * 1000})
        print(f"load {n} blocks ({n * nbytes / 2**20:.0f} MiB): {rows[-1]['load_gbps']:.2f} GB/s, "
              f"memcpy {rows[-1]['memcpy_gbps']:.2f} GB/s, ratio {rows[-1]['ratio']:.2f}x", file=sys.stderr)
        tierkv.unregister_memory(s_addr)
        tierkv.unregister_memory(d_addr)
        store.close()
    return rows


def main() -> None:
    spec = json.load(open(sys.argv[1]))
    Path(spec["work"]).mkdir(parents=True, exist_ok=True)
    loads = bench_block_loads(spec)
    rows = [] if spec.get("loads_only") else bench_setups(spec)
    json.dump({"setups": rows, "block_loads": loads}, sys.stdout)


if __name__ == "__main__":
    main()
