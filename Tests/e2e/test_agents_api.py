"""End-to-end tests of the API agents and chat apps use, against `ktransformers serve` on the default model with
the official `openai` and `ollama` Python clients: tool calls (a full round trip, forced by `tool_choice`),
structured output (100 requests over 10 JSON schemas at temperature 1, validated with `jsonschema`), reasoning
split, `n` > 1 sharing one prefill, `logit_bias`, streamed deltas equal to whole answers, and Ollama's API.
"""
import concurrent.futures
import json

import jsonschema
import ollama
import openai
import pytest

from test_openai_client import Server, wait_idle


@pytest.fixture(scope="module")
def server():
    s = Server("--ctx-size", "2048", "--max-new-tokens", "256", "--max-batch-size", "8")
    yield s
    assert s.stop() == 0, s.output()


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 40, "description": "City name, e.g. Paris"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The local time in a time zone",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 40}},
                   "required": ["zone"], "additionalProperties": False}}}


def check_call(call, tools):
    spec = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    assert call.type == "function" and call.id
    assert call.function.name in spec
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, spec[call.function.name])
    return args


def test_tool_round_trip_forced_by_tool_choice(server):
    """tool_choice "required" makes even a 270M model without tool training call a tool with valid arguments;
    the tool's answer goes back as a `tool` message and the model answers in text."""
    client = server.client()
    messages = [{"role": "user", "content": "What is the weather like in Paris today?"}]
    r = client.chat.completions.create(model=server.model, messages=messages, tools=[WEATHER, TIME],
                                       tool_choice="required", parallel_tool_calls=False, temperature=0, max_tokens=200)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls", c
    assert c.message.content is None
    assert len(c.message.tool_calls) == 1
    for call in c.message.tool_calls:
        check_call(call, [WEATHER, TIME])
    call = c.message.tool_calls[0]
    messages.append({"role": "assistant", "content": None, "tool_calls": [
        {"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": call.function.arguments}}]})
    messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 18, "condition": "sunny"})})
    r2 = client.chat.completions.create(model=server.model, messages=messages, tools=[WEATHER, TIME], tool_choice="none",
                                        temperature=0, max_tokens=40)
    assert r2.choices[0].message.tool_calls is None
    assert r2.choices[0].message.content
    assert r2.choices[0].finish_reason in ("stop", "length")
    # The call and the tool's result reached the prompt (tool_choice none leaves the tool list out of it).
    alone = client.chat.completions.create(model=server.model, messages=messages[:1], temperature=0, max_tokens=1)
    assert r2.usage.prompt_tokens > alone.usage.prompt_tokens + r.usage.completion_tokens + 10

    # A named function: exactly one call of it.
    r3 = client.chat.completions.create(model=server.model, messages=[{"role": "user", "content": "Time in Tokyo?"}],
                                        tools=[WEATHER, TIME], temperature=0.8, seed=4, max_tokens=200,
                                        tool_choice={"type": "function", "function": {"name": "get_time"}})
    calls = r3.choices[0].message.tool_calls
    assert len(calls) == 1 and calls[0].function.name == "get_time"
    check_call(calls[0], [TIME])


def test_tools_with_auto_choice_give_text_when_the_model_writes_no_call(server):
    """With tool_choice auto the model may answer in text; no call parsed, no error."""
    client = server.client()
    r = client.chat.completions.create(model=server.model, messages=[{"role": "user", "content": "Say hi."}],
                                       tools=[WEATHER], temperature=0, max_tokens=16)
    c = r.choices[0]
    assert c.message.tool_calls is None and c.message.content
    assert c.finish_reason in ("stop", "length")


