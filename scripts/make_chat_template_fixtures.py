#!/usr/bin/env python3
"""Renders the chat-template fixtures of Tests/ChatTemplateTests with Python jinja2, the way Hugging Face
transformers renders `tokenizer.chat_template` (transformers/utils/chat_template_utils.py):

    ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                  extensions=[AssistantTracker, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson        # json.dumps(x, ensure_ascii=False, indent=..., ...)
    env.globals["raise_exception"] = raise_exception   # raises TemplateError(message)
    env.globals["strftime_now"] = strftime_now

strftime_now reads a fixed clock here (2025-01-15 10:30 local time) so the output is reproducible; the Swift
tests set the same clock.

    pip install jinja2        # 3.1.x
    python3 scripts/make_chat_template_fixtures.py

writes Tests/ChatTemplateTests/Fixtures/chat_template_cases.json (template renderings) and
Tests/ChatTemplateTests/Fixtures/jinja_units.json (feature unit cases). The templates themselves are the
files in Tests/ChatTemplateTests/Fixtures/templates/ (each model's tokenizer_config.json `chat_template`).
"""
import json
import os
import sys
from datetime import datetime

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "Tests", "ChatTemplateTests", "Fixtures")
NOW = datetime(2025, 1, 15, 10, 30, 0)


class AssistantTracker(Extension):
    """transformers' {% generation %} tag (its index tracking is irrelevant to the rendered text)."""
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return nodes.CallBlock(self.call_method("_render", []), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def make_env():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return NOW.strftime(format)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[AssistantTracker, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


ENV = make_env()


def render(source, context):
    """(output, None, None) or (None, error message, kind) with kind "raise" for raise_exception's TemplateError,
    "syntax" for a TemplateSyntaxError and "other" for anything else."""
    try:
        tmpl = ENV.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as e:
        return None, e.message, "syntax"
    try:
        return tmpl.render(**context), None, None
    except jinja2.exceptions.TemplateSyntaxError as e:
        return None, e.message, "syntax"
    except jinja2.exceptions.TemplateError as e:
        if type(e) is jinja2.exceptions.TemplateError:
            return None, e.message, "raise"
        return None, str(e), "other"
    except Exception as e:  # TypeError, ValueError, ... from Python operations
        return None, str(e), "other"


# ---------------------------------------------------------------------------------------------- templates

# file stem -> (bos_token, eos_token)
TEMPLATES = {
    "llama-3-8b-instruct": ("<|begin_of_text|>", "<|eot_id|>"),
    "llama-3.1-8b-instruct": ("<|begin_of_text|>", "<|eot_id|>"),
    "llama-3.2-3b-instruct": ("<|begin_of_text|>", "<|eot_id|>"),
    "hermes-3-llama-3.1-tool-use": ("<|begin_of_text|>", "<|im_end|>"),
    "qwen2.5-7b-instruct": ("", "<|im_end|>"),
    "qwen3-0.6b": ("", "<|im_end|>"),
    "qwq-32b": ("", "<|im_end|>"),
    "deepseek-r1-distill-qwen-32b": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
    "deepseek-v3.1": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
    "gemma-2-2b-it": ("<bos>", "<eos>"),
    "gemma-3-it": ("<bos>", "<eos>"),
    "mistral-7b-instruct-v0.3": ("<s>", "</s>"),
    "mistral-nemo-instruct-2407": ("<s>", "</s>"),
    "mistral-small-3.2-24b-instruct-2506": ("<s>", "</s>"),
    "devstral-small-2507": ("<s>", "</s>"),
    "phi-3-mini-4k-instruct": ("<s>", "<|endoftext|>"),
    "phi-3.5-mini-instruct": ("<s>", "<|endoftext|>"),
    "granite-3.3-2b-instruct": ("<|end_of_text|>", "<|end_of_text|>"),
    "command-r7b-tool-use": ("<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>"),
    "functionary-medium-v3.2": ("<|begin_of_text|>", "<|eot_id|>"),
    "gpt-oss-120b": ("<|startoftext|>", "<|return|>"),
    "kimi-k2": ("[BOS]", "[EOS]"),
    "seed-oss": ("<seed:bos>", "<seed:eos>"),
    "nemotron-nano-v2": ("<SPECIAL_10>", "<SPECIAL_11>"),
}

# ---------------------------------------------------------------------------------------------- conversations

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. Paris"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
SEARCH_TOOL = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the web — returns «snippets»",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
    },
}
TOOLS = [WEATHER_TOOL, SEARCH_TOOL]

