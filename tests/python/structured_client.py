"""Structured output and constrained tool calls through the official `openai` package,
against a running wick server: `chat.completions.parse` with a Pydantic model,
`response_format` json_schema / json_object, vLLM's `structured_outputs` and `guided_*`
fields on both endpoints, `tool_choice` "required" and named (plain and streamed), the
400s, and a tool-call round trip. SmolLM2 is far too weak to write valid JSON by itself:
only the constraint can make these outputs valid.

Usage: python structured_client.py BASE_URL   (e.g. http://127.0.0.1:8000/v1)
Exits non-zero (with a traceback) on the first mismatch.
"""
import asyncio
import enum
import json
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Literal

import openai
from openai.lib._pydantic import to_strict_json_schema
from pydantic import BaseModel, Field

BASE = sys.argv[1]
MODEL = "smollm2"


def validate(value, schema, root=None, path="$"):
    """Asserts that `value` matches JSON schema `schema` (the keywords used here only:
    any other keyword fails, so that none is silently ignored)."""
    root = root if root is not None else schema
    known = {
        "type", "properties", "required", "additionalProperties", "items", "minItems",
        "maxItems", "minLength", "maxLength", "pattern", "minimum", "maximum", "enum",
        "const", "anyOf", "$ref", "$defs", "title", "description",
    }
    assert set(schema) <= known, (path, set(schema) - known)
    if "$ref" in schema:
        target = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        validate(value, target, root, path)
    if "anyOf" in schema:
        assert any(is_valid(value, s, root) for s in schema["anyOf"]), (path, value)
    if "const" in schema:
        assert value == schema["const"], (path, value)
    if "enum" in schema:
        assert value in schema["enum"], (path, value)
    types = {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "null": lambda v: v is None,
    }
    if "type" in schema:
        assert types[schema["type"]](value), (path, schema["type"], value)
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            assert key in value, (path, "missing", key, value)
        if schema.get("additionalProperties") is False:
            assert set(value) <= set(props), (path, "extra", set(value) - set(props))
        for key, v in value.items():
            if key in props:
                validate(v, props[key], root, f"{path}.{key}")
    if isinstance(value, list):
        assert schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", 1 << 30), (path, value)
        for i, v in enumerate(value):
            if "items" in schema:
                validate(v, schema["items"], root, f"{path}[{i}]")
    if isinstance(value, str):
        assert schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", 1 << 30), (path, value)
        if "pattern" in schema:
            assert re.search(schema["pattern"], value), (path, schema["pattern"], value)
    if types["number"](value):
        assert schema.get("minimum", value) <= value <= schema.get("maximum", value), (path, value)


def is_valid(value, schema, root):
    try:
        validate(value, schema, root)
        return True
    except AssertionError:
        return False


def expect_400(what, param, needle, **kwargs):
    """The request is refused as the SDK's BadRequestError naming `param`, its message
    naming `needle`."""
    try:
        client.chat.completions.create(model=MODEL, max_tokens=16, **kwargs)
    except openai.BadRequestError as e:
        assert e.status_code == 400, (what, e)
        assert e.param == param and needle in e.message, (what, param, needle, e.param, e.message)
        return
    raise AssertionError(f"{what} was accepted")


client = openai.OpenAI(base_url=BASE, api_key="unused", max_retries=0)

# The self-check of the validator: it must be able to fail.
_schema = {"type": "object", "properties": {"a": {"type": "integer", "maximum": 3}},
           "required": ["a"], "additionalProperties": False}
assert is_valid({"a": 3}, _schema, _schema)
for bad in [{"a": 4}, {"a": "3"}, {}, {"a": 1, "b": 2}, {"a": True}]:
    assert not is_valid(bad, _schema, _schema), bad


# 1. `parse` with a bounded Pydantic model, sampled at temperature 1 under 20 seeds.
class Color(str, enum.Enum):
    red = "red"
    green = "green"
    blue = "blue"


class Pet(BaseModel):
    name: str = Field(max_length=12, pattern=r"^[A-Za-z ]*$")
    age: int = Field(ge=0, le=30)


