"""llama.cpp's prompt-eval and decode speed for a GGUF, through llama-cpp-python.

usage: llama_cpp_bench.py MODEL.gguf DECODE_TOKENS THREADS < prompts.json
(prompts.json: a JSON list of token-id lists). Prints JSON:
{"prompt_eval": [{"tokens": n, "seconds": s}], "decode": {"tokens": n, "seconds": s}}
Exit 3 if llama_cpp is not installed.
"""
import json
import sys
import time

try:
    import llama_cpp
except ImportError:
    sys.exit(3)
import numpy as np


def last_logits(llm):
    # With logits_all=False llama-cpp-python keeps no scores; read the context's.
    return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))

model, n_dec, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
prompts = json.load(sys.stdin)
ctx = max(len(p) for p in prompts) + n_dec + 16
llm = llama_cpp.Llama(model_path=model, n_ctx=ctx, n_batch=512, n_threads=threads,
                      n_threads_batch=threads, logits_all=False, verbose=False)
out = {"prompt_eval": []}
for p in prompts:
    llm.reset()
    t = time.perf_counter()
    llm.eval(p)
    out["prompt_eval"].append({"tokens": len(p), "seconds": time.perf_counter() - t})
# Decode after the first prompt's first 32 tokens.
llm.reset()
llm.eval(prompts[0][:32])
tok = int(np.argmax(last_logits(llm)))
t = time.perf_counter()
for _ in range(n_dec):
    llm.eval([tok])
    tok = int(np.argmax(last_logits(llm)))
out["decode"] = {"tokens": n_dec, "seconds": time.perf_counter() - t}
print(json.dumps(out))
