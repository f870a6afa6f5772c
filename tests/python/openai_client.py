"""The official `openai` package as a real client of a running wick server.

Usage: python openai_client.py BASE_URL   (e.g. http://127.0.0.1:8000/v1)
Exits non-zero (with a traceback) on the first mismatch.
"""
import asyncio
import sys

import openai

BASE = sys.argv[1]
MODEL = "smollm2"
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def sync_checks():
    client = openai.OpenAI(base_url=BASE, api_key="unused", max_retries=0)
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL], models

    chat = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16, temperature=0)
    text = chat.choices[0].message.content
    assert chat.choices[0].message.role == "assistant"
    assert "Paris" in text, text
    assert chat.choices[0].finish_reason in ("stop", "length")
    assert chat.usage.prompt_tokens > 0 and chat.usage.completion_tokens > 0

    pieces, usage, finish = [], None, None
    for chunk in client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=16, temperature=0, stream=True,
        stream_options={"include_usage": True},
    ):
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                pieces.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
    assert "".join(pieces) == text, (pieces, text)
    assert usage is not None and usage.completion_tokens == chat.usage.completion_tokens, usage
    assert finish == chat.choices[0].finish_reason

    comp = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0)
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0, stream=True
        )
        if c.choices
    )
    assert streamed == comp.choices[0].text, (streamed, comp.choices[0].text)

    try:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=5)
        raise AssertionError("temperature=5 accepted")
    except openai.BadRequestError as e:
        assert e.status_code == 400
    try:
        client.chat.completions.create(model="nope", messages=MESSAGES)
        raise AssertionError("unknown model accepted")
    except openai.NotFoundError as e:
        assert e.status_code == 404
    return text


async def async_checks(expected):
    client = openai.AsyncOpenAI(base_url=BASE, api_key="unused", max_retries=0)

    async def one():
        pieces = []
        stream = await client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=16, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            for c in chunk.choices:
                if c.delta.content:
                    pieces.append(c.delta.content)
        return "".join(pieces)

    results = await asyncio.gather(*[one() for _ in range(4)])
    assert all(r == expected for r in results), results
    comp = await client.completions.create(model=MODEL, prompt="Hello", max_tokens=4, temperature=0)
    assert comp.usage.completion_tokens == 4 or comp.choices[0].finish_reason == "stop"
    await client.close()


expected = sync_checks()
asyncio.run(async_checks(expected))
print("openai client checks passed")