class Person(BaseModel):
    name: str = Field(max_length=20, pattern=r"^[A-Za-z ]*$")
    age: int = Field(ge=0, le=120)
    color: Color
    role: Literal["admin", "user"]
    tags: list[Annotated[str, Field(max_length=10, pattern=r"^[a-z]*$")]] = Field(max_length=3)
    pet: Pet


# The longest output the schema allows, in bytes (every token is at least one byte, the
# patterns keep strings to ASCII letters and spaces, so no escapes).
LONGEST = Person(
    name="N" * 20, age=100, color=Color.green, role="admin", tags=["t" * 10] * 3,
    pet=Pet(name="P" * 12, age=10),
)
PARSE_MAX_TOKENS = len(json.dumps(LONGEST.model_dump(mode="json")).encode()) + 8
PERSON_SCHEMA = to_strict_json_schema(Person)
PERSON_MESSAGES = [{"role": "user", "content": "Describe a person who owns a pet, as JSON."}]


async def parse_many(seeds):
    aclient = openai.AsyncOpenAI(base_url=BASE, api_key="unused", max_retries=0)
    done = await asyncio.gather(*[
        aclient.chat.completions.parse(
            model=MODEL, messages=PERSON_MESSAGES, response_format=Person,
            temperature=1, seed=seed, max_tokens=PARSE_MAX_TOKENS,
        )
        for seed in seeds
    ])
    await aclient.close()
    return done


parsed = asyncio.run(parse_many(range(20)))
contents = []
for seed, result in enumerate(parsed):
    choice = result.choices[0]
    assert choice.finish_reason == "stop", (seed, choice)
    person = choice.message.parsed
    assert isinstance(person, Person), (seed, person)
    content = choice.message.content
    assert Person.model_validate_json(content) == person, (seed, content)
    value = json.loads(content)
    validate(value, PERSON_SCHEMA)
    assert len(person.name) <= 20 and 0 <= person.age <= 120 and len(person.tags) <= 3, person
    assert person.role in ("admin", "user") and person.color in list(Color), person
    assert 0 <= person.pet.age <= 30 and len(person.pet.name) <= 12, person
    # One space after `,` and `:`, no other whitespace: Python's own default layout.
    assert content == json.dumps(value), (seed, content)
    contents.append(content)
assert len(set(contents)) > 1, f"20 seeds at temperature 1 gave one output: {contents[0]}"


# 2. A raw strict json_schema: enums, a nested object, a bounded array of objects.
FORECAST = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]},
        "alert": {"type": "boolean"},
        "station": {
            "type": "object",
            "properties": {
                "code": {"type": "string", "pattern": "^[A-Z]{3}$"},
                "elevation": {"type": "integer", "minimum": 0, "maximum": 5000},
            },
            "required": ["code", "elevation"],
            "additionalProperties": False,
        },
        "days": {
            "type": "array",
            "minItems": 1,
            "maxItems": 3,
            "items": {
                "type": "object",
                "properties": {
                    "day": {"type": "integer", "minimum": 1, "maximum": 7},
                    "sky": {"enum": ["sunny", "cloudy", "rain"]},
                    "note": {"type": "string", "maxLength": 8},
                },
                "required": ["day", "sky", "note"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["city", "alert", "station", "days"],
    "additionalProperties": False,
}
FORECAST_FORMAT = {
    "type": "json_schema", "json_schema": {"name": "forecast", "schema": FORECAST, "strict": True},
}
FORECAST_MESSAGES = [{"role": "user", "content": "Give a short weather forecast as JSON."}]
# The longest output the schema allows, in bytes: notes of 8 characters outside the BMP,
# each written as two \uXXXX escapes.
LONGEST_DAY = {"day": 1, "sky": "cloudy", "note": "\U0001F600" * 8}
LONGEST_FORECAST = {
    "city": "London", "alert": False, "station": {"code": "ABC", "elevation": 5000}, "days": [LONGEST_DAY] * 3,
}
validate(LONGEST_FORECAST, FORECAST)
FORECAST_MAX_TOKENS = len(json.dumps(LONGEST_FORECAST)) + 8


def forecast(seed, **kwargs):
    return client.chat.completions.create(
        model=MODEL, messages=FORECAST_MESSAGES, response_format=FORECAST_FORMAT,
        temperature=1, seed=seed, max_tokens=FORECAST_MAX_TOKENS, **kwargs,
    )


# Seed 1 runs alone (its streamed twin is compared with it below), the others together.
with ThreadPoolExecutor() as pool:
    chats = dict(zip((0, 2), pool.map(forecast, (0, 2))))
chats[1] = forecast(1)
forecasts = {}
for seed, chat in chats.items():
    assert chat.choices[0].finish_reason == "stop", chat
    forecasts[seed] = chat.choices[0].message.content
    validate(json.loads(forecasts[seed]), FORECAST)


# 3. json_object, choice, regex and Lark grammar, on chat and on completions.
def chat_text(content, max_tokens, **kwargs):
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": content}], max_tokens=max_tokens,
        temperature=0, **kwargs,
    )
    assert chat.choices[0].finish_reason == "stop", chat
    return chat.choices[0].message.content


def completion_text(prompt, max_tokens, **kwargs):
    comp = client.completions.create(model=MODEL, prompt=prompt, max_tokens=max_tokens, temperature=0, **kwargs)
    assert comp.choices[0].finish_reason == "stop", comp
    return comp.choices[0].text


obj = json.loads(chat_text(
    "Return a JSON object with the name Alice and the age 30.", 64, response_format={"type": "json_object"},
))
assert isinstance(obj, dict), obj
obj = json.loads(completion_text(
    "A JSON object describing a cat:", 64, extra_body={"structured_outputs": {"json_object": True}},
))
assert isinstance(obj, dict), obj

def yes_or_no(seed):
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Is the sky green?"}], max_tokens=8,
        temperature=1, seed=seed, extra_body={"guided_choice": ["yes", "no"]},
    ).choices[0].message.content


