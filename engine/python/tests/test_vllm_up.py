"""`tierkv up --engine vllm`: one command starts etcd, a prefill and a decode `vllm serve`
with TierkvConnector (each with its embedded store's block service) and the frontend,
the workers discovered through etcd; a long prompt is prefilled on the prefill worker
and its blocks fetched by the decode worker; Ctrl-C stops every process."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from conftest import free_port

BLOCK = 128  # vLLM CPU's default block size (`tierkv up` passes none)


def our_processes(tag: str) -> list[int]:
    """Live processes whose command line holds `tag` (the cluster's engine ids)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().split(") ", 1)[1][0]
        except OSError:
            continue
        if tag.encode() in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids


def test_tierkv_up_runs_and_stops_a_vllm_cluster(tierkv_bin, hf_model, prompts, tmp_path):
    port = free_port()
    data = tmp_path / "cluster"
    log = open(tmp_path / "up.log", "w")
    proc = subprocess.Popen(
        [str(tierkv_bin), "up", "--engine", "vllm", "--prefill", "1", "--decode", "1", "--model", hf_model,
         "--python", sys.executable, "--listen", f"127.0.0.1:{port}", "--data-dir", str(data), "--start-etcd",
         "--remote-prefill-min-tokens", "200",
         "--vllm-args", "--dtype bfloat16 --max-model-len 1024 --enforce-eager"],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"},
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    printed = []
    try:
        deadline = time.monotonic() + 600
        while True:
            line = lines.get(timeout=max(1.0, deadline - time.monotonic()))
            assert line is not None, "tierkv up exited:\n" + "".join(printed) + (tmp_path / "up.log").read_text()[-4000:]
            printed.append(line)
            if line.startswith("tierkv up: frontend"):
                break
        assert any("etcd on http://" in l for l in printed)
        assert any("prefill-0 (vllm prefill)" in l for l in printed), printed
        assert len(our_processes("tierkv-up-")) >= 2, "both vLLM workers run"

        prompt = prompts["f0"]
        body = {"model": Path(hf_model).name, "prompt": prompt, "max_tokens": 8, "temperature": 0.0, "ignore_eos": True}
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=300) as r:
            reply = json.loads(r.read())
        assert reply["usage"]["completion_tokens"] == 8
        # The decode worker loaded every full block but the last token's.
        assert reply["usage"]["prompt_tokens_details"]["cached_tokens"] == (len(prompt) - 1) // BLOCK * BLOCK
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
            metrics = r.read().decode()
        assert 'tierkv_frontend_prefill_decisions_total{decision="remote"} 1' in metrics
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        log.close()
    assert rc == 0, (tmp_path / "up.log").read_text()[-4000:]
    deadline = time.monotonic() + 60
    while our_processes("tierkv-up-") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert our_processes("tierkv-up-") == [], "every vLLM process stopped"
