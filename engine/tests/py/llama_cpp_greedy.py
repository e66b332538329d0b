"""Greedy continuations of token-id prompts by llama.cpp (llama-cpp-python).

usage: llama_cpp_greedy.py MODEL.gguf N_TOKENS < prompts.json  (a JSON list of id lists)
prints a JSON list of generated id lists. Exit 3 if llama_cpp is not installed.
"""
import json
import sys

try:
    import llama_cpp
except ImportError:
    sys.exit(3)

import numpy as np


def last_logits(llm):
    # With logits_all=False llama-cpp-python keeps no scores; read the context's.
    return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))

model, n = sys.argv[1], int(sys.argv[2])
prompts = json.load(sys.stdin)
llm = llama_cpp.Llama(model_path=model, n_ctx=4096, n_batch=512, n_threads=2,
                      logits_all=False, verbose=False)
out = []
for prompt in prompts:
    llm.reset()
    llm.eval(prompt)
    gen = []
    for _ in range(n):
        logits = last_logits(llm)
        tok = int(np.argmax(logits))
        gen.append(tok)
        llm.eval([tok])
    out.append(gen)
print(json.dumps(out))
