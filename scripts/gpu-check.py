#!/usr/bin/env python3
"""Python half of scripts/gpu-run.sh, run on the GPU machine (PyTorch + transformers).

  make-model DIR                 random-weight Llama-3.2-1B-shaped bf16 model + tokenizer
  make-adapter MODEL DIR RANK    a random PEFT LoRA adapter of rank RANK on all seven
                                 projections of MODEL (its config.json), B non-zero
  compare MODEL WICK_PREFIX OUT  wick's dumped logits (examples/logits_dump) against
                                 transformers' on the same weights, teacher-forced
  bench MODEL PROMPT_LEN DECODE  the same prefill/decode measurement through transformers
  greedy URL OUT [MODEL]         greedy completions from a running `wick serve`: 8 prompts
                                 one at a time, then one request of n=3 (a decode batch of 3);
                                 with MODEL, also the same through that served adapter
  same-greedy A B                two `greedy` results: the one-at-a-time completions must be
                                 identical (batch size 1: the same kernels with or without a
                                 graph); the n=3 ones are reported (cuBLAS may pick another
                                 kernel for a padded batch, so bf16 roundings may differ)
"""
import json
import sys
import time

import numpy as np

# The rope settings make-model means to write (Llama 3.2's). transformers v5 saves them
# under `rope_parameters`, v4 as `rope_theta` + `rope_scaling`; `compare` first checks that
# wick read back exactly these, so that a config wick misreads fails by name instead of as
# a logits mismatch (or, worse, passes when both sides ignore the scaling).
ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def make_model(path):
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192,
        num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
        max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=ROPE["rope_theta"],
        rope_scaling={k: v for k, v in ROPE.items() if k != "rope_theta"},
        tie_word_embeddings=True, bos_token_id=0, eos_token_id=1,
        # Larger than the usual 0.02 so attention and logits are peaked enough for greedy
        # tokens to be a meaningful comparison.
        initializer_range=0.05, torch_dtype="bfloat16",
    )
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(path, safe_serialization=True)

    # A real byte-level BPE tokenizer (ids < 8000), trained here since nothing downloads.
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=8000, special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    words = "the quick brown fox jumps over a lazy dog while wick serves tokens fast".split()
    rng = np.random.default_rng(0)
    corpus = [" ".join(rng.choice(words, 40)) for _ in range(2000)]
    tok.train_from_iterator(corpus, trainer)
    tok.save(f"{path}/tokenizer.json")
    with open(f"{path}/tokenizer_config.json", "w") as f:
        json.dump({"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>",
                   "tokenizer_class": "PreTrainedTokenizerFast"}, f)
    print("saved", path, sum(p.numel() for p in model.parameters()), "parameters")


def make_adapter(model_dir, path, rank):
    """numpy and safetensors only (no PEFT needed): PEFT's file names, tensor names and
    config fields, with both A and B random (PEFT starts B at zero) so that it matters."""
    import os

    from safetensors.numpy import save_file

    cfg = json.load(open(f"{model_dir}/config.json"))
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    d = cfg.get("head_dim") or h // heads
    dims = {"self_attn.q_proj": (h, heads * d), "self_attn.k_proj": (h, kv * d),
            "self_attn.v_proj": (h, kv * d), "self_attn.o_proj": (heads * d, h),
            "mlp.gate_proj": (h, inter), "mlp.up_proj": (h, inter), "mlp.down_proj": (inter, h)}
    rng = np.random.default_rng(1)
    tensors = {}
    for layer in range(cfg["num_hidden_layers"]):
        for module, (inp, out) in dims.items():
            name = f"base_model.model.model.layers.{layer}.{module}"
            tensors[f"{name}.lora_A.weight"] = (rng.standard_normal((rank, inp)) / np.sqrt(inp)).astype(np.float32)
            tensors[f"{name}.lora_B.weight"] = (0.05 * rng.standard_normal((out, rank))).astype(np.float32)
    os.makedirs(path, exist_ok=True)
    save_file(tensors, f"{path}/adapter_model.safetensors")
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": rank,
              "use_rslora": False, "bias": "none", "fan_in_fan_out": False,
              "target_modules": [m.split(".")[1] for m in dims],
              "base_model_name_or_path": model_dir}
    with open(f"{path}/adapter_config.json", "w") as f:
        json.dump(config, f, indent=1)
    print("saved", path, len(tensors), "tensors of rank", rank)


