"""Prefill workload throughput: the harness vs a plain HF `generate` loop (batch 10, as the
paper's script does) vs raw vLLM `LLM.generate` on the same token prompts.

    python bench/prefill_throughput.py [--limit 66] [--depths 0,5,10,20,40] [--max-tokens 64]

Prints generated tokens/s for each and the ratios harness/HF and harness/raw-vLLM, with the
CPU features seen. One vLLM engine serves both vLLM measurements, with its prefix cache reset
in between; engine start-up is excluded from all three (it is measured and printed
separately). Both sides use the dtype the harness picks for this machine (`dtype: auto`:
fp32 on CPUs without native bf16, where torch emulates bf16 several times slower).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--limit", type=int, default=66, help="demo examples")
    ap.add_argument("--depths", default="0,5,10,20,40")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--hf-batch", type=int, default=10)
    args = ap.parse_args()
    depths = [int(d) for d in args.depths.split(",")]

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from attacks.base import Target
    from attacks.prefill import PrefillAttack
    from harness import hardware
    from harness.data import load_dataset
    from harness.data.base import DatasetConfig
    from harness.engine import resolve_dtype
    from harness.models import resolve_model
    from harness.prompts import PromptBuilder
    from harness.recipes import recipe_from_dict
    from harness.run.runner import EnginePool, run_recipe

    cpu = hardware.cpu_info()
    print(f"CPU: {cpu['model']} ({cpu['cores']} cores), features: {', '.join(cpu['flags'])}")
    model = resolve_model(args.model)
    tok = AutoTokenizer.from_pretrained(model.path)
    examples = load_dataset(DatasetConfig(format="demo", limit=args.limit))
    planned = list(PrefillAttack(depths=depths).plan(examples, Target("m", model, PromptBuilder(tok)), {}, seed=0))
    prompts = [p.prompt.prompt_ids for p in planned if p.prompt is not None]
    print(f"workload: {len(prompts)} prompts ({args.limit} examples x depths {depths}), "
          f"{args.max_tokens} new tokens, greedy, model {args.model}")

    recipe = recipe_from_dict({
        "name": "bench", "models": [{"name": "m", "spec": args.model}],
        "datasets": [{"format": "demo", "limit": args.limit}],
        "attacks": [{"type": "prefill", "depths": depths, "sampling": {"max_tokens": args.max_tokens}}],
        "engine": {"backend": "vllm", "chunk_size": 100000},
    })
    pool = EnginePool(keep_all=True)
    t0 = time.perf_counter()
    engine = pool.get(model, recipe.engine.engine_config(recipe.seed))
    startup = time.perf_counter() - t0
    llm = engine.llm

    # raw vLLM
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    t0 = time.perf_counter()
    outs = llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False)
    raw_s = time.perf_counter() - t0
    raw_tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    llm.reset_prefix_cache()

    # the harness (planning, caching, records, judging included), same engine
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        res = run_recipe(recipe, out_dir=Path(out), engines=pool, progress=False)
        harness_s = time.perf_counter() - t0
        from harness.run.store import read_samples

        harness_tokens = sum(r["completion_tokens"] for r in read_samples(res.run_dir))
    pool.close()

    # plain HF generate, batch 10, left padding (what the paper's evaluation script does)
    dtype = resolve_dtype("auto", model.path)
    hf = AutoModelForCausalLM.from_pretrained(model.path, dtype=getattr(torch, dtype)).eval()
    tok.padding_side = "left"
    t0 = time.perf_counter()
    hf_tokens = 0
    for i in range(0, len(prompts), args.hf_batch):
        batch = [list(p) for p in prompts[i:i + args.hf_batch]]
        enc = tok.pad({"input_ids": batch}, return_tensors="pt")
        with torch.no_grad():
            gen = hf.generate(**enc, max_new_tokens=args.max_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        new = gen[:, enc["input_ids"].shape[1]:]
        hf_tokens += int((new != tok.pad_token_id).sum())
    hf_s = time.perf_counter() - t0

    rows = [(f"HF generate (batch {args.hf_batch}, {dtype})", hf_tokens, hf_s), ("raw vLLM LLM.generate", raw_tokens, raw_s),
            ("harness (vLLM)", harness_tokens, harness_s)]
    print(f"\nvLLM engine start-up: {startup:.1f} s (excluded below)")
    print(f"{'':28} {'tokens':>8} {'seconds':>9} {'tok/s':>9}")
    for name, n, s in rows:
        print(f"{name:28} {n:8d} {s:9.1f} {n / s:9.1f}")
    h = harness_tokens / harness_s
    print(f"\nratio harness / HF generate : {h / (hf_tokens / hf_s):.2f}x")
    print(f"ratio harness / raw vLLM    : {h / (raw_tokens / raw_s):.2f}x")


if __name__ == "__main__":
    main()