with ThreadPoolExecutor() as pool:
    answers = list(pool.map(yes_or_no, range(4)))
assert set(answers) <= {"yes", "no"}, answers
answer = completion_text("Q: Is water wet? A:", 8, extra_body={"structured_outputs": {"choice": ["yes", "no"]}})
assert answer in ("yes", "no"), answer

PHONE = "[0-9]{3}-[0-9]{4}"
phone = chat_text("Give me a phone number.", 16, extra_body={"structured_outputs": {"regex": PHONE}})
assert re.fullmatch(PHONE, phone), phone
phone = completion_text("Call me at", 16, extra_body={"guided_regex": PHONE})
assert re.fullmatch(PHONE, phone), phone

GREETING = """
start: greeting " " name "!"
greeting: "hello" | "hi"
name: /[a-z]{1,8}/
"""
text = chat_text("Greet someone.", 16, extra_body={"guided_grammar": GREETING})
assert re.fullmatch(r"(hello|hi) [a-z]{1,8}!", text), text
text = completion_text("Greeting:", 16, extra_body={"structured_outputs": {"grammar": 'start: "A" | "B" "C"'}})
assert text in ("A", "BC"), text


# 4. Constrained tool calls.
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 20},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city", "unit"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "The current time in a timezone.",
            "parameters": {
                "type": "object",
                "properties": {"timezone": {"type": "string", "maxLength": 20}},
                "required": ["timezone"],
                "additionalProperties": False,
            },
        },
    },
]
PARAMETERS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
TOOL_MESSAGES = [{"role": "user", "content": "What is the weather in Paris, and the time in Tokyo?"}]
# One call takes at most ~300 bytes (strings of 20 characters as \uXXXX pairs) and the
# samples here make one or two: the requests are seeded, so this does not flake.
TOOL_MAX_TOKENS = 400


def tool_chat(tool_choice, **kwargs):
    return client.chat.completions.create(
        model=MODEL, messages=TOOL_MESSAGES, tools=TOOLS, tool_choice=tool_choice,
        max_tokens=TOOL_MAX_TOKENS, **kwargs,
    )


def check_calls(chat, names=tuple(PARAMETERS)):
    choice = chat.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert not choice.message.content, choice.message
    calls = choice.message.tool_calls
    assert calls, choice.message
    for call in calls:
        assert call.id and call.type == "function", call
        assert call.function.name in names, call
        validate(json.loads(call.function.arguments), PARAMETERS[call.function.name])
    assert len({c.id for c in calls}) == len(calls), calls
    return [(c.function.name, c.function.arguments) for c in calls]


