"""The official `openai` package over HTTPS against `wick serve --ssl-certfile/--ssl-keyfile`.

Usage: python tls_client.py BASE_URL CA_PEM   (e.g. https://127.0.0.1:8443/v1 ca.pem)
A client trusting CA_PEM gets a chat completion and a streamed one (the same text); a
plain-HTTP request to the TLS port fails; a client that does not trust the CA fails
certificate verification. Exits non-zero (with a traceback) on the first mismatch.
"""
import sys

import httpx
import openai

BASE, CA = sys.argv[1], sys.argv[2]
MODEL = "smollm2"
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def causes(e):
    """`e` and every exception it came from, as text."""
    out = []
    while e is not None:
        out.append(f"{type(e).__name__}: {e}")
        e = e.__cause__ or e.__context__
    return " <- ".join(out)


assert BASE.startswith("https://"), BASE
client = openai.OpenAI(
    base_url=BASE, api_key="unused", max_retries=0, http_client=httpx.Client(verify=CA)
)
chat = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16, temperature=0)
text = chat.choices[0].message.content
assert "Paris" in text, text
pieces, finish = [], None
for chunk in client.chat.completions.create(
    model=MODEL, messages=MESSAGES, max_tokens=16, temperature=0, stream=True
):
    for c in chunk.choices:
        if c.delta.content:
            pieces.append(c.delta.content)
        if c.finish_reason:
            finish = c.finish_reason
assert "".join(pieces) == text, (pieces, text)
assert finish == chat.choices[0].finish_reason, finish

plain = openai.OpenAI(base_url="http://" + BASE[len("https://"):], api_key="unused", max_retries=0)
try:
    plain.models.list()
    raise AssertionError("plain HTTP to the TLS port was answered")
except openai.APIConnectionError:
    pass

untrusting = openai.OpenAI(base_url=BASE, api_key="unused", max_retries=0)
try:
    untrusting.models.list()
    raise AssertionError("a client without the CA accepted the server's certificate")
except openai.APIConnectionError as e:
    chain = causes(e)
    assert "CERTIFICATE_VERIFY_FAILED" in chain, chain

print("openai tls client checks passed")
