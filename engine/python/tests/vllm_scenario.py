"""Runs one vLLM process through a list of steps and writes what it saw as JSON.

    python vllm_scenario.py SPEC.json OUT.json

SPEC: {"model": DIR, "engine_id": ID, "extra": {...kv_connector_extra_config} | null
(null: no connector), "prompts": {name: [token ids]}, "max_tokens": N, "steps": [...]}
with steps
    {"do": "generate", "label": L, "prompts": [name, ...], "salt": S?}   (one batch)
    {"do": "reset"}                                        (vLLM's own prefix cache)
    {"do": "store_stats", "label": L}                      (the worker store's figures)
OUT: {label: {"tokens": [[...]], "cached": [n, ...], "seconds": s} | stats}.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> None:
    spec = json.load(open(sys.argv[1]))
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from vllm import LLM, SamplingParams

    kwargs = {}
    if spec.get("extra") is not None:
        from vllm.config import KVTransferConfig

        kwargs["kv_transfer_config"] = KVTransferConfig(
            kv_connector="TierkvConnector",
            kv_connector_module_path="tierkv.vllm",
            kv_role="kv_both",
            engine_id=spec["engine_id"],
            kv_connector_extra_config=spec["extra"],
        )
    llm = LLM(
        model=spec["model"],
        dtype="bfloat16",
        max_model_len=spec.get("max_model_len", 1024),
        max_num_seqs=4,
        enforce_eager=True,
        seed=0,
        enable_prefix_caching=spec.get("prefix_caching", True),
        **kwargs,
    )
    params = SamplingParams(temperature=0.0, max_tokens=spec.get("max_tokens", 16), ignore_eos=True)
    prompts = spec["prompts"]
    out: dict = {}
    for step in spec["steps"]:
        if step["do"] == "reset":
            llm.reset_prefix_cache()
        elif step["do"] == "generate":
            batch = []
            for name in step["prompts"]:
                p = {"prompt_token_ids": prompts[name]}
                if step.get("salt") is not None:
                    p["cache_salt"] = step["salt"]
                batch.append(p)
            t0 = time.perf_counter()
            results = llm.generate(batch, params, use_tqdm=False)
            out[step["label"]] = {
                "tokens": [list(r.outputs[0].token_ids) for r in results],
                "cached": [r.num_cached_tokens for r in results],
                "seconds": time.perf_counter() - t0,
            }
        elif step["do"] == "store_stats":
            import tierkv
            from tierkv.vllm import rendezvous

            info = rendezvous.wait_for(
                rendezvous.path(spec["extra"].get("rendezvous_dir", rendezvous_default()), spec["engine_id"], 0),
                5,
            )
            store = tierkv.connect(info["addr"], token=info.get("token"))
            out[step["label"]] = {"stats": store.stats(), "namespace": info["namespace"]}
        else:
            raise SystemExit(f"unknown step {step}")
    with open(sys.argv[2], "w") as f:
        json.dump(out, f)
    del llm


def rendezvous_default() -> str:
    from tierkv.vllm.config import ConnectorConfig

    return ConnectorConfig().rendezvous_dir


if __name__ == "__main__":
    main()