CALL = {"id": "call12345", "type": "function",
        "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}
CALL_STR = {"id": "call67890", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Tokyo\"}"}}
TOOL_RESULT = {"role": "tool", "tool_call_id": "call12345", "name": "get_weather",
               "content": "{\"temperature\": 21, \"condition\": \"sunny\"}"}
TOOL_RESULT_STR = {"role": "tool", "tool_call_id": "call67890", "name": "get_weather",
                   "content": "{\"temperature\": 9, \"condition\": \"rain\"}"}

SYSTEM = {"role": "system", "content": "You are a concise assistant."}

CONVERSATIONS = {
    "basic": {"messages": [{"role": "user", "content": "Hello!"}]},
    "system": {"messages": [SYSTEM, {"role": "user", "content": "What is 2+2?"}]},
    "multi_turn": {"messages": [
        SYSTEM,
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one?"},
    ]},
    "assistant_last": {"messages": [
        {"role": "user", "content": "Say hi."},
        {"role": "assistant", "content": "Hi!"},
    ]},
    "unicode": {"messages": [
        {"role": "user", "content": "Привет 👋 \"quotes\" and \\ backslash\n— ünïcödé 日本語\ttab"},
        {"role": "assistant", "content": "Здравствуйте! こんにちは 🎉"},
        {"role": "user", "content": "«Merci» ‘bien’"},
    ]},
    "empty_content": {"messages": [
        {"role": "user", "content": ""},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "next"},
    ]},
    "whitespace": {"messages": [
        {"role": "system", "content": "  Be brief.  \n"},
        {"role": "user", "content": "\n  padded question  \n\n"},
    ]},
    "tools": {"messages": [SYSTEM, {"role": "user", "content": "What's the weather in Paris?"}],
              "extra": {"tools": TOOLS}},
    "tool_calls": {"messages": [
        {"role": "user", "content": "What's the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        TOOL_RESULT,
    ], "extra": {"tools": [WEATHER_TOOL]}},
    "tool_calls_full": {"messages": [
        SYSTEM,
        {"role": "user", "content": "Weather in Tokyo, then summarise."},
        {"role": "assistant", "content": "", "tool_calls": [CALL_STR]},
        TOOL_RESULT_STR,
        {"role": "assistant", "content": "It is 9 °C and raining in Tokyo."},
        {"role": "user", "content": "Thanks!"},
    ], "extra": {"tools": [WEATHER_TOOL]}},
    "thinking": {"messages": [
        {"role": "user", "content": "What is 3*7?"},
        {"role": "assistant", "content": "<think>\n3*7 is 21.\n</think>\n\n21", },
        {"role": "user", "content": "And 4*5?"},
        {"role": "assistant", "content": "20", "reasoning_content": "4 times 5 is 20."},
        {"role": "user", "content": "Thanks."},
    ]},
    "thinking_off": {"messages": [{"role": "user", "content": "Quick: capital of Italy?"}],
                     "extra": {"enable_thinking": False}},
    "content_parts": {"messages": [
        {"role": "system", "content": [{"type": "text", "text": "Answer in French."}]},
        {"role": "user", "content": [{"type": "text", "text": "Describe the sky."}]},
    ]},
    "parallel_tool_calls": {"messages": [
        {"role": "user", "content": "Weather in Paris and Tokyo?"},
        {"role": "assistant", "content": None, "tool_calls": [CALL, CALL_STR]},
        TOOL_RESULT,
        TOOL_RESULT_STR,
    ], "extra": {"tools": TOOLS}},
    "bad_tool_call_id": {"messages": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [dict(CALL, id="call_1")]},
        dict(TOOL_RESULT, tool_call_id="call_1"),
    ], "extra": {"tools": [WEATHER_TOOL]}},
    "bad_roles": {"messages": [
        {"role": "user", "content": "one"},
        {"role": "user", "content": "two"},
    ]},
    "bad_roles_assistant_first": {"messages": [
        {"role": "assistant", "content": "I speak first."},
        {"role": "user", "content": "ok"},
    ]},
}

