"""End-to-end tests of `ktransformers serve` with the official `openai` Python package.

Starts the server binary (`$KTRANSFORMERS_BIN`, default `.build/debug/ktransformers`) on a free loopback port
with the default model and checks: chat and completions, streaming and not, stop strings, max_tokens,
logprobs, exact usage (against `ktransformers tokenize`), API keys, a concurrent soak with clients
disconnecting mid-stream (every KV page back in the pool afterwards), hostile input, and graceful shutdown.
All traffic goes to 127.0.0.1 only; every loop is bounded.
"""
import concurrent.futures
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import openai
import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("KTRANSFORMERS_BIN", str(ROOT / ".build" / "debug" / "ktransformers"))
HOST = "127.0.0.1"
CTX = 512                # --ctx-size: small, so a too-long prompt is cheap to build
MAX_BODY = 1 << 20       # --max-body-bytes
REQUEST_TIMEOUT = 4      # --request-timeout (slow-loris)
GEMMA_USER = "<start_of_turn>user\n{}<end_of_turn>\n<start_of_turn>model\n"


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, *extra):
        self.port = free_port()
        self.base = f"http://{HOST}:{self.port}"
        self.log = open(f"/tmp/ktransformers-e2e-{self.port}.log", "w+")
        self.proc = subprocess.Popen(
            [BIN, "serve", "--host", HOST, "--port", str(self.port), "--ctx-size", str(CTX),
             "--max-body-bytes", str(MAX_BODY), "--request-timeout", str(REQUEST_TIMEOUT),
             "--max-new-tokens", "32", "--shutdown-grace", "20", *extra],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while True:
            assert self.proc.poll() is None, "server exited at start:\n" + self.output()
            try:
                status, _ = self.get("/health")
                if status == 200:
                    break
            except OSError:
                pass
            assert time.time() < deadline, "server did not start:\n" + self.output()
            time.sleep(0.2)
        self.model = self.json("/v1/models", headers=self.auth_headers(extra))["data"][0]["id"]

    @staticmethod
    def auth_headers(extra):
        extra = list(extra)
        if "--api-key" in extra:
            return {"Authorization": "Bearer " + extra[extra.index("--api-key") + 1]}
        return {}

    def output(self):
        return self.full_output()[-4000:]

    def full_output(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def request(self, method, path, body=None, headers=None, timeout=60):
        c = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            h = {"Content-Type": "application/json"}
            h.update(headers or {})
            if isinstance(body, (dict, list)):
                body = json.dumps(body)
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def get(self, path, headers=None):
        return self.request("GET", path, headers=headers)

    def json(self, path, headers=None):
        status, body = self.get(path, headers)
        assert status == 200, body
        return json.loads(body)

    def health(self):
        return self.json("/health")

    def client(self, key="unused"):
        return openai.OpenAI(base_url=self.base + "/v1", api_key=key, max_retries=0, timeout=120)

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("server did not stop on signal:\n" + self.output())
        return self.proc.returncode


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    code = s.stop()
    assert code == 0, s.output()


def tokenize(text, bos=True):
    args = [BIN, "tokenize", "--text", text, "--json"] + ([] if bos else ["--no-bos"])
    return json.loads(subprocess.run(args, check=True, capture_output=True, text=True).stdout)["ids"]


def chat(client, model, content, **kw):
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}], **kw)


def wait_idle(server, timeout=10):
    """Waits until no request runs or waits; returns the last /health."""
    deadline = time.time() + timeout
    while True:
        h = server.health()
        e = h["engine"]
        if e["running"] == 0 and e["waiting"] == 0 and e["kv_pages_free"] == e["kv_pages_total"]:
            return h
        if time.time() > deadline:
            return h
        time.sleep(0.1)


# ---------------------------------------------------------------------------------------------------------------
# Basic API

def test_health_and_models(server):
    h = server.health()
    assert h["status"] == "ok"
    assert h["engine"]["kv_pages_total"] > 0
    models = server.client().models.list()
    ids = [m.id for m in models.data]
    assert ids == [server.model]
    assert server.model.endswith(".gguf")


def test_tokenize_and_detokenize(server):
    text = "Hello there, tokenizer!"
    status, body = server.request("POST", "/tokenize", {"content": text})
    assert status == 200, body
    r = json.loads(body)
    assert r["tokens"] == tokenize(text, bos=False)
    assert r["count"] == len(r["tokens"]) and r["max_model_len"] > 0
    # vLLM's spelling, BOS added on request, pieces.
    status, body = server.request("POST", "/tokenize", {"prompt": text, "add_special": True, "with_pieces": True})
    assert status == 200, body
    pieces = json.loads(body)["tokens"]
    assert [p["id"] for p in pieces] == tokenize(text, bos=True)
    assert "".join(p["piece"] for p in pieces[1:]) == text
    status, body = server.request("POST", "/detokenize", {"tokens": r["tokens"]})
    assert status == 200, body
    assert json.loads(body)["content"] == text
    # Bad input: a clear 400 with an OpenAI-style error body.
    for path, payload in [("/tokenize", {}), ("/detokenize", {"tokens": [-1]}), ("/detokenize", {"tokens": [10 ** 9]}),
                          ("/detokenize", {})]:
        status, body = server.request("POST", path, payload)
        assert status == 400, (path, payload, body)
        assert json.loads(body)["error"]["type"] == "invalid_request_error"


def test_bench_serve_prompts_have_the_asked_length(server):
    # bench serve sizes its synthetic prompts with the server's /tokenize: about --input-len tokens whatever the
    # vocabulary (the chat template adds its own few).
    out = subprocess.run([BIN, "bench", "serve", "--url", server.base, "--concurrency", "2", "--requests", "4",
                          "--input-len", "50", "--output-len", "2", "--endpoint", "completions", "--json"],
                         check=True, capture_output=True, text=True)
    r = json.loads(out.stdout)
    assert r["completed"] == 4, out.stdout
    assert 4 * 49 <= r["input_tokens"] <= 4 * 52, r


def test_chat_non_streaming_usage_exact(server):
    r = chat(server.client(), server.model, "What is the capital of France?", max_tokens=12)
    c = r.choices[0]
    assert r.object == "chat.completion"
    assert c.message.role == "assistant"
    assert c.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens == len(tokenize(GEMMA_USER.format("What is the capital of France?")))
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert 1 <= r.usage.completion_tokens <= 12
    if c.finish_reason == "length":
        assert r.usage.completion_tokens == 12


