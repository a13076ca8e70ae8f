"""Decoding-parameter sweep: the harness against the naive loop of the original script.

    python bench/decoding_sweep.py [--prompts 8] [--samples 2] [--max-tokens 32]

The same workload three ways, on the bundled SmolLM2:
- harness: `harness run` with a `decoding` attack through vLLM: one batched call per wave,
  vLLM's `n` for the samples of a setting, prefix caching across the settings of a prompt,
  planning, judging and the run log included;
- naive vLLM: one `LLM.generate` call per (prompt, setting, sample), n = 1, prefix caching off;
- naive HF: one HF `generate` call per (prompt, setting, sample), as Jailbreak_LLM does.
Engine start-up is excluded from all three. Prints generated tokens/s and the ratios, and the
CPU features seen.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

GRID = {"temperatures": [0.3, 0.7, 1.0], "top_ps": [0.5, 0.9], "top_ks": [5, 50], "system_prompts": ["none"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--skip-hf", action="store_true", help="the HF loop is slow on CPU")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from attacks.base import Target
    from harness import hardware
    from harness.data import load_dataset
    from harness.data.base import DatasetConfig
    from harness.engine import resolve_dtype
    from harness.models import resolve_model
    from harness.prompts import PromptBuilder
    from harness.recipes import recipe_from_dict
    from harness.run.runner import EnginePool, run_recipe
    from harness.run.store import read_samples

    cpu = hardware.cpu_info()
    print(f"CPU: {cpu['model']} ({cpu['cores']} cores), features: {', '.join(cpu['flags'])}")
    model = resolve_model("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(model.path)
    attack = {"type": "decoding", **GRID, "samples": args.samples, "sampling": {"max_tokens": args.max_tokens}}
    recipe = recipe_from_dict({"name": "bench", "models": [{"name": "m", "spec": "smollm2-135m-instruct"}],
                               "datasets": [{"format": "demo", "limit": args.prompts}], "attacks": [attack],
                               "engine": {"backend": "vllm", "chunk_size": 100000}})
    planned = list(recipe.attacks[0].plan(load_dataset(DatasetConfig(format="demo", limit=args.prompts)),
                                          Target("m", model, PromptBuilder(tok)), {}, seed=0))
    calls = [(p.prompt.prompt_ids, p.sampling) for p in planned]
    n_gen = sum(s.n for _, s in calls)
    print(f"workload: {args.prompts} prompts x {len(calls) // args.prompts} settings, {args.samples} samples per "
          f"sampled setting = {n_gen} generations of <= {args.max_tokens} tokens\n")

    pool = EnginePool(keep_all=True)
    engine = pool.get(model, recipe.engine.engine_config(0))
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        res = run_recipe(recipe, out_dir=Path(out), engines=pool, progress=False)
        harness_s = time.perf_counter() - t0
        harness_tokens = sum(r["completion_tokens"] for r in read_samples(res.run_dir))
    llm = engine.llm
    llm.reset_prefix_cache()

    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    naive_tokens, t0 = 0, time.perf_counter()
    for ids, s in calls:  # no n, no batching; a fresh seed per sample
        for i in range(s.n):
            params = SamplingParams(n=1, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, seed=i,
                                    max_tokens=s.max_tokens)
            out = llm.generate([TokensPrompt(prompt_token_ids=list(ids))], params, use_tqdm=False)
            naive_tokens += len(out[0].outputs[0].token_ids)
            llm.reset_prefix_cache()  # the original has no prefix cache
    naive_s = time.perf_counter() - t0
    pool.close()
    rows = [("harness (vLLM, n, prefix cache)", harness_tokens, harness_s),
            ("naive vLLM loop", naive_tokens, naive_s)]

    if not args.skip_hf:
        dtype = resolve_dtype("auto", model.path)
        hf = AutoModelForCausalLM.from_pretrained(model.path, dtype=getattr(torch, dtype)).eval()
        hf_tokens, t0 = 0, time.perf_counter()
        for ids, s in calls:
            for i in range(s.n):
                torch.manual_seed(i)
                kw = dict(do_sample=False) if s.greedy else dict(do_sample=True, temperature=s.temperature,
                                                                  top_p=s.top_p, top_k=s.top_k)
                with torch.no_grad():
                    gen = hf.generate(torch.tensor([list(ids)]), max_new_tokens=s.max_tokens,
                                      pad_token_id=tok.pad_token_id, **kw)
                hf_tokens += gen.shape[1] - len(ids)
        rows.append((f"naive HF generate ({dtype})", hf_tokens, time.perf_counter() - t0))

    print(f"{'':34} {'tokens':>8} {'seconds':>9} {'tok/s':>9}")
    for name, n, s in rows:
        print(f"{name:34} {n:8d} {s:9.1f} {n / s:9.1f}")
    h = harness_tokens / harness_s
    for name, n, s in rows[1:]:
        print(f"ratio harness / {name}: {h / (n / s):.2f}x")


if __name__ == "__main__":
    main()