def test_streamed_tool_calls_equal_the_whole_answer(server):
    client = server.client()
    kw = dict(model=server.model, messages=[{"role": "user", "content": "Weather in Oslo and the time in Lima?"}],
              tools=[WEATHER, TIME], tool_choice="required", temperature=1, seed=11, max_tokens=300)
    whole = client.chat.completions.create(**kw).choices[0]
    calls = {}
    finish = None
    for chunk in client.chat.completions.create(stream=True, **kw):
        for ch in chunk.choices:
            for d in ch.delta.tool_calls or []:
                c = calls.setdefault(d.index, {"name": "", "arguments": "", "id": None})
                c["name"] += d.function.name or ""
                c["arguments"] += d.function.arguments or ""
                c["id"] = c["id"] or d.id
            finish = ch.finish_reason or finish
    assert finish == whole.finish_reason and whole.message.tool_calls
    for c in whole.message.tool_calls:
        check_call(c, [WEATHER, TIME])
    assert [(calls[i]["name"], calls[i]["arguments"]) for i in sorted(calls)] == \
        [(c.function.name, c.function.arguments) for c in whole.message.tool_calls]
    assert all(c["id"] for c in calls.values())


SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 30}, "age": {"type": "integer", "minimum": 0}},
     "required": ["name", "age"], "additionalProperties": False},
    {"type": "object", "properties": {"colors": {"type": "array", "items": {"enum": ["red", "green", "blue"]},
                                                  "minItems": 1, "maxItems": 4}}, "required": ["colors"]},
    {"type": "object", "properties": {"title": {"type": "string", "maxLength": 40},
                                      "rating": {"type": "number"}, "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3}},
     "required": ["title", "rating", "tags"]},
    {"type": "object", "properties": {"ok": {"type": "boolean"}, "reason": {"type": ["string", "null"], "maxLength": 30}},
     "required": ["ok", "reason"]},
    {"type": "object", "properties": {"point": {"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
                                                "required": ["x", "y"], "additionalProperties": False},
                                      "label": {"const": "p"}}, "required": ["point", "label"]},
    {"type": "array", "items": {"type": "object", "properties": {"id": {"type": "integer"}, "done": {"type": "boolean"}},
                                "required": ["id", "done"]}, "minItems": 2, "maxItems": 3},
    {"type": "object", "properties": {"date": {"type": "string", "format": "date"}, "id": {"type": "string", "format": "uuid"}},
     "required": ["date", "id"]},
    {"$defs": {"item": {"type": "object", "properties": {"sku": {"type": "string", "maxLength": 10}, "qty": {"type": "integer", "minimum": 1}},
                        "required": ["sku", "qty"]}},
     "type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/item"}, "maxItems": 3},
                                      "total": {"type": "number"}}, "required": ["items", "total"]},
    {"anyOf": [{"type": "object", "properties": {"kind": {"const": "circle"}, "r": {"type": "number"}}, "required": ["kind", "r"]},
               {"type": "object", "properties": {"kind": {"const": "square"}, "side": {"type": "integer"}}, "required": ["kind", "side"]}]},
    {"type": "object", "properties": {"level": {"enum": ["low", "mid", "high", 1, 2, None]},
                                      "nested": {"type": "object", "properties": {"deep": {"type": "array", "items": {"type": "integer"}, "maxItems": 5}},
                                                 "required": ["deep"]}}, "required": ["level", "nested"]},
]


def test_100_requests_over_10_schemas_all_parse_and_validate(server):
    """Temperature 1, no top-p / top-k: every answer parses and validates (jsonschema), all requests concurrent."""
    client = server.client()
    prompts = ["Describe a person.", "List some colours.", "Review a film.", "Answer yes or no, with a reason.",
               "Give a point.", "Give a todo list.", "Give an event.", "Give an order.", "Give a shape.", "Rate it."]

    def one(i):
        k = i % len(SCHEMAS)
        r = client.chat.completions.create(
            model=server.model, messages=[{"role": "user", "content": prompts[k] + " Answer in JSON."}],
            response_format={"type": "json_schema", "json_schema": {"name": f"s{k}", "schema": SCHEMAS[k], "strict": True}},
            temperature=1, seed=i, max_tokens=512)
        c = r.choices[0]
        value = json.loads(c.message.content)
        jsonschema.validate(value, SCHEMAS[k])
        return c.finish_reason

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        reasons = list(pool.map(one, range(100)))
    assert reasons == ["stop"] * 100
    assert wait_idle(server)["engine"]["running"] == 0