def test_prefix_cache_second_turn_reuses_the_first(server):
    """A second turn that resends the first turn's messages gets their full KV pages from the prefix cache: the
    official client reads usage.prompt_tokens_details.cached_tokens, /health counts the hit and shows every page
    free or cached afterwards, and a streamed repeat reports the figure too and gives the same answer."""
    client = server.client()
    first = "Tell me about the history of the city of Paris, in France, in a few words please. " * 3
    r1 = chat(client, server.model, first, max_tokens=8)
    assert r1.usage.prompt_tokens_details.cached_tokens == 0
    before = wait_idle(server)["engine"]
    messages = [{"role": "user", "content": first}, {"role": "assistant", "content": r1.choices[0].message.content},
                {"role": "user", "content": "And of Lyon?"}]
    r2 = client.chat.completions.create(model=server.model, messages=messages, max_tokens=8, temperature=0)
    cached = r2.usage.prompt_tokens_details.cached_tokens
    page = before["kv_page_size"]
    assert cached > 0 and cached % page == 0 and cached < r2.usage.prompt_tokens
    assert cached >= (r1.usage.prompt_tokens // page) * page - page
    after = wait_idle(server)["engine"]
    assert after["prefix_cache_hit_tokens"] - before["prefix_cache_hit_tokens"] == cached
    assert after["kv_pages_cached"] > 0 and after["kv_pages_free"] == after["kv_pages_total"]
    # Streaming reports the same figure in its usage chunk.
    stream = client.chat.completions.create(model=server.model, messages=messages, max_tokens=8, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens >= cached
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == r2.choices[0].message.content


def test_chat_streaming_matches_non_streaming(server):
    client = server.client()
    full = chat(client, server.model, "Write one sentence about the sea.", max_tokens=16)
    stream = chat(client, server.model, "Write one sentence about the sea.", max_tokens=16, stream=True,
                  stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert text == full.choices[0].message.content
    assert finishes == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert all(ch.usage is None for ch in chunks[:-1])


def test_streaming_without_usage_has_done(server):
    c = socket.create_connection((HOST, server.port), timeout=30)
    body = json.dumps({"model": server.model, "prompt": "Hello", "max_tokens": 3, "stream": True}).encode()
    c.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
              + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    data = b""
    while True:
        b = c.recv(65536)
        if not b:
            break
        data += b
    c.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    assert b"200" in head.split(b"\r\n")[0]
    assert b"text/event-stream" in head.lower()
    assert b"data: [DONE]" in rest
    assert b'"usage"' not in rest


def test_completions_usage_and_max_tokens(server):
    client = server.client()
    prompt = "The quick brown fox"
    r = client.completions.create(model=server.model, prompt=prompt, max_tokens=7, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.object == "text_completion"
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == len(tokenize(prompt))
    assert r.usage.completion_tokens == 7
    # max_completion_tokens is accepted as well (chat).
    r2 = chat(client, server.model, "Tell me a story.", max_completion_tokens=5, extra_body={"ignore_eos": True})
    assert r2.usage.completion_tokens == 5 and r2.choices[0].finish_reason == "length"


def test_completions_streaming(server):
    client = server.client()
    full = client.completions.create(model=server.model, prompt="Once upon a time", max_tokens=10, temperature=0)
    chunks = list(client.completions.create(model=server.model, prompt="Once upon a time", max_tokens=10,
                                            temperature=0, stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    assert text == full.choices[0].text
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_token_id_prompt(server):
    ids = tokenize("The quick brown fox")
    r = server.client().completions.create(model=server.model, prompt=ids, max_tokens=4, temperature=0)
    r2 = server.client().completions.create(model=server.model, prompt="The quick brown fox", max_tokens=4, temperature=0)
    assert r.choices[0].text == r2.choices[0].text
    assert r.usage.prompt_tokens == len(ids)


def test_chat_logprobs(server):
    r = chat(server.client(), server.model, "Name three colors.", max_tokens=10, logprobs=True, top_logprobs=3,
             extra_body={"ignore_eos": True})
    c = r.choices[0]
    content = c.logprobs.content
    assert len(content) == r.usage.completion_tokens == 10
    for e in content:
        assert e.logprob <= 0
        assert len(e.top_logprobs) == 3
        assert e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob >= e.top_logprobs[2].logprob
        # greedy: the sampled token is the most likely one
        assert abs(e.top_logprobs[0].logprob - e.logprob) < 1e-4
    joined = b"".join(bytes(e.bytes) for e in content).decode("utf-8", errors="replace")
    assert joined == c.message.content


def test_completion_logprobs(server):
    r = server.client().completions.create(model=server.model, prompt="One, two, three,", max_tokens=6,
                                           temperature=0, logprobs=2, extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    assert "".join(lp.tokens) == r.choices[0].text
    assert lp.text_offset[0] == 0
    assert all(len(t) <= 2 for t in lp.top_logprobs)


def test_seeded_sampling_repeats(server):
    client = server.client()
    a = chat(client, server.model, "Say something.", max_tokens=12, temperature=1.0, seed=1234)
    b = chat(client, server.model, "Say something.", max_tokens=12, temperature=1.0, seed=1234)
    assert a.choices[0].message.content == b.choices[0].message.content
    r = chat(client, server.model, "Say something.", max_tokens=8, temperature=0.7, top_p=0.9,
             presence_penalty=0.5, frequency_penalty=0.5, seed=7,
             extra_body={"repetition_penalty": 1.1, "top_k": 20, "min_p": 0.05})
    assert r.usage.completion_tokens >= 1


def stop_case(server, stream):
    """A stop string spanning a token boundary, taken from the greedy continuation itself."""
    client = server.client()
    prompt = "List the days of the week, separated by commas:"
    base = client.completions.create(model=server.model, prompt=prompt, max_tokens=24, temperature=0,
                                     logprobs=0, extra_body={"ignore_eos": True})
    toks = base.choices[0].logprobs.tokens
    text = base.choices[0].text
    # pick a boundary in the middle with at least 2 characters on each side
    for k in range(3, len(toks) - 3):
        left = "".join(toks[:k])
        a, b = left[-2:], text[len(left):len(left) + 2]
        if len(a.strip()) == 2 and len(b) == 2:
            stop = a + b
            break
    else:
        stop = text[len(text) // 2: len(text) // 2 + 3]
    expected = text[: text.index(stop)]
    if stream:
        chunks = list(client.completions.create(model=server.model, prompt=prompt, max_tokens=24, temperature=0,
                                                stop=[stop, "never-occurs-xyz"], stream=True,
                                                extra_body={"ignore_eos": True}))
        got = "".join(ch.choices[0].text for ch in chunks if ch.choices)
        finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    else:
        r = client.completions.create(model=server.model, prompt=prompt, max_tokens=24, temperature=0,
                                      stop=[stop, "never-occurs-xyz"], extra_body={"ignore_eos": True})
        got, finish = r.choices[0].text, [r.choices[0].finish_reason]
        assert r.usage.completion_tokens < 24
    assert got == expected, (stop, text)
    assert stop not in got
    assert finish == ["stop"]


def test_stop_string_non_streaming(server):
    stop_case(server, stream=False)


def test_stop_string_streaming(server):
    stop_case(server, stream=True)


def test_chat_stop_single_string(server):
    client = server.client()
    base = chat(client, server.model, "Count from one to ten in words.", max_tokens=20, extra_body={"ignore_eos": True})
    text = base.choices[0].message.content
    word = text.split()[1] if len(text.split()) > 2 else text[:2]
    r = chat(client, server.model, "Count from one to ten in words.", max_tokens=20, stop=word,
             extra_body={"ignore_eos": True})
    assert r.choices[0].message.content == text[: text.index(word)]
    assert r.choices[0].finish_reason == "stop"


# ---------------------------------------------------------------------------------------------------------------
# Errors

def error_of(status_body):
    status, body = status_body
    obj = json.loads(body)
    err = obj["error"]
    assert set(err) >= {"message", "type", "param", "code"}
    return status, err


def test_unknown_model_404(server):
    with pytest.raises(openai.NotFoundError) as e:
        chat(server.client(), "no-such-model", "hi", max_tokens=2)
    assert e.value.body["code"] == "model_not_found"
    # the file name without .gguf is an accepted alias
    r = chat(server.client(), server.model[:-5], "hi", max_tokens=2)
    assert r.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("body,param", [
    ('{"messages": "hi"}', "messages"),
    ('{"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}', "temperature"),
    ('{"messages": [{"role": "user", "content": "hi"}], "max_tokens": "10"}', "max_tokens"),
    ('{"messages": [{"role": "user", "content": "hi"}], "stop": 5}', "stop"),
    ('{"messages": [{"role": "user", "content": "hi"}], "logprobs": "yes"}', "logprobs"),
    ('{"messages": [{"role": "user", "content": 7}]}', "messages[0].content"),
    ('{"messages": [{"role": 1, "content": "hi"}]}', "messages[0].role"),
    ('{"messages": [{"content": "hi"}]}', "messages[0].role"),
    ('{"messages": [{"role": "wizard", "content": "hi"}]}', "messages[0].role"),
    ('{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1e300}', "max_tokens"),
    ('{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 123456789012345678901234567890}', "max_tokens"),
    ('{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}', "max_tokens"),
    ('{"messages": [{"role": "user", "content": "hi"}], "max_tokens": -5}', "max_tokens"),
    ('{"messages": [{"role": "user", "content": "hi"}], "temperature": 1e400}', "temperature"),
    ('{"messages": [{"role": "user", "content": "hi"}], "temperature": -1}', "temperature"),
    ('{"messages": [{"role": "user", "content": "hi"}], "top_p": 0}', "top_p"),
    ('{"messages": [{"role": "user", "content": "hi"}], "seed": 1208925819614629174706176}', "seed"),
    ('{"messages": [{"role": "user", "content": "hi"}], "logprobs": true, "top_logprobs": 1000}', "top_logprobs"),
    ('{"messages": [{"role": "user", "content": "hi"}], "n": 17}', "n"),
    ('{"messages": [{"role": "user", "content": "hi"}], "n": 0}', "n"),
    ('{"messages": [{"role": "user", "content": "hi"}], "logit_bias": {"99999999": 5}}', "logit_bias"),
    ('{"messages": [{"role": "user", "content": "hi"}], "tool_choice": "required"}', "tool_choice"),
    ('{"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "yaml"}}', "response_format.type"),
    ('{"messages": []}', "messages"),
    ('{}', "messages"),
    ('{"messages": [{"role": "user", "content": "hi"}], "stop": ["", "x"]}', "stop"),
])
def test_invalid_parameters_400(server, body, param):
    status, err = error_of(server.request("POST", "/v1/chat/completions", body))
    assert status == 400, err
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param, err


@pytest.mark.parametrize("body", [
    b"{not json", b"", b"[1, 2, 3]", b"null", b'"text"', b'{"messages": [{"role": "user", "content": "hi"}]',
    b'{"messages": [{"role": "user", "content": "\xff\xfe bad utf-8"}]}',
    b'{"messages": [{"role": "user", "content": "\xc3"}]}',
])
def test_malformed_bodies_400(server, body):
    status, err = error_of(server.request("POST", "/v1/chat/completions", body))
    assert status == 400, err


def test_completions_invalid(server):
    for body, param in [({"prompt": 5}, "prompt"), ({"prompt": [1, -3]}, "prompt"), ({"prompt": [10 ** 9]}, "prompt"),
                        ({"prompt": ["a", "b"]}, "prompt"), ({"prompt": "x", "logprobs": 50}, "logprobs"),
                        ({"prompt": "x", "echo": True}, "echo"), ({}, "prompt")]:
        status, err = error_of(server.request("POST", "/v1/completions", body))
        assert status == 400 and err["param"] == param, (body, err)


def test_prompt_too_long_400(server):
    with pytest.raises(openai.BadRequestError) as e:
        chat(server.client(), server.model, "hello " * (CTX + 10), max_tokens=2)
    assert e.value.body["code"] == "context_length_exceeded"
    status, err = error_of(server.request("POST", "/v1/completions", {"prompt": list(range(10, 10 + CTX))}))
    assert status == 400 and err["code"] == "context_length_exceeded"


def test_body_too_large_413(server):
    big = json.dumps({"model": server.model, "prompt": "x" * (MAX_BODY + 10)})
    status, err = error_of(server.request("POST", "/v1/completions", big))
    assert status == 413
    # chunked upload with no Content-Length: the limit still holds
    c = http.client.HTTPConnection(HOST, server.port, timeout=30)
    chunks = (("y" * 65536).encode() for _ in range(MAX_BODY // 65536 + 4))
    c.request("POST", "/v1/completions", body=chunks, headers={"Content-Type": "application/json"},
              encode_chunked=True)
    r = c.getresponse()
    assert r.status == 413
    c.close()


def test_deeply_nested_bodies_get_400_and_the_server_lives(server):
    """Bodies nested 100,000 deep (they used to crash the process through the recursive JSON decoder) get an
    OpenAI-style 400 on every JSON route, and the server answers normally afterwards."""
    n = 100_000
    bodies = ['{"messages": [{"role": "user", "content": "hi"}], "stop": ' + "[" * n + "]" * n + "}",
              '{"prompt": "hi", "x": ' + '{"a":' * n + "1" + "}" * n + "}",
              "[" * n + "]" * n]
    for path in ("/v1/chat/completions", "/v1/completions"):
        for body in bodies:
            status, raw = server.request("POST", path, body=body.encode())
            assert status == 400, (path, status, raw[:200])
            assert "more than 128 levels deep" in json.loads(raw)["error"]["message"]
    r = chat(server.client(), server.model, "Hello", max_tokens=2)
    assert r.usage.completion_tokens >= 1


def test_unknown_route_404(server):
    status, err = error_of(server.request("GET", "/v1/nothing"))
    assert status == 404


def test_empty_prompt_is_fine(server):
    r = server.client().completions.create(model=server.model, prompt="", max_tokens=2, temperature=0)
    assert r.usage.prompt_tokens == 1  # BOS only


# ---------------------------------------------------------------------------------------------------------------
# Concurrency, disconnects, hostile clients

SOAK_PROMPTS = ["Hello there", "What is two plus two?", "Name a fruit.", "Describe the moon."]
SOAK_MAX = 6


def stream_then_disconnect(port, model, prompt, after_chunks):
    s = socket.create_connection((HOST, port), timeout=60)
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 200,
                       "temperature": 0, "stream": True, "ignore_eos": True}).encode()
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    seen = b""
    while seen.count(b"data: ") < after_chunks:
        b = s.recv(4096)
        if not b:
            break
        seen += b
    s.close()


def post_then_disconnect(port, model, prompt):
    s = socket.create_connection((HOST, port), timeout=60)
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": 200, "temperature": 0,
                       "ignore_eos": True}).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    time.sleep(0.2)
    s.close()


def test_soak_with_disconnects(server):
    """200 requests from 8 concurrent clients, a third disconnecting mid-request; every completed answer is
    correct and every KV page returns to the pool."""
    client = server.client()
    expected = {p: chat(client, server.model, p, max_tokens=SOAK_MAX).choices[0].message.content for p in SOAK_PROMPTS}
    rng = random.Random(0)
    jobs = [(i, rng.choice(SOAK_PROMPTS)) for i in range(200)]
    failures = []
    counts = {"ok": 0, "dropped": 0}
    lock = threading.Lock()

    def work(job):
        i, prompt = job
        clients = server.client()
        try:
            if i % 3 == 0:
                if i % 2 == 0:
                    stream_then_disconnect(server.port, server.model, prompt, after_chunks=2 + i % 4)
                else:
                    post_then_disconnect(server.port, server.model, prompt)
                with lock:
                    counts["dropped"] += 1
                return
            if i % 2 == 0:
                chunks = list(chat(clients, server.model, prompt, max_tokens=SOAK_MAX, stream=True))
                text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
            else:
                text = chat(clients, server.model, prompt, max_tokens=SOAK_MAX).choices[0].message.content
            with lock:
                if text != expected[prompt]:
                    failures.append((i, prompt, text, expected[prompt]))
                counts["ok"] += 1
        except Exception as e:  # noqa: BLE001 - collected and reported
            with lock:
                failures.append((i, prompt, repr(e)))

    t0 = time.time()
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        list(ex.map(work, jobs))
    elapsed = time.time() - t0
    print(f"soak: {counts} in {elapsed:.1f}s")
    assert not failures, failures[:5]
    assert counts["ok"] == 200 - counts["dropped"]
    h = wait_idle(server, timeout=15)
    e = h["engine"]
    assert e["kv_pages_free"] == e["kv_pages_total"], h
    assert e["running"] == 0 and e["waiting"] == 0, h
    # still serving correctly
    assert chat(client, server.model, SOAK_PROMPTS[0], max_tokens=SOAK_MAX).choices[0].message.content == expected[SOAK_PROMPTS[0]]


def test_disconnect_aborts_quickly(server):
    """A client that goes away mid-stream frees its pages long before max_tokens would have been reached."""
    t = threading.Thread(target=stream_then_disconnect, args=(server.port, server.model, "Tell me a long story.", 2))
    t.start()
    t.join(60)
    h = wait_idle(server, timeout=5)
    assert h["engine"]["kv_pages_free"] == h["engine"]["kv_pages_total"], h


def test_slow_loris_is_cut_off_and_server_keeps_serving(server):
    socks = []
    for _ in range(16):
        s = socket.create_connection((HOST, server.port), timeout=30)
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        socks.append(s)
    # one that sends its header and then trickles the body a byte at a time
    body = json.dumps({"prompt": "hi", "max_tokens": 2}).encode()
    trickle = socket.create_connection((HOST, server.port), timeout=30)
    trickle.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    t0 = time.time()
    closed_at = None
    # meanwhile a normal client is served
    assert server.client().completions.create(model=server.model, prompt="Hi", max_tokens=2).usage.completion_tokens >= 1
    for i in range(len(body)):
        if time.time() - t0 > REQUEST_TIMEOUT + 10:
            break
        try:
            trickle.sendall(body[i:i + 1])
            for s in socks:
                s.sendall(b"X")  # a header line that never ends
        except OSError:
            closed_at = time.time()
            break
        time.sleep(0.5)
    if closed_at is None:
        trickle.settimeout(REQUEST_TIMEOUT + 5)
        try:
            data = trickle.recv(1024)
            if data == b"":
                closed_at = time.time()
        except OSError:
            closed_at = time.time()
    assert closed_at is not None and closed_at - t0 < REQUEST_TIMEOUT + 6, "slow client was not cut off"
    for s in socks:
        s.settimeout(REQUEST_TIMEOUT + 5)
        try:
            while s.recv(1024):
                pass
        except OSError:
            pass
        s.close()
    trickle.close()
    assert server.health()["status"] == "ok"


def random_json(rng, depth=0):
    keys = ["model", "messages", "prompt", "max_tokens", "max_completion_tokens", "stop", "temperature", "top_p",
            "top_k", "min_p", "seed", "presence_penalty", "frequency_penalty", "repetition_penalty", "logprobs",
            "top_logprobs", "n", "stream", "stream_options", "role", "content", "echo", "x", ""]
    scalars = [None, True, False, 0, 1, 2, -1, 3, 10 ** 20, -(10 ** 20), 1e300, -1e-300, 0.5, 2.5, "", "user",
               "hi", "\u0000", "\ud83d\ude00", "a" * 300, [], {}]
    if depth > 3 or rng.random() < 0.3:
        return rng.choice(scalars)
    if rng.random() < 0.5:
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(keys): random_json(rng, depth + 1) for _ in range(rng.randint(0, 6))}


def test_random_json_fuzz(server):
    rng = random.Random(42)
    c = http.client.HTTPConnection(HOST, server.port, timeout=60)
    statuses = {}
    for i in range(1000):
        obj = random_json(rng)
        if isinstance(obj, dict) and rng.random() < 0.5:
            obj.setdefault("messages", [{"role": "user", "content": "hi"}])
            obj["max_tokens"] = rng.choice([1, 2, "x", -1, None, 1e300])
            obj["stream"] = rng.choice([False, True, "yes"])
        body = json.dumps(obj, allow_nan=True) if rng.random() < 0.95 else json.dumps(obj)[:-1]
        path = rng.choice(["/v1/chat/completions", "/v1/completions"])
        try:
            c.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            r = c.getresponse()
            data = r.read()
        except (http.client.HTTPException, OSError):
            c.close()
            c = http.client.HTTPConnection(HOST, server.port, timeout=60)
            c.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            r = c.getresponse()
            data = r.read()
        statuses[r.status] = statuses.get(r.status, 0) + 1
        assert r.status in (200, 400, 404), (r.status, body, data)
        if r.status != 200:
            assert "error" in json.loads(data)
        if r.getheader("connection", "").lower() == "close":
            c.close()
            c = http.client.HTTPConnection(HOST, server.port, timeout=60)
    c.close()
    print("fuzz statuses:", statuses)
    assert statuses.get(400, 0) > 100
    r = chat(server.client(), server.model, "What is two plus two?", max_tokens=4)
    assert r.choices[0].finish_reason in ("stop", "length")
    h = wait_idle(server, timeout=10)
    assert h["engine"]["kv_pages_free"] == h["engine"]["kv_pages_total"]


# ---------------------------------------------------------------------------------------------------------------
# API key, graceful shutdown (separate servers)

def test_api_key():
    s = Server("--api-key", "sekret")
    try:
        assert s.get("/health")[0] == 200
        assert s.get("/metrics")[0] == 200  # scrapers and routers read it without the key
        status, err = error_of(s.request("GET", "/v1/models"))
        assert status == 401 and err["type"] == "authentication_error"
        with pytest.raises(openai.AuthenticationError):
            chat(s.client("wrong"), s.model, "hi", max_tokens=2)
        r = chat(s.client("sekret"), s.model, "hi", max_tokens=2)
        assert r.usage.completion_tokens >= 1
        # The scheme name is case-insensitive (RFC 7235); the key is not; another scheme is refused.
        assert s.request("GET", "/v1/models", headers={"Authorization": "bearer sekret"})[0] == 200
        assert s.request("GET", "/v1/models", headers={"Authorization": "BEARER sekret"})[0] == 200
        for bad in ("Bearer SEKRET", "Basic sekret", "Bearer", "sekret", "Bearer sekret2"):
            status, err = error_of(s.request("GET", "/v1/models", headers={"Authorization": bad}))
            assert status == 401 and err["type"] == "authentication_error", bad
        # A CORS preflight carries no credentials: it must not be refused for lack of them.
        assert s.request("OPTIONS", "/v1/chat/completions")[0] != 401
    finally:
        assert s.stop() == 0


def test_graceful_shutdown_finishes_in_flight():
    s = Server()
    try:
        client = s.client()
        stream = chat(client, s.model, "Tell me a story.", max_tokens=24, stream=True, extra_body={"ignore_eos": True})
        it = iter(stream)
        first = next(it)
        assert first.choices[0].delta.role == "assistant"
        s.proc.send_signal(signal.SIGTERM)
        rest = list(it)
        finishes = [ch.choices[0].finish_reason for ch in rest if ch.choices and ch.choices[0].finish_reason]
        assert finishes == ["length"]
        assert s.proc.wait(30) == 0
        with pytest.raises(OSError):
            socket.create_connection((HOST, s.port), timeout=2).close()
    finally:
        s.stop(signal.SIGKILL)


def test_overloaded_503():
    # One batch slot and no waiting room: while one request runs, another is refused with 503, and the server
    # serves again once the first is done.
    s = Server("--max-batch-size", "1", "--max-queued", "0")
    try:
        client = s.client()
        stream = chat(client, s.model, "Tell me a story.", max_tokens=24, stream=True, extra_body={"ignore_eos": True})
        next(iter(stream))
        status, err = error_of(s.request("POST", "/v1/chat/completions",
                                         {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}))
        assert status == 503, err
        assert "overloaded" in err["message"]
        for _ in stream:
            pass
        wait_idle(s)
        r = chat(client, s.model, "hi", max_tokens=2)
        assert r.usage.completion_tokens >= 1
    finally:
        assert s.stop() == 0


# ---------------------------------------------------------------------------------------------------------------
# HTTP-level behaviour: HTTP/1.0, parse errors, idle sockets, the connection cap, the shutdown drain

def raw_exchange(port, data, wait=10.0):
    """Sends raw bytes; returns (everything the server sent until it closed or `wait` passed, whether it closed)."""
    s = socket.create_connection((HOST, port), timeout=wait)
    s.sendall(data)
    out, closed, deadline = b"", False, time.time() + wait
    try:
        while time.time() < deadline:
            b = s.recv(65536)
            if not b:
                closed = True
                break
            out += b
    except socket.timeout:
        pass
    finally:
        s.close()
    return out, closed


def split_response(raw):
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
    return lines[0], headers, body


def test_http10_clients_get_http10_responses_and_a_close(server):
    # Non-streaming, no keep-alive: HTTP/1.0 response with a length, then the server closes.
    raw, closed = raw_exchange(server.port, b"GET /v1/models HTTP/1.0\r\n\r\n")
    status, headers, body = split_response(raw)
    assert status.startswith("HTTP/1.0 200") and closed, raw
    assert int(headers["content-length"]) == len(body) and json.loads(body)["data"]
    # Streaming: no chunked encoding (HTTP/1.0 has none); the body ends with the connection.
    req = json.dumps({"model": server.model, "prompt": "Hi", "max_tokens": 3, "stream": True}).encode()
    raw, closed = raw_exchange(server.port, b"POST /v1/completions HTTP/1.0\r\nContent-Type: application/json\r\n"
                               b"Content-Length: " + str(len(req)).encode() + b"\r\n\r\n" + req)
    status, headers, body = split_response(raw)
    assert status.startswith("HTTP/1.0 200") and closed, raw
    assert "transfer-encoding" not in headers and headers.get("connection") == "close", headers
    events = [l[6:] for l in body.decode().split("\n") if l.startswith("data: ")]
    assert events[-1] == "[DONE]" and json.loads(events[-2])["choices"][0]["finish_reason"] == "length", body
    # HTTP/1.0 with keep-alive: a length-delimited answer keeps the connection for a second request.
    s = socket.create_connection((HOST, server.port), timeout=10)
    try:
        f = s.makefile("rb")
        for _ in range(2):
            s.sendall(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            status = f.readline().decode()
            headers = {}
            while (line := f.readline().decode().strip()):
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
            assert status.startswith("HTTP/1.0 200") and headers.get("connection") == "keep-alive", (status, headers)
            assert json.loads(f.read(int(headers["content-length"])))["status"] == "ok"
    finally:
        s.close()


@pytest.mark.parametrize("raw", [b"GARBAGE\r\n\r\n", b"GET /health HTTP/1.1\r\nBad Header\r\n\r\n",
                                 b"GET /health HTTP/9.9\r\n\r\n", b"POST /v1/completions HTTP/1.1\r\nContent-Length: x\r\n\r\n"])
def test_http_level_rejects_are_openai_json_errors(server, raw):
    out, closed = raw_exchange(server.port, raw)
    status, headers, body = split_response(out)
    assert status.startswith("HTTP/1.1 400") and closed, out
    err = json.loads(body)["error"]
    assert err["type"] == "invalid_request_error" and err["message"], body
    assert server.health()["status"] == "ok"


def timed_completion(server, i):
    t0 = time.time()
    r = server.client().completions.create(model=server.model, prompt=f"Count to {i}:", max_tokens=8, temperature=0)
    assert r.usage.completion_tokens >= 1
    return time.time() - t0


def test_idle_sockets_do_not_starve_real_clients():
    # 256 sockets opened and left idle fill --max-connections (256); real clients must still be answered in their
    # normal time: each new connection closes the longest idle one.
    s = Server("--idle-timeout", "60", "--request-timeout", "60")
    idle = []
    try:
        solo = timed_completion(s, 0)
        for _ in range(256):
            idle.append(socket.create_connection((HOST, s.port), timeout=30))
        time.sleep(0.5)
        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            times = list(ex.map(lambda i: timed_completion(s, i), range(1, 5)))
        print(f"solo {solo:.2f} s; beside 256 idle sockets: {[round(t, 2) for t in times]}")
        assert max(times) < 5 * solo + 2, (solo, times)
        h = s.health()
        assert h["connections_evicted"] >= 4 and h["connections"] <= 256, h
    finally:
        for sock in idle:
            sock.close()
        assert s.stop() == 0, s.output()


def test_connection_cap_refuses_with_json_503_when_all_are_busy():
    s = Server("--max-connections", "2")
    try:
        client = s.client()
        streams = [chat(client, s.model, f"Tell me story {i}.", max_tokens=32, stream=True, extra_body={"ignore_eos": True})
                   for i in range(2)]
        its = [iter(x) for x in streams]
        for it in its:
            next(it)  # both connections are busy answering
        status, err = error_of(s.request("GET", "/v1/models"))
        assert status == 503 and err["type"] == "server_error" and "max-connections" in err["message"], err
        for it in its:
            for _ in it:
                pass
        wait_idle(s)
        assert s.request("GET", "/v1/models")[0] == 200
    finally:
        assert s.stop() == 0, s.output()


def test_sigterm_drain_ends_every_request_properly():
    # 4 streams and 2 non-streaming requests that would run far longer than --drain-timeout: on SIGTERM new
    # requests get 503; after the timeout every stream ends with a final chunk (finish_reason "abort"), an error
    # event and [DONE], the others get a 503 JSON error, and the process exits 0 within the timeout + 1 s.
    drain = 3
    s = Server("--drain-timeout", str(drain), "--max-new-tokens", "400")
    results = {}

    def stream(i):
        c = http.client.HTTPConnection(HOST, s.port, timeout=60)
        c.request("POST", "/v1/chat/completions",
                  json.dumps({"model": s.model, "messages": [{"role": "user", "content": f"Story {i}"}],
                              "max_tokens": 400, "stream": True, "ignore_eos": True}),
                  {"Content-Type": "application/json"})
        r = c.getresponse()
        results[f"stream{i}"] = (r.status, r.read().decode())

    def plain(i):
        c = http.client.HTTPConnection(HOST, s.port, timeout=60)
        c.request("POST", "/v1/completions",
                  json.dumps({"model": s.model, "prompt": f"Story {i}", "max_tokens": 400, "ignore_eos": True}),
                  {"Content-Type": "application/json"})
        r = c.getresponse()
        results[f"plain{i}"] = (r.status, r.read().decode())

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(4)] + \
              [threading.Thread(target=plain, args=(i,)) for i in range(2)]
    try:
        for t in threads:
            t.start()
        # A keep-alive connection opened before the signal (new connections are refused once it came).
        late = http.client.HTTPConnection(HOST, s.port, timeout=30)
        late.request("GET", "/v1/models")
        assert late.getresponse().read()
        deadline = time.time() + 30
        while s.health()["engine"]["running"] < 6 and time.time() < deadline:
            time.sleep(0.1)
        t0 = time.time()
        s.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        late.request("POST", "/v1/completions", json.dumps({"prompt": "late", "max_tokens": 2}),
                     {"Content-Type": "application/json"})
        r = late.getresponse()
        status, err = error_of((r.status, r.read()))
        assert status == 503 and err["code"] == "shutting_down", err
        assert r.getheader("connection") == "close"
        late.close()
        for t in threads:
            t.join(30)
        code = s.proc.wait(30)
        elapsed = time.time() - t0
        assert code == 0, s.output()
        assert elapsed < drain + 1.5, elapsed
        for i in range(4):
            status, body = results[f"stream{i}"]
            events = [l[6:] for l in body.split("\n") if l.startswith("data: ")]
            assert status == 200 and events[-1] == "[DONE]", body[-500:]
            assert json.loads(events[-3])["choices"][0]["finish_reason"] == "abort", events[-3:]
            assert json.loads(events[-2])["error"]["code"] == "shutting_down", events[-3:]
        for i in range(2):
            status, body = results[f"plain{i}"]
            assert status == 503 and json.loads(body)["error"]["code"] == "shutting_down", body
    finally:
        s.stop(signal.SIGKILL)


# ---------------------------------------------------------------------------------------------------------------
# Request ids and the access log, CORS

def test_request_id_is_echoed_and_logged(server):
    c = http.client.HTTPConnection(HOST, server.port, timeout=30)
    try:
        c.request("GET", "/v1/models", headers={"X-Request-Id": "client-id-42"})
        r = c.getresponse()
        r.read()
        assert r.getheader("X-Request-Id") == "client-id-42"
        c.request("POST", "/v1/completions", body=json.dumps({"prompt": "Hi", "max_tokens": 1}),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        r.read()
        generated = r.getheader("X-Request-Id")
        assert generated and generated.startswith("req-"), generated
        c.request("GET", "/nowhere", headers={"X-Request-Id": "bad id with spaces"})
        r = c.getresponse()
        r.read()
        assert r.status == 404 and r.getheader("X-Request-Id").startswith("req-")
    finally:
        c.close()
    deadline = time.time() + 5
    while time.time() < deadline:
        log = server.output()
        if "client-id-42" in log and generated in log:
            break
        time.sleep(0.1)
    lines = [l for l in server.output().splitlines() if "request_id=client-id-42" in l]
    assert lines and "status=200" in lines[0] and "path=/v1/models" in lines[0] and "method=GET" in lines[0], lines
    assert any(f"request_id={generated}" in l and "status=200" in l for l in server.output().splitlines())


def test_cors_origins_and_preflight():
    s = Server("--cors-origins", "http://app.example, http://other.example", "--api-key", "sekret")
    try:
        auth = {"Authorization": "Bearer sekret"}
        c = http.client.HTTPConnection(HOST, s.port, timeout=30)
        c.request("GET", "/v1/models", headers={"Origin": "http://app.example", **auth})
        r = c.getresponse()
        r.read()
        assert r.status == 200 and r.getheader("Access-Control-Allow-Origin") == "http://app.example"
        assert r.getheader("Vary") == "Origin" and "X-Request-Id" in r.getheader("Access-Control-Expose-Headers")
        c.request("GET", "/v1/models", headers={"Origin": "http://evil.example", **auth})
        r = c.getresponse()
        r.read()
        assert r.status == 200 and r.getheader("Access-Control-Allow-Origin") is None
        # A preflight needs no key and is answered with what the browser asked for.
        c.request("OPTIONS", "/v1/chat/completions", headers={
            "Origin": "http://other.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        r = c.getresponse()
        r.read()
        assert r.status == 204, r.status
        assert r.getheader("Access-Control-Allow-Origin") == "http://other.example"
        assert "POST" in r.getheader("Access-Control-Allow-Methods")
        assert r.getheader("Access-Control-Allow-Headers") == "authorization, content-type"
        # Errors carry the CORS headers too (a browser app can read the JSON error).
        c.request("GET", "/v1/models", headers={"Origin": "http://app.example"})
        r = c.getresponse()
        body = r.read()
        assert r.status == 401 and r.getheader("Access-Control-Allow-Origin") == "http://app.example", body
        c.close()
    finally:
        assert s.stop() == 0, s.output()
    t = Server("--cors-origins", "*")
    try:
        status, _ = t.request("GET", "/v1/models", headers={"Origin": "http://anything.example"})
        c = http.client.HTTPConnection(HOST, t.port, timeout=30)
        c.request("GET", "/health", headers={"Origin": "http://anything.example"})
        r = c.getresponse()
        r.read()
        assert r.getheader("Access-Control-Allow-Origin") == "*"
        c.close()
    finally:
        assert t.stop() == 0, t.output()


# ---------------------------------------------------------------------------------------------------------------
# /metrics

def scrape(server):
    from prometheus_client.parser import text_string_to_metric_families
    status, body = server.get("/metrics")
    assert status == 200
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def value(samples, name, **labels):
    return sum(v for l, v in samples.get(name, []) if all(l.get(k) == x for k, x in labels.items()))


def test_metrics_prometheus_text_with_vllm_names(server):
    wait_idle(server)
    before = scrape(server)
    client = server.client()
    prompt = "The metrics test prompt, long enough to fill a KV page or two of the prefix cache: " + "word " * 40
    for _ in range(2):  # the second one hits the prefix cache
        r = client.completions.create(model=server.model, prompt=prompt, max_tokens=5, temperature=0)
        assert r.usage.completion_tokens == 5
    stream = chat(client, server.model, "Count to three.", max_tokens=4, stream=True)
    for _ in stream:
        pass
    wait_idle(server)
    after = scrape(server)
    m = server.model
    for name in ["vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:time_to_first_token_seconds_count",
                 "vllm:inter_token_latency_seconds_count", "vllm:e2e_request_latency_seconds_count",
                 "vllm:request_queue_time_seconds_count",
                 "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total", "vllm:num_preemptions_total",
                 "ktransformers_requests_running", "ktransformers_time_to_first_token_seconds_count",
                 "ktransformers_step_seconds_count", "ktransformers_batch_sequences_count"]:
        assert name in after, name
        assert all(l.get("model_name") == m for l, _ in after[name]), (name, after[name])
    d = lambda name, **l: value(after, name, **l) - value(before, name, **l)
    assert d("vllm:generation_tokens_total") >= 14
    assert d("vllm:time_to_first_token_seconds_count") == 3
    assert d("vllm:e2e_request_latency_seconds_count") == 3
    assert d("vllm:request_queue_time_seconds_count") == 3
    assert d("vllm:inter_token_latency_seconds_count") >= 11
    assert d("vllm:request_success_total", finished_reason="length") >= 2
    assert d("vllm:prefix_cache_hits_total") >= 16, "the repeated prompt should hit the prefix cache"
    assert d("ktransformers_step_seconds_count") >= 10
    assert value(after, "vllm:num_requests_running") == 0
    assert 0 <= value(after, "vllm:kv_cache_usage_perc") <= 1
    # The histograms are cumulative and end at +Inf = count.
    inf = [v for l, v in after["vllm:time_to_first_token_seconds_bucket"] if l.get("le") == "+Inf"][0]
    assert inf == value(after, "vllm:time_to_first_token_seconds_count")


# ---------------------------------------------------------------------------------------------------------------
# The web chat page in a real browser (headless Chromium from Debian, driven over the DevTools protocol)

class Browser:
    def __init__(self):
        import shutil
        import tempfile
        import urllib.request
        import websocket  # websocket-client
        exe = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
        if exe is None:
            pytest.skip("no Chromium here (scripts/e2e.sh installs Debian's chromium where it can)")
        self.port = free_port()
        self.profile = tempfile.mkdtemp(prefix="kt-chromium-")
        self.proc = subprocess.Popen([exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                      f"--remote-debugging-port={self.port}", f"--user-data-dir={self.profile}",
                                      "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while True:
            try:
                pages = json.loads(urllib.request.urlopen(f"http://{HOST}:{self.port}/json", timeout=2).read())
                page = next(p for p in pages if p["type"] == "page")
                break
            except Exception:
                assert time.time() < deadline, "Chromium did not start"
                time.sleep(0.2)
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60)
        self.next_id = 0

    def call(self, method, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                assert "error" not in msg, msg
                return msg.get("result", {})

    def eval(self, expr):
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in r, r
        return r["result"].get("value")

    def wait(self, expr, timeout=60):
        deadline = time.time() + timeout
        while not self.eval(expr):
            assert time.time() < deadline, f"timed out waiting for {expr}"
            time.sleep(0.1)

    def close(self):
        import shutil
        try:
            self.ws.close()
        finally:
            self.proc.kill()
            self.proc.wait()
            shutil.rmtree(self.profile, ignore_errors=True)


def test_web_chat_page_streams_an_answer_in_a_real_browser(server):
    question = "What is the capital of France?"
    want = chat(server.client(), server.model, question, max_tokens=12).choices[0].message.content
    b = Browser()
    try:
        b.call("Page.enable")
        b.call("Page.navigate", url=server.base + "/")
        b.wait("document.body && document.body.dataset.ready === 'true'")
        assert b.eval("document.getElementById('model').value") == server.model
        b.eval("document.getElementById('temperature').value = '0'; document.getElementById('max_tokens').value = '12'")
        # Type the question and press Enter, as a user does.
        b.eval("document.getElementById('prompt').focus()")
        b.call("Input.insertText", text=question)
        b.call("Input.dispatchKeyEvent", type="keyDown", key="Enter", code="Enter", windowsVirtualKeyCode=13,
               nativeVirtualKeyCode=13)
        b.call("Input.dispatchKeyEvent", type="keyUp", key="Enter", code="Enter", windowsVirtualKeyCode=13,
               nativeVirtualKeyCode=13)
        b.wait("(document.querySelector('.msg.assistant') || {dataset: {}}).dataset.state === 'done'")
        shown = b.eval("document.querySelector('.msg.assistant .content').innerText")
        assert b.eval("document.querySelector('.msg.user .content').textContent") == question
        norm = lambda s: " ".join(s.replace("*", "").replace("`", "").replace("#", "").split())
        print(f"browser shows: {shown!r}; the API answers: {want!r}")
        assert norm(shown) == norm(want), (shown, want)

        # A long answer, stopped with the Stop button: the page says so and the server frees the request.
        b.eval("document.getElementById('max_tokens').value = '400'")
        b.eval("document.getElementById('prompt').value = 'Write a very long story about a lighthouse.';"
               "document.getElementById('send').click()")
        b.wait("document.querySelectorAll('.msg.assistant').length === 2 && "
               "document.querySelectorAll('.msg.assistant')[1].querySelector('.content').innerText.length > 0")
        b.eval("document.getElementById('stop').click()")
        b.wait("document.querySelectorAll('.msg.assistant')[1].dataset.state === 'stopped'")
        assert b.eval("document.getElementById('send').disabled") is False
        h = wait_idle(server, timeout=10)
        assert h["engine"]["running"] == 0, h
    finally:
        b.close()


# ---------------------------------------------------------------------------------------------------------------
# Scale-out: two replicas behind the real SGLang router (cache-aware policy)

def test_router_info_endpoints(server):
    for path in ("/model_info", "/get_model_info", "/server_info", "/get_server_info"):
        info = server.json(path)
        assert info["model_path"] == server.model and info["served_model_name"] == server.model, (path, info)
    assert server.json("/server_info")["context_length"] == CTX


def test_two_replicas_behind_sglang_router_keep_conversations_on_their_replica():
    try:
        import sglang_router  # noqa: F401
    except ImportError:
        pytest.skip("no sglang-router here (scripts/e2e.sh installs it from PyPI)")
    import sys
    replicas = [Server(), Server()]
    port = free_port()
    log = open(f"/tmp/ktransformers-e2e-router-{port}.log", "w+")
    router = subprocess.Popen([sys.executable, "-m", "sglang_router.launch_router", "--host", HOST, "--port", str(port),
                               "--worker-urls", *[r.base for r in replicas], "--policy", "cache_aware",
                               "--prometheus-port", str(free_port()), "--log-level", "warn"], stdout=log, stderr=subprocess.STDOUT)
    try:
        client = openai.OpenAI(base_url=f"http://{HOST}:{port}/v1", api_key="unused", max_retries=0, timeout=120)
        deadline = time.time() + 120
        while True:
            try:
                if http.client.HTTPConnection(HOST, port, timeout=5).request("GET", "/health") is None:
                    break
            except OSError:
                assert router.poll() is None and time.time() < deadline, "router did not start"
                time.sleep(0.3)
        model = replicas[0].model
        # 40 conversations of 3 turns through the router, each turn resending the history (a long, distinct first
        # message of several KV pages, the answers, a new question).
        conversations = []
        routed = {"prompt": 0, "cached": 0}
        for conv in range(40):
            messages = [{"role": "user", "content": f"Conversation {conv}. " + " ".join(
                f"fact {conv}-{k} is about topic {k * 7 + conv}." for k in range(20))}]
            turns = []
            for turn in range(3):
                r = client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0,
                                                   extra_headers={"X-Request-Id": f"conv{conv}-turn{turn}"})
                turns.append((list(messages), r.choices[0].message.content))
                routed["prompt"] += r.usage.prompt_tokens
                routed["cached"] += r.usage.prompt_tokens_details.cached_tokens
                messages += [{"role": "assistant", "content": r.choices[0].message.content},
                             {"role": "user", "content": f"Tell me more about point {turn}."}]
            conversations.append(turns)
        # Every conversation's turns landed on one replica (the router forwards X-Request-Id; replicas log it).
        logs = [r.full_output() for r in replicas]
        for conv in range(40):
            homes = {i for i, text in enumerate(logs) for turn in range(3) if f"request_id=conv{conv}-turn{turn} " in text}
            assert len(homes) == 1, f"conversation {conv} was served by replicas {homes}"
        per_replica = [sum(f"request_id=conv{c}-turn{t} " in text for c in range(40) for t in range(3)) for text in logs]
        # The same workload on one replica alone (a fresh one): every routed answer must be its answer, and the
        # router's prefix-cache hit rate must be at least 80% of the lone replica's.
        alone_server = Server()
        try:
            alone = alone_server.client()
            solo = {"prompt": 0, "cached": 0}
            for conv, turns in enumerate(conversations):
                for turn, (messages, answer) in enumerate(turns):
                    r = alone.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0)
                    assert r.choices[0].message.content == answer, (conv, turn)
                    solo["prompt"] += r.usage.prompt_tokens
                    solo["cached"] += r.usage.prompt_tokens_details.cached_tokens
        finally:
            assert alone_server.stop() == 0, alone_server.output()
        rate, base = routed["cached"] / routed["prompt"], solo["cached"] / solo["prompt"]
        print(f"router: 120 requests, per replica {per_replica}; prefix-cache hit rate through the router "
              f"{rate:.3f} vs one replica alone {base:.3f} ({rate / base:.2f}x)")
        assert routed["prompt"] == solo["prompt"]
        assert rate >= 0.8 * base, (rate, base)
    finally:
        router.terminate()
        router.wait(30)
        for r in replicas:
            assert r.stop() == 0, r.output()
