"""Seconds per training step of recipes/align.yaml's deep model, before and after the levers of
the CPU budget, measured in one run on the same batches (ratios, not absolute times, are the
result; absolute times depend on the CPU, printed with its flags).

    python bench/train_step.py [--steps 6] [--precision auto|no|bf16] [--batches 3]

The batches are the real ones: the recipe's safety-recovery rows (model-written h when the
synthesis cache has them, else the bundled template triples) and complete self-written anchors
(from the anchor cache, else the dataset's own answers), drawn by the recipe's Batcher.

Variants (each a full step: forward, loss, backward, AdamW):
- full:      LM head and log-softmax on every position (the trainer before this bench);
- head-only: the trainer's step with chunk_tokens 0: LM head only on the positions that
             predict a supervised token, the whole padded batch in one forward;
- chunked:   the trainer's step with the recipe's chunk_tokens (length-sorted chunks).
It also reports the share of padding and of unsupervised positions in the batches.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import tempfile
from pathlib import Path

from harness.training.losses import mix_losses, predicting_positions, token_logprobs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="recipes/align.yaml")
    ap.add_argument("--model", default="smollm2-deep")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per variant (after one warm-up)")
    ap.add_argument("--precision", default="auto", choices=["auto", "no", "bf16"])
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness import hardware
    from harness.data import load_dataset
    from harness.prompts import PromptBuilder
    from harness.training.data import batcher_for, build_pairs
    from harness.training.registry import find_recipe, resolve_any
    from harness.training.config import load_train_recipe
    from harness.training.trainer import Trainer, _bf16_fast
    from harness.turns import end_of_turn_id

    recipe = load_train_recipe(find_recipe(args.recipe))
    spec = recipe.model(args.model)
    s = recipe.settings_for(spec)
    base = resolve_any(recipe.base)
    tok = AutoTokenizer.from_pretrained(base.path)
    builder, end = PromptBuilder(tok, recipe.system_prompt), end_of_turn_id(tok)
    main_pairs = build_pairs(load_dataset(spec.data, backend=recipe.engine.backend), builder, "refusal", end,
                             with_harmful=True, source="bench", refusal_templates=spec.refusals == "templates")
    from harness.training.registry import anchor_pairs

    anchors = anchor_pairs(recipe, spec, base, builder, end, progress=False)
    batcher = batcher_for(spec, s, main_pairs, anchors, tok.pad_token_id or end)
    batches = [batcher.micro_batch(i) for i in range(args.steps + 1)]
    cells = sum(b["input_ids"].numel() for b in batches)
    pad = sum(int((b["attention_mask"] == 0).sum()) for b in batches)
    supervised = sum(int(predicting_positions(b["labels"]).sum()) for b in batches)

    bf16 = args.precision == "bf16" or (args.precision == "auto" and _bf16_fast())
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    trainers = {}
    for name, chunk in (("head-only", 0), ("chunked", s.chunk_tokens or 640)):
        r = recipe.model_copy(update={"training": s.model_copy(update={"chunk_tokens": chunk,
                                                                         "mixed_precision": "bf16" if bf16 else "no"})})
        t = Trainer(r, spec.model_copy(update={"training": {}}), base, Path(tempfile.mkdtemp()), anchors, progress=False)
        t._head = model.get_output_embeddings()
        trainers[name] = t
    acc = trainers["chunked"]._accelerator()

    def step_full(b) -> None:
        """The trainer before: the whole padded batch, the LM head on every position."""
        with acc.autocast():
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        logp, mask = token_logprobs(logits, b["labels"])
        anchor = b["is_anchor"][:, None]
        acc.backward(mix_losses(-logp, mask & ~anchor, -logp, mask & anchor, spec.safety_weight, spec.mix))

    def step(b, variant: str) -> None:
        if variant == "full":
            step_full(b)
        else:
            with acc.autocast():
                trainers[variant]._forward_backward(acc, model, b, None)
        opt.step()
        opt.zero_grad()

    times: dict[str, list[float]] = {"full": [], "head-only": [], "chunked": []}
    step(batches[0], "full")  # warm-up
    for b in batches[1:]:  # interleaved, so drifts in machine load hit every variant alike
        for variant in times:
            t0 = time.perf_counter()
            step(b, variant)
            times[variant].append(time.perf_counter() - t0)
    cpu = hardware.cpu_info()
    print(f"CPU: {cpu.get('model')}, {cpu.get('cores')} cores, flags {hardware.cpu_tag()}; "
          f"{'bf16 autocast' if bf16 else 'fp32'}; torch {torch.__version__}")
    contrast = spec.contrast.rows if spec.contrast else 0
    print(f"batches: {s.batch_size} safety + {contrast} contrast + {s.anchor_batch_size} anchor rows, "
          f"max_length {s.max_length}; "
          f"padding {pad / cells:.0%} of positions, positions predicting a supervised token {supervised / cells:.0%}")
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"  {k:10s} {v:6.2f} s/step  (median of {len(times[k])})")
    print(f"  full / head-only: {med['full'] / med['head-only']:.2f}x, full / chunked: {med['full'] / med['chunked']:.2f}x")


if __name__ == "__main__":
    main()