MAX_CASE_CHARS = 3500  # keep the fixture small: renderings longer than this are left out


def build_cases():
    cases = []
    for stem, (bos, eos) in TEMPLATES.items():
        with open(os.path.join(FIX, "templates", stem + ".jinja"), encoding="utf-8") as f:
            source = f.read()
        for conv_name, conv in CONVERSATIONS.items():
            gens = [True, False] if conv_name in ("assistant_last", "multi_turn") else [True]
            for gen in gens:
                ctx = dict(conv.get("extra", {}))
                ctx.update(messages=conv["messages"], add_generation_prompt=gen, bos_token=bos, eos_token=eos)
                out, err, kind = render(source, json.loads(json.dumps(ctx)))
                case = {"template": stem, "conversation": conv_name, "add_generation_prompt": gen,
                        "bos_token": bos, "eos_token": eos}
                if err is not None:
                    case["error"] = err
                    case["error_kind"] = kind
                elif len(out) > MAX_CASE_CHARS:
                    continue
                else:
                    case["expected"] = out
                cases.append(case)
    return cases


# ---------------------------------------------------------------------------------------------- unit cases

U = []


def unit(source, ctx=None, name=None):
    U.append({"name": name or source[:60], "source": source, "context": ctx or {}})


# literals, output, whitespace control
unit("{{ 'a' }}{{ \"b\" }}{{ 'c' 'd' }}|{{ 1 }}|{{ 1.5 }}|{{ -3 }}|{{ 1e3 }}|{{ 2.0 }}|{{ 0.1 + 0.2 }}")
unit("{{ true }}{{ false }}{{ none }}{{ True }}{{ None }}|{{ [1, 'x', none, true, 2.5] }}|{{ {'a': 1, 'b': [1, 2]} }}")
unit("{{ 'esc: \\n\\t\\\\ \\' \\\" \\u00e9 \\x41' }}")
unit("{{ \"it's\" }} {{ ['it\\'s', \"q\\\"\"] }}")
unit("a  {{- ' b ' -}}  c\n  {%- if true %} d {% endif -%}  \n e")
unit("line1\n    {% if true %}\n    kept\n    {% endif %}\nline2\n")
unit("x {# comment #} y\n  {# own line #}\nz\n{#- stripped -#}  w")
unit("{% if true %}yes{% endif %}\n{% for i in [1,2] %}\n  {{ i }}\n{% endfor %}\nend")
unit("  {%+ if true %}keep lstrip{% endif +%}\nnext")
unit("{% raw %}{{ not rendered }} {% if %}{% endraw %}|after")
unit("trailing newline kept?\n\n")
unit("{{ 1 }}\r\n{{ 2 }}\r\n")
# arithmetic and operators
unit("{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** 10 }} {{ 2 ** -1 }} {{ 1 + 2 * 3 - 4 }}")
unit("{{ 'a' ~ 1 ~ none ~ true }} {{ 'ab' * 3 }} {{ [1] + [2, 3] }} {{ 'x' + 'y' }} {{ 7.5 // 2 }} {{ 10 % 4.5 }}")
unit("{{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 1 == 1.0 }} {{ 'a' != 'b' }} {{ [1,2] == [1,2] }} {{ 'b' > 'a' }} {{ true == 1 }}")
unit("{{ 'ell' in 'hello' }} {{ 3 not in [1,2] }} {{ 'k' in {'k': 1} }} {{ not 'k' in {'k': 1} }}")
unit("{{ 1 and 'x' }} {{ 0 or 'y' }} {{ none or [] }} {{ not none }} {{ 'a' if false else 'b' }} [{{ 'a' if false }}]")
unit("{{ (1, 2) | join(',') }} {{ (1,) | length }} {{ () | length }} {{ -(2 + 3) }} {{ +4 }} {{ -2 ** 2 }}")
unit("{{ 'x' + 1 }}")
unit("{{ 1 / 0 }}")
unit("{{ 1 < 'a' }}")
# attribute / item access, slicing
unit("{{ d.a }} {{ d['a'] }} {{ d.b.c }} {{ d['b']['c'] }} {{ l[0] }} {{ l[-1] }} {{ l.1 }} [{{ d.missing }}] [{{ l[10] }}]",
     {"d": {"a": 1, "b": {"c": "deep"}}, "l": [10, 20, 30]})