def test_json_object_and_streamed_structured_output(server):
    client = server.client()
    kw = dict(model=server.model, messages=[{"role": "user", "content": "A JSON object about a cat."}],
              response_format={"type": "json_schema", "json_schema": {"name": "cat", "schema": SCHEMAS[2]}},
              temperature=1, seed=5, max_tokens=300)
    whole = client.chat.completions.create(**kw).choices[0].message.content
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kw) if c.choices)
    assert streamed == whole
    jsonschema.validate(json.loads(whole), SCHEMAS[2])
    r = client.chat.completions.create(model=server.model, messages=[{"role": "user", "content": "Reply in JSON."}],
                                       response_format={"type": "json_object"}, temperature=0, max_tokens=300)
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    else:
        assert r.choices[0].message.content.startswith("{")


def test_unsupported_schemas_are_a_400_naming_the_keyword(server):
    client = server.client()
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=server.model, messages=[{"role": "user", "content": "x"}],
                                       response_format={"type": "json_schema", "json_schema": {
                                           "name": "x", "schema": {"type": "string", "pattern": "^[a-z]+$"}}})
    assert "pattern" in str(e.value) and e.value.body["param"] == "response_format.json_schema.schema"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=server.model, messages=[{"role": "user", "content": "x"}],
                                       tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}})


def test_n_choices_share_one_prefill(server):
    client = server.client()
    before = wait_idle(server)["engine"]
    prompt = "Write one sentence about the sea. " * 6
    kw = dict(model=server.model, messages=[{"role": "user", "content": prompt}], temperature=1, seed=21,
              max_tokens=12, n=3)
    r = client.chat.completions.create(**kw)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert r.usage.completion_tokens == sum(1 for _ in range(0)) + r.usage.completion_tokens
    assert len({c.message.content for c in r.choices}) > 1   # independent samples
    after = wait_idle(server)["engine"]
    page = after["kv_page_size"]
    # The prompt was computed once: the two followers took its full pages from the cache.
    assert after["prefix_cache_hit_tokens"] - before["prefix_cache_hit_tokens"] >= 2 * (r.usage.prompt_tokens // page - 1) * page
    # Streamed: deltas per index reassemble the same answers (same seeds).
    texts = {}
    for chunk in client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw):
        for ch in chunk.choices:
            texts[ch.index] = texts.get(ch.index, "") + (ch.delta.content or "")
        if chunk.usage:
            assert chunk.usage.completion_tokens == r.usage.completion_tokens
    assert [texts[i] for i in range(3)] == [c.message.content for c in r.choices]
    # Completions too.
    rc = client.completions.create(model=server.model, prompt="Once upon a time", n=2, temperature=1, seed=3, max_tokens=8)
    assert [c.index for c in rc.choices] == [0, 1]


def test_logit_bias_forces_and_bans_tokens(server):
    client = server.client()
    base = client.chat.completions.create(model=server.model, messages=[{"role": "user", "content": "Count to five."}],
                                          temperature=0, max_tokens=6, logprobs=True)
    first = base.choices[0].logprobs.content[0].token
    ids = json.loads(server.request("POST", "/v1/completions", {"prompt": [2], "max_tokens": 1, "temperature": 0})[1])
    assert ids["choices"]
    # Ban the greedy first token: the answer starts differently.
    from test_openai_client import tokenize
    tid = tokenize(first, bos=False)
    assert len(tid) == 1
    banned = client.chat.completions.create(model=server.model, messages=[{"role": "user", "content": "Count to five."}],
                                            temperature=0, max_tokens=6, logprobs=True, logit_bias={str(tid[0]): -100})
    assert banned.choices[0].logprobs.content[0].token != first
    forced = client.chat.completions.create(model=server.model, messages=[{"role": "user", "content": "Count to five."}],
                                            temperature=1, max_tokens=5, logit_bias={str(tid[0]): 100}, logprobs=True)
    assert [e.token for e in forced.choices[0].logprobs.content] == [first] * 5