def compare(model_dir, prefix, out_path):
    import torch
    from transformers import LlamaForCausalLM

    meta = json.load(open(prefix + ".json"))
    saved = json.load(open(f"{model_dir}/config.json"))
    print("config.json rope:", {k: saved.get(k) for k in ("rope_parameters", "rope_scaling", "rope_theta")})
    read = meta.get("rope")
    if read != ROPE:
        print(f"wick read the rope settings {read}, meant {ROPE}: no logits compared")
        sys.exit(1)
    vocab = meta["vocab"]
    wick = np.fromfile(prefix + ".f32", dtype="<f4").reshape(-1, vocab)
    results = {"wick_device": meta["device"], "wick_dtype": meta["dtype"],
               "gpu": torch.cuda.get_device_name(0), "seqs": []}
    refs = {}
    for dtype in (torch.bfloat16, torch.float32):
        model = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=dtype).cuda().eval()
        rows = []
        for s in meta["seqs"]:
            ids = s["prompt"] + s["generated"][:-1]
            with torch.no_grad():
                logits = model(torch.tensor([ids], device="cuda")).logits[0].float()
            rows.append(logits[len(s["prompt"]) - 1:].cpu().numpy())
        refs[str(dtype)] = rows
        del model
        torch.cuda.empty_cache()

    def logprobs(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    at = 0
    ok = True
    for i, s in enumerate(meta["seqs"]):
        n = len(s["generated"])
        w = wick[at:at + n]
        at += n
        hf16, hf32 = refs[str(torch.bfloat16)][i], refs[str(torch.float32)][i]
        lw, l16, l32 = logprobs(w), logprobs(hf16), logprobs(hf32)
        gen = np.array(s["generated"])
        row = {
            "prompt_len": len(s["prompt"]), "decoded": n,
            "argmax_agree_hf_f32": float((hf32.argmax(-1) == gen).mean()),
            "argmax_agree_hf_bf16": float((hf16.argmax(-1) == gen).mean()),
            "max_abs_logit_diff_vs_hf_f32": float(np.abs(w - hf32).max()),
            "hf_bf16_max_abs_logit_diff_vs_hf_f32": float(np.abs(hf16 - hf32).max()),
            "max_abs_logprob_diff_of_wick_token_vs_hf_f32":
                float(np.abs(np.take_along_axis(lw - l32, gen[:, None], 1)).max()),
            "hf_bf16_max_abs_logprob_diff_vs_hf_f32":
                float(np.abs(np.take_along_axis(l16 - l32, gen[:, None], 1)).max()),
            "logit_std": float(hf32.std()),
        }
        # wick should be about as close to the f32 reference as transformers in bf16 is.
        bound = 2 * row["hf_bf16_max_abs_logit_diff_vs_hf_f32"] + 1e-2 * row["logit_std"] + 1e-3
        row["pass"] = row["max_abs_logit_diff_vs_hf_f32"] <= bound and row["argmax_agree_hf_f32"] >= 0.75
        ok &= row["pass"]
        results["seqs"].append(row)
    results["pass"] = bool(ok)
    json.dump(results, open(out_path, "w"), indent=1)
    print(json.dumps(results, indent=1))
    sys.exit(0 if ok else 1)


def bench(model_dir, prompt_len, decode):
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.bfloat16).cuda().eval()
    ids = torch.randint(3, 8000, (1, prompt_len), device="cuda")
    with torch.no_grad():
        model(ids[:, :16])
        torch.cuda.synchronize()
        t = time.time()
        model(ids)
        torch.cuda.synchronize()
        prefill = time.time() - t
        t = time.time()
        model.generate(ids, max_new_tokens=decode, min_new_tokens=decode, do_sample=False)
        torch.cuda.synchronize()
        total = time.time() - t
    print(f"transformers {torch.cuda.get_device_name(0)} prefill_tokens={prompt_len} "
          f"prefill_tok_per_s={prompt_len / prefill:.1f} decode_tokens={decode} "
          f"decode_tok_per_s(incl. prefill)={decode / total:.1f}")


def greedy(url, out_path, adapter=None):
    import urllib.request

    def complete(prompt, n, model=None):
        req = {"prompt": prompt, "max_tokens": 64, "temperature": 0, "n": n, "ignore_eos": True}
        if model:
            req["model"] = model
        body = json.dumps(req).encode()
        req = urllib.request.Request(url + "/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            return [c["text"] for c in json.load(r)["choices"]]

    prompts = [f"Prompt number {i}: " + "lorem ipsum " * (3 * i + 1) for i in range(8)]
    result = {"alone": [complete(p, 1)[0] for p in prompts], "n3": complete(prompts[0], 3)}
    if adapter:
        # One at a time through the adapter (batch size 1: exact), and the adapter beside
        # the base model in one decode batch (n=3 each, sent at once).
        result["adapter"] = [complete(p, 1, adapter)[0] for p in prompts]
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(2) as pool:
            mixed = [pool.submit(complete, prompts[1], 3, m) for m in (adapter, None)]
            result["mixed"] = [m.result() for m in mixed]
        if result["adapter"] == result["alone"]:
            sys.exit("the adapter changes no completion: it is not applied")
    with open(out_path, "w") as f:
        json.dump(result, f, indent=1)


def same_greedy(a_path, b_path):
    a, b = (json.load(open(p)) for p in (a_path, b_path))
    for x, y in zip(a["n3"], b["n3"]):
        common = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
        print(f"n=3 completion: {common} of {len(x)} characters agree")
    diff = [i for i, (x, y) in enumerate(zip(a["alone"], b["alone"])) if x != y]
    print(f"one at a time: {8 - len(diff)} of 8 identical")
    if "adapter" in a or "adapter" in b:
        if "adapter" not in a or "adapter" not in b:
            sys.exit("only one of the runs has completions through the adapter")
        ad = [i for i, (x, y) in enumerate(zip(a["adapter"], b["adapter"])) if x != y]
        print(f"through the adapter, one at a time: {8 - len(ad)} of 8 identical")
        diff += [f"adapter {i}" for i in ad]
        for which, x, y in zip(("adapter", "base"), a["mixed"], b["mixed"]):
            agree = sum(p == q for p, q in zip(x, y))
            print(f"adapter and base in one batch, {which}: {agree} of {len(x)} completions identical")
    if diff:
        sys.exit(f"completions {diff} differ")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "make-model":
        make_model(*args)
    elif cmd == "make-adapter":
        make_adapter(args[0], args[1], int(args[2]))
    elif cmd == "compare":
        compare(*args)
    elif cmd == "bench":
        bench(args[0], int(args[1]), int(args[2]))
    elif cmd == "greedy":
        greedy(*args)
    elif cmd == "same-greedy":
        same_greedy(*args)
    else:
        sys.exit(__doc__)