unit("{{ l[1:] }} {{ l[:2] }} {{ l[::-1] }} {{ l[::2] }} {{ l[-2:] }} {{ l[1:-1] }} {{ s[::-1] }} {{ s[1:3] }} {{ s[-1] }} {{ s[:-1] }}",
     {"l": [1, 2, 3, 4, 5], "s": "héllo"})
unit("{{ d.missing.attr }}", {"d": {}})
unit("{{ undefined_var.attr }}")
unit("{{ l[5].x }}", {"l": [1]})
unit("{{ d.items() | list | length }} {{ d.items() | map('last') | list }} {{ d.keys() | list }} {{ d.values() | list }} {{ d.get('a') }} {{ d.get('z') }} {{ d.get('z', 'dflt') }}",
     {"d": {"a": 1, "b": 2}})
# string methods
unit("[{{ s.strip() }}] [{{ s.lstrip() }}] [{{ s.rstrip() }}] [{{ 'xxhixx'.strip('x') }}] [{{ '\\n\\nhi\\n'.lstrip('\\n') }}]",
     {"s": "  hi there \n"})
unit("{{ s.startswith('ab') }} {{ s.endswith('yz') }} {{ s.startswith(('q', 'a')) }} {{ s.upper() }} {{ 'MiXed'.lower() }} {{ 'hello world'.title() }} {{ 'hello World'.capitalize() }}",
     {"s": "abcxyz"})
unit("{{ 'a,b,,c'.split(',') }} {{ '  a b  c '.split() }} {{ 'a-b-c'.split('-', 1) }} {{ 'a-b-c'.rsplit('-', 1) }} {{ 'x</think>y</think>z'.split('</think>')[-1] }}")
unit("{{ 'aaa'.replace('a', 'b') }} {{ 'aaa'.replace('a', 'b', 2) }} {{ 'hello'.find('l') }} {{ 'hello'.find('z') }} {{ 'hello'.count('l') }} {{ '-'.join(['a', 'b']) }}")
unit("{{ '{} and {}'.format('x', 'y') }} {{ '{0}{1}{0}'.format('a', 'b') }} {{ '{name}!'.format(name='Bob') }} {{ '{:>5}|{:<4}|{:^5}'.format('r', 'l', 'c') }} {{ '{:.2f}'.format(3.14159) }}")
unit("{{ '%s is %d years' % ('Tom', 30) }} {{ '%05.1f' % 3.14159 }} {{ '%(a)s-%(b)s' % {'a': 1, 'b': 2} }}")
unit("{{ 'abc'.isdigit() }} {{ '123'.isdigit() }} {{ '  '.isspace() }} {{ 'Ab'.isupper() }}")
# filters
unit("[{{ '  x  ' | trim }}] [{{ 'xxyxx' | trim('x') }}] {{ [1,2,3] | length }} {{ 'héllo' | length }} {{ {'a':1} | count }} {{ undefined_thing | length }}")
unit("{{ {'b': 1, 'a': [1, 2.5, none, true, 'é\"\\n']} | tojson }}")
unit("{{ {'b': 1, 'a': [1, {'x': {}}], 'c': []} | tojson(indent=2) }}")
unit("{{ x | tojson(indent=4) }}|{{ 'plain' | tojson }}|{{ 3.0 | tojson }}|{{ none | tojson }}|{{ {'z': 1, 'a': 2} | tojson(sort_keys=true) }}",
     {"x": {"name": "f", "params": {"type": "object", "properties": {"q": {"type": "string"}}}}})
