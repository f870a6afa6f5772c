"""The official `openai` package selecting LoRA adapters by `model` on a running wick.

Usage: python lora_client.py BASE_URL GOLDEN_JSON MODEL_NAME
The server serves the tiny fixture MODEL_NAME as `base` with its adapters under their
fixture names. Every adapter case of that model goes through client.completions.create
with model=<adapter>: the chosen tokens' logprobs match the transformers + PEFT reference
up to the first near tie. Also: models.list() shows the adapters with parent `base`, chat
and streaming work with an adapter, and an unknown model raises NotFoundError.
Exits non-zero (with a traceback) on the first mismatch.
"""
import json
import sys

import openai

BASE, GOLDEN, MODEL_NAME = sys.argv[1], sys.argv[2], sys.argv[3]
TOL = 2e-3


def comparable(case):
    steps = case["steps"][: len(case["output_token_ids"])]
    for i, s in enumerate(steps):
        if s["margin"] < 0.01:
            return i + 1
    return len(steps)


def main():
    model = next(m for m in json.load(open(GOLDEN))["models"] if m["name"] == MODEL_NAME)
    adapters = [a["name"] for a in model["adapters"]]
    client = openai.OpenAI(base_url=BASE, api_key="unused", max_retries=0)

    cards = {m.id: m for m in client.models.list().data}
    assert set(cards) == {"base", *adapters}, cards
    for a in adapters:
        assert cards[a].model_extra["parent"] == "base", cards[a]

    cases = [c for c in model["cases"] if c["adapter"]]
    assert len(cases) == 14, len(cases)
    for case in cases:
        out = client.completions.create(
            model=case["adapter"], prompt=case["prompt_token_ids"], max_tokens=16,
            temperature=0, logprobs=1,
        )
        assert out.model == case["adapter"], out.model
        got = out.choices[0].logprobs.token_logprobs
        k = comparable(case)
        assert len(got) >= k, (case["id"], got)
        for i in range(k):
            want = case["steps"][i]["logprob"]
            assert abs(got[i] - want) < TOL, (case["adapter"], case["id"], i, got[i], want)

    chat_case = next(c for c in cases if c.get("messages"))
    chat = client.chat.completions.create(
        model=chat_case["adapter"], messages=chat_case["messages"], max_tokens=8, temperature=0,
    )
    assert chat.model == chat_case["adapter"] and chat.choices[0].message.role == "assistant"
    pieces = [
        ch.choices[0].delta.content or ""
        for ch in client.chat.completions.create(
            model=chat_case["adapter"], messages=chat_case["messages"], max_tokens=8,
            temperature=0, stream=True,
        )
        if ch.choices
    ]
    assert "".join(pieces) == chat.choices[0].message.content, (pieces, chat)

    try:
        client.completions.create(model="no-such-adapter", prompt="a", max_tokens=1)
        raise AssertionError("an unknown model was served")
    except openai.NotFoundError as e:
        assert e.status_code == 404

    print("openai lora client checks passed")


main()