def test_reasoning_is_split_and_streams_as_its_own_delta():
    """--reasoning-parser qwen3 --force-think on the default model: the answer starts inside <think>, so what the
    model writes is reasoning_content; streamed reasoning deltas equal it."""
    s = Server("--reasoning-parser", "qwen3", "--force-think")
    try:
        client = s.client()
        kw = dict(model=s.model, messages=[{"role": "user", "content": "Think about cats."}], temperature=1, seed=2, max_tokens=24)
        whole = client.chat.completions.create(**kw).choices[0].message
        assert whole.model_extra["reasoning_content"]
        parts = {"reasoning": "", "content": ""}
        for chunk in client.chat.completions.create(stream=True, **kw):
            for ch in chunk.choices:
                parts["reasoning"] += (ch.delta.model_extra or {}).get("reasoning_content") or ""
                parts["content"] += ch.delta.content or ""
        assert parts["reasoning"] == whole.model_extra["reasoning_content"]
        assert parts["content"] == (whole.content or "")
    finally:
        assert s.stop() == 0


# ---------------------------------------------------------------------------------------------------------------
# Ollama

def test_ollama_client_list_show_ps_version(server):
    c = ollama.Client(host=server.base)
    models = c.list().models
    assert len(models) == 1
    name = models[0].model
    assert name == server.model + ":latest"
    assert models[0].details.format == "gguf" and models[0].details.family == "gemma3"
    assert models[0].details.quantization_level == "Q4_K_M" and models[0].size > 200_000_000
    show = c.show(name)
    assert "completion" in show.capabilities and "<start_of_turn>" in show.template
    assert show.modelinfo["general.architecture"] == "gemma3"
    assert c.ps().models[0].model == name
    status, body = server.get("/api/version")
    assert status == 200 and json.loads(body)["version"]
    with pytest.raises(ollama.ResponseError) as e:
        c.show("missing-model")
    assert e.value.status_code == 404


def test_ollama_chat_and_generate_streaming_and_not(server):
    c = ollama.Client(host=server.base)
    name = server.model
    opts = {"temperature": 0, "num_predict": 12}
    msgs = [{"role": "user", "content": "Name three fruits."}]
    whole = c.chat(model=name, messages=msgs, options=opts)
    assert whole.done and whole.message.role == "assistant" and whole.message.content
    assert whole.eval_count == 12 and whole.done_reason == "length"
    assert whole.prompt_eval_count > 5 and whole.total_duration >= whole.eval_duration > 0
    parts = list(c.chat(model=name, messages=msgs, options=opts, stream=True))
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    assert "".join(p.message.content for p in parts) == whole.message.content
    assert parts[-1].eval_count == 12

    gen = c.generate(model=name, prompt="Name three fruits.", options=opts)
    assert gen.response == whole.message.content   # the same chat template and prompt
    assert gen.context and len(gen.context) == gen.prompt_eval_count + 12
    streamed = list(c.generate(model=name, prompt="Name three fruits.", options=opts, stream=True))
    assert "".join(p.response for p in streamed) == gen.response
    raw = c.generate(model=name, prompt="The capital of France is", raw=True, options={"temperature": 0, "num_predict": 4})
    assert raw.response and raw.eval_count == 4
    # format: a JSON schema.
    schema = SCHEMAS[0]
    js = c.chat(model=name, messages=[{"role": "user", "content": "A person as JSON."}], format=schema,
                options={"temperature": 1, "seed": 3, "num_predict": 200})
    jsonschema.validate(json.loads(js.message.content), schema)
    # Tools: the call comes back in Ollama's shape (arguments as an object).
    tools = [WEATHER]
    r = c.chat(model=name, messages=[{"role": "user", "content": "Weather in Rome?"}], tools=tools,
               options={"temperature": 0, "num_predict": 64})
    for call in r.message.tool_calls or []:
        assert isinstance(call.function.arguments, dict)
    with pytest.raises(ollama.ResponseError) as e:
        c.chat(model=name, messages=msgs, think=True)
    assert e.value.status_code == 400