unit("{{ 'hello world' | upper }} {{ 'HeLLo' | lower }} {{ 'hello wORLD-foo (bar' | title }} {{ 'hello World' | capitalize }}")
unit("{{ missing | default('dflt') }} {{ '' | default('dflt') }} {{ '' | default('dflt', true) }} {{ none | d('n') }} {{ 0 | d(5, boolean=true) }}")
unit("{{ [3,1,2] | first }} {{ [3,1,2] | last }} {{ 'abc' | first }} {{ [1,2,3] | join(', ') }} {{ [1,2] | join }} {{ users | join(', ', attribute='name') }}",
     {"users": [{"name": "a"}, {"name": "b"}]})
unit("{{ 'abc' | list }} {{ {'a': 1, 'b': 2} | list }} {% for k, v in {'a': 1, 'b': 2} | items %}{{ k }}{{ v }}{% endfor %} {{ undefined_thing | items | list }}")
unit("{{ 'a-b-a' | replace('a', 'x') }} {{ 42 | string }} {{ [1, 'a'] | string }} {{ '42' | int }} {{ '3.9' | int }} {{ 'x' | int }} {{ 'x' | int(7) }} {{ '0x1A' | int(0, 16) }} {{ 3.9 | int }} {{ '2.5' | float }} {{ 'x' | float }} {{ 5 | float }}")
unit("{{ -3 | abs }} {{ (-2.5) | abs }} {{ 2.5 | round }} {{ 3.14159 | round(2) }} {{ 2.1 | round(0, 'ceil') }} {{ 2.9 | round(method='floor') }} {{ 7 | round }} {{ 3.5 | round }} {{ -2.5 | round }} {{ 2.675 | round(2) }}")
unit("{{ users | map(attribute='name') | list }} {{ ['a', 'b'] | map('upper') | list }} {{ users | map(attribute='age', default=0) | list }}",
     {"users": [{"name": "x", "age": 3}, {"name": "y"}]})
unit("{{ [1,2,3,4,5] | select('odd') | list }} {{ [1,2,3,4] | reject('even') | list }} {{ [0, 1, '', 'a', none] | select | list }} {{ [1,2,3] | select('divisibleby', 3) | list }} {{ ['a', 1, 'b'] | select('string') | list }}")
unit("{{ ms | selectattr('role', 'equalto', 'user') | list | length }} {{ ms | rejectattr('role', 'eq', 'user') | map(attribute='content') | join(',') }} {{ ms | selectattr('tool') | list | length }}",
     {"ms": [{"role": "user", "content": "u1"}, {"role": "assistant", "content": "a1", "tool": True}, {"role": "user", "content": "u2"}]})
unit("{{ [3, 1, 2, 1] | unique | list }} {{ ['a', 'A', 'b'] | unique | list }} {{ [3, 1, 2] | sort }} {{ [3, 1, 2] | sort(reverse=true) }} {{ ['b', 'A', 'c'] | sort }} {{ users | sort(attribute='age') | map(attribute='n') | join }}",
     {"users": [{"n": "x", "age": 3}, {"n": "y", "age": 1}, {"n": "z", "age": 2}]})
unit("{{ [1, 2, 3] | reverse | list }} {{ 'abc' | reverse }} {{ 'a\\nb\\n\\nc' | indent }}|{{ 'a\\nb' | indent(2, true) }}|{{ 'a\\n\\nb' | indent(2, blank=true) }}|{{ 'x' | safe }} {{ 'one two, three' | wordcount }}")
unit("{{ [1,2,3,4,5] | batch(2) | list }} {{ [1,2,3] | batch(2, 0) | list }} {{ [1, 2, 3] | sum }} {{ [3, 1, 2] | min }} {{ [3, 1, 2] | max }} {% for k, v in {'b': 1, 'a': 2} | dictsort %}{{ k }}{{ v }}{% endfor %}")
unit("{{ 'x' | nosuchfilter }}")
# tests
unit("{{ x is defined }} {{ y is defined }} {{ y is undefined }} {{ none is none }} {{ 'a' is string }} {{ 1 is number }} {{ 1.5 is number }} {{ true is number }} {{ 1 is integer }} {{ true is integer }} {{ 1.0 is float }}",
     {"x": 1})
