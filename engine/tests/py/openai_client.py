"""Drives a running `tierkv engine` with the official `openai` client and raw HTTP.

usage: openai_client.py BASE_URL MODEL_ID   (BASE_URL like http://127.0.0.1:8000/v1)
Asserts; exits non-zero with a message on the first failure.
"""
import json
import sys
import urllib.error
import urllib.request

import openai

base, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base, api_key="unused")

# Models.
ids = [m.id for m in client.models.list().data]
assert ids == [model], ids

# Chat, non-streaming, greedy: deterministic and usage filled in.
msgs = [{"role": "user", "content": "Name three colors of the rainbow."}]
r1 = client.chat.completions.create(model=model, messages=msgs, max_tokens=20, temperature=0)
r2 = client.chat.completions.create(model=model, messages=msgs, max_tokens=20, temperature=0)
text = r1.choices[0].message.content
assert text and text == r2.choices[0].message.content, (text, r2.choices[0].message.content)
assert r1.choices[0].finish_reason in ("stop", "length"), r1.choices[0].finish_reason
u1, u2 = r1.usage, r2.usage
assert u1.prompt_tokens > 16 and u1.completion_tokens <= 20, u1
assert u1.total_tokens == u1.prompt_tokens + u1.completion_tokens, u1
# The second identical request reuses the prompt's full blocks.
assert u2.prompt_tokens_details.cached_tokens >= 16, u2

# Streaming gives the same text, then a usage chunk.
chunks = list(client.chat.completions.create(
    model=model, messages=msgs, max_tokens=20, temperature=0, stream=True,
    stream_options={"include_usage": True}))
streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert streamed == text, (streamed, text)
finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
assert finals == [r1.choices[0].finish_reason], finals
assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == u1.completion_tokens

# Stop strings cut the text before the stop string.
words = text.split()
if len(words) >= 3:
    stop = words[2]
    r = client.chat.completions.create(model=model, messages=msgs, max_tokens=20, temperature=0, stop=[stop])
    assert stop not in r.choices[0].message.content and r.choices[0].finish_reason == "stop", r
    assert text.startswith(r.choices[0].message.content), (r.choices[0].message.content, text)

# Completions, sampled with a seed: reproducible.
c1 = client.completions.create(model=model, prompt="Once upon a time", max_tokens=12, temperature=0.8, top_p=0.9, seed=7)
c2 = client.completions.create(model=model, prompt="Once upon a time", max_tokens=12, temperature=0.8, top_p=0.9, seed=7)
assert c1.choices[0].text == c2.choices[0].text, (c1.choices[0].text, c2.choices[0].text)
assert c1.usage.completion_tokens == 12 and c1.choices[0].finish_reason == "length", c1
sc = list(client.completions.create(model=model, prompt="Once upon a time", max_tokens=12, temperature=0.8, top_p=0.9, seed=7, stream=True))
assert "".join(c.choices[0].text for c in sc if c.choices) == c1.choices[0].text

# Errors: OpenAI-style bodies and statuses.
def expect(status_cls, code, **kw):
    try:
        client.chat.completions.create(**kw)
    except status_cls as e:
        assert e.status_code == code, (e.status_code, code)
        body = e.response.json()
        assert body["error"]["message"] and body["error"]["type"], body
        return body
    raise AssertionError(f"no error for {kw}")

expect(openai.NotFoundError, 404, model="no-such-model", messages=msgs)
expect(openai.BadRequestError, 400, model=model, messages=msgs, temperature=5)
expect(openai.BadRequestError, 400, model=model, messages=msgs, max_tokens=0)
expect(openai.BadRequestError, 400, model=model, messages=[{"role": "user", "content": "w " * 9000}])
expect(openai.BadRequestError, 400, model=model, messages=[])

def raw(path, data, ctype="application/json"):
    req = urllib.request.Request(base.rsplit("/v1", 1)[0] + path, data=data, headers={"content-type": ctype})
    try:
        with urllib.request.urlopen(req) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()

status, body = raw("/v1/chat/completions", b"{not json")
assert status == 400 and "invalid JSON" in json.loads(body)["error"]["message"], (status, body)
# A prompt too long for the context in bytes alone is refused before it is tokenized.
big = json.dumps({"model": model, "prompt": "w " * 700_000, "max_tokens": 1}).encode()
status, body = raw("/v1/completions", big)
err = json.loads(body)["error"]
assert status == 400 and "bytes" in err["message"] and err["type"] == "invalid_request_error", (status, body[:300])
# A body over the size limit gets a JSON error too.
status, body = raw("/v1/completions", b" " * (3 << 20))
assert status == 413 and json.loads(body)["error"]["type"] == "invalid_request_error", (status, body[:300])
status, body = raw("/health", None)
assert status == 200, status
status, body = raw("/metrics", None)
text = body.decode()
for name in ["tierkv_engine_time_to_first_token_seconds", "tierkv_engine_inter_token_latency_seconds",
             "tierkv_engine_prompt_tokens_total", "tierkv_engine_blocks_published_total",
             "tierkv_engine_kv_pool_blocks", "tierkv_tier_hits_total"]:
    assert name in text, name
assert 'tierkv_engine_prompt_tokens_total{source="engine"}' in text, text
print("ok")