required = {seed: check_calls(tool_chat("required", temperature=1, seed=seed)) for seed in range(3)}
single = check_calls(tool_chat("required", temperature=1, seed=0, parallel_tool_calls=False))
assert len(single) == 1, single
NAMED = {"type": "function", "function": {"name": "get_time"}}
named = check_calls(tool_chat(NAMED, temperature=0), names=("get_time",))
assert len(named) == 1, named


# 5. Streaming: the same calls and text as unstreamed under the same seed.
def streamed(**kwargs):
    """(tool calls by index as [(name, arguments)], content, finish_reason)."""
    calls, content, finish = {}, [], None
    for chunk in client.chat.completions.create(model=MODEL, stream=True, **kwargs):
        for c in chunk.choices:
            if c.delta.content:
                content.append(c.delta.content)
            for tc in c.delta.tool_calls or []:
                if tc.index not in calls:
                    # The first chunk of a call names it.
                    assert tc.id and tc.type == "function" and tc.function.name, tc
                    calls[tc.index] = [tc.id, tc.function.name, tc.function.arguments or ""]
                else:
                    assert not tc.id and not (tc.function and tc.function.name), tc
                    calls[tc.index][2] += tc.function.arguments or ""
            if c.finish_reason:
                finish = c.finish_reason
    assert sorted(calls) == list(range(len(calls))), calls
    return [(calls[i][1], calls[i][2]) for i in sorted(calls)], "".join(content), finish


for seed in (0, 2):
    calls, content, finish = streamed(
        messages=TOOL_MESSAGES, tools=TOOLS, tool_choice="required", max_tokens=TOOL_MAX_TOKENS,
        temperature=1, seed=seed,
    )
    want = (required[seed], "", "tool_calls")
    assert (calls, content, finish) == want, (seed, calls, content, finish, want)
calls, content, finish = streamed(
    messages=TOOL_MESSAGES, tools=TOOLS, tool_choice=NAMED, max_tokens=TOOL_MAX_TOKENS, temperature=0,
)
assert (calls, content, finish) == (named, "", "tool_calls"), (calls, content, finish, named)
calls, content, finish = streamed(
    messages=FORECAST_MESSAGES, response_format=FORECAST_FORMAT, temperature=1, seed=1,
    max_tokens=FORECAST_MAX_TOKENS,
)
assert (calls, content, finish) == ([], forecasts[1], "stop"), (calls, content, finish, forecasts[1])


# 6. What cannot be applied is a 400.
expect_400(
    "an unsupported schema keyword", "response_format.json_schema.schema", "dependentSchemas",
    messages=FORECAST_MESSAGES,
    response_format={"type": "json_schema", "json_schema": {"name": "x", "strict": True, "schema": {
        "type": "object", "properties": {"a": {"type": "string"}},
        "dependentSchemas": {"a": {"required": ["b"]}},
    }}},
)
expect_400(
    "a named tool not in tools", "tool_choice", "nope",
    messages=TOOL_MESSAGES, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}},
)
expect_400(
    "tool_choice required with response_format", "response_format", "tool_choice",
    messages=TOOL_MESSAGES, tools=TOOLS, tool_choice="required", response_format={"type": "json_object"},
)


# 7. A round trip: the call and its result go back as messages.
chat = tool_chat("required", temperature=0, parallel_tool_calls=False)
call = chat.choices[0].message.tool_calls[0]
followup = client.chat.completions.create(
    model=MODEL, max_tokens=16, temperature=0,
    messages=TOOL_MESSAGES + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": call.id, "type": "function",
                            "function": {"name": call.function.name, "arguments": call.function.arguments}}],
        },
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"result": "sunny, 21 degrees"})},
    ],
    tools=TOOLS,
)
assert followup.choices[0].message.role == "assistant", followup
assert followup.choices[0].finish_reason in ("stop", "length", "tool_calls"), followup
assert followup.choices[0].message.content or followup.choices[0].message.tool_calls, followup

print("structured client checks passed")