unit("{{ {} is mapping }} {{ [] is mapping }} {{ [] is iterable }} {{ 'a' is iterable }} {{ 1 is iterable }} {{ [] is sequence }} {{ 'a' is sequence }} {{ true is boolean }} {{ 1 is boolean }} {{ true is true }} {{ false is false }} {{ 0 is false }}")
unit("{{ 1 is equalto 1 }} {{ 'a' is eq 'b' }} {{ 2 is == 2 }} {{ none is sameas none }} {{ false is sameas 0 }} {{ 'a' is in 'abc' }} {{ 3 is in [1, 2] }} {{ 3 is odd }} {{ 4 is even }} {{ 9 is divisibleby 3 }} {{ 5 is not odd }} {{ x is not none }}",
     {"x": 0})
unit("{{ m.content is string and m.content.startswith('<tool_response>') }} {{ m.tool_calls is defined }} {{ m.tool_calls is not defined and m.role == 'user' }}",
     {"m": {"role": "user", "content": "<tool_response>x</tool_response>"}})
unit("{{ 1 is nosuchtest }}")
# statements
unit("{% if x > 2 %}big{% elif x > 1 %}mid{% else %}small{% endif %}|{% if not y %}no y{% endif %}", {"x": 2})
unit("{% for i in range(3) %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }};{% endfor %}")
unit("{% for i in ['a', 'b', 'c'] %}[{{ loop.previtem }}|{{ i }}|{{ loop.nextitem }}]{% endfor %}")
unit("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}|{% for k, v in d | items %}{{ k }}{{ v }}{% endfor %}|{% for k in d %}{{ k }}{% endfor %}",
     {"d": {"z": 1, "a": 2, "m": 3}})
unit("{% for i in range(10) if i is odd %}{{ i }}/{{ loop.index }}/{{ loop.length }} {% endfor %}")
unit("{% for i in [] %}x{% else %}empty{% endfor %}|{% for i in none_var %}x{% else %}undefined iterates empty{% endfor %}")
unit("{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i == 5 %}{% break %}{% endif %}{{ i }}{% endfor %}")
unit("{% for row in [[1, 2], [3, 4]] %}{% for c in row %}{{ loop.index }}{{ c }}{% endfor %};{% endfor %}")
unit("{% for i in range(2, 8, 2) %}{{ i }}{% endfor %} {{ range(3) | list }} {{ range(5, 0, -2) | list }}")
unit("{% for i in [1,2,3] %}{{ loop.cycle('odd', 'even') }} {% endfor %}")
unit("{% set x = 0 %}{% for i in range(3) %}{{ x }}{% set x = i %}{{ x }}{% endfor %}|{{ x }}")
unit("{% set ns = namespace(total=0, items=[]) %}{% for i in range(4) %}{% set ns.total = ns.total + i %}{% endfor %}{{ ns.total }} {{ ns.items }}")
unit("{% set ns = namespace() %}{% set ns.flag = true %}{{ ns.flag }}{% set a, b = [1, 2] %}{{ a }}{{ b }}{% set t = (1, 'x') %}{{ t[1] }}")
unit("{% set block_var %}inside {{ 1 + 1 }}{% endset %}[{{ block_var }}]{% set up | upper %}shout{% endset %}{{ up }}")
unit("{% macro greet(name, punct='!') %}Hello {{ name }}{{ punct }}{% endmacro %}{{ greet('A') }} {{ greet('B', '?') }} {{ greet(name='C', punct='.') }}")
unit("{% macro render_list(items) %}{% for i in items %}<{{ i }}>{% endfor %}{% endmacro %}{{ render_list([1, 2]) }}|{% macro rec(n) %}{{ n }}{% if n > 0 %}{{ rec(n - 1) }}{% endif %}{% endmacro %}{{ rec(3) }}")
unit("{% macro wrap(tag) %}<{{ tag }}>{{ caller() }}</{{ tag }}>{% endmacro %}{% call wrap('b') %}bold {{ 1 }}{% endcall %}|{% macro each(xs) %}{% for x in xs %}{{ caller(x) }}{% endfor %}{% endmacro %}{% call(x) each([1, 2]) %}[{{ x }}]{% endcall %}")
unit("{% filter upper %}shout {{ 'this' }}{% endfilter %}")
unit("{% with a = 1, b = 2 %}{{ a + b }}{% endwith %}[{{ a }}]")
unit("{% generation %}assistant text {{ 1 }}{% endgeneration %}")
unit("{{ raise_exception('Custom failure: roles must alternate') }}")
unit("{% if messages | length > 1 %}{{ raise_exception('Only one message is supported, got ' ~ messages | length) }}{% endif %}",
     {"messages": [1, 2]})
unit("{{ strftime_now('%Y-%m-%d %b %d') }}")
unit("{{ dict(a=1, b='x') }} {{ dict(a=1)['a'] }} {{ namespace(a=1).a }}")
unit("{% for item in [{'a': {'b': 1}}] %}{{ item.a.b }}{% endfor %}|{{ {'k': {'a': [1, {'b': 2}]}}.k.a[1].b }}")
unit("{{ x.y }}", {"x": None})
unit("{{ [].append(1) }}")
unit("{{ 'abc'.nosuchmethod }}|{{ 'abc'.upper is defined }}")
unit("{% set d = {0: 'zero', 256: 'big'} %}{{ d[0] }} {{ d[256] }} {% for k, v in d | dictsort %}{{ k + 1 }}{{ v }} {% endfor %}{{ 0 in d }}")
unit("{% set messages = messages[1:] %}{% for m in messages %}{{ m }}{% endfor %}", {"messages": ["a", "b", "c"]})
unit("{{ x | int }} {{ x is integer }} {{ y }} {{ y | tojson }} {{ 10000000000000000.0 }} {{ 0.0001 }} {{ 0.00001 }} {{ 1.5e300 }} {{ 123456789.125 }}",
     {"x": 5, "y": 1.0})
# syntax errors
unit("{% if x %}unclosed")
unit("{% for %}{% endfor %}")
unit("{{ 1 + }}")
unit("{% endif %}")
unit("{% nosuchtag %}")
unit("{{ 'unterminated }}")
unit("line1\nline2 {{ a b }}")


def build_units():
    out = []
    for u in U:
        res, err, kind = render(u["source"], json.loads(json.dumps(u["context"])))
        case = dict(u)
        if err is not None:
            case["error"] = err
            case["error_kind"] = kind
        else:
            case["expected"] = res
        out.append(case)
    return out


def main():
    if not jinja2.__version__.startswith("3."):
        print(f"warning: jinja2 {jinja2.__version__}; fixtures were made with 3.1.x", file=sys.stderr)
    cases = build_cases()
    data = {"jinja2_version": jinja2.__version__, "now": NOW.isoformat(), "conversations": CONVERSATIONS,
            "cases": cases}
    path = os.path.join(FIX, "chat_template_cases.json")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        json.dump(data, f, ensure_ascii=False, indent=0)
        f.write("\n")
    units = build_units()
    upath = os.path.join(FIX, "jinja_units.json")
    with open(upath, "w", encoding="utf-8", newline="\n") as f:
        json.dump({"jinja2_version": jinja2.__version__, "now": NOW.isoformat(), "units": units}, f,
                  ensure_ascii=False, indent=1)
        f.write("\n")
    n_err = sum(1 for c in cases if "error" in c)
    print(f"{len(cases)} template cases ({n_err} errors) -> {os.path.relpath(path, ROOT)} "
          f"({os.path.getsize(path)} bytes)")
    print(f"{len(units)} unit cases -> {os.path.relpath(upath, ROOT)} ({os.path.getsize(upath)} bytes)")


if __name__ == "__main__":
    main()
