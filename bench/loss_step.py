"""Step time of the token-wise constrained loss vs plain SFT on the same batch, and vs a
per-sample-loop implementation in the style of the official code.

    python bench/loss_step.py [--model smollm2-135m-instruct] [--batch 8] [--length 160] [--reps 5]

Two measurements, medians over ``--reps``:
- a full training step (forward, loss, backward, AdamW) on the real model: constrained / SFT
  (target: <= 1.15x);
- the loss alone (forward + backward of the loss from fixed logits): vectorised constrained
  vs the per-sample loop, which is where the official implementation pays.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from harness.training.losses import beta_schedule, constrained_loss, response_positions, token_logprobs


def official_style_loss(logits: torch.Tensor, labels: torch.Tensor, ref_full: torch.Tensor, beta=0.1,
                        bias_factor=20.0, first_token_bias_factor=5.0, bias_length=5) -> torch.Tensor:
    """The official code's shape: full log-softmax, per-sample Python loop, β list per row."""
    labels = labels[:, 1:].clone()
    logits = logits[:, :-1, :]
    mask = labels != -100
    labels[~mask] = 0
    per_token = torch.gather(logits.log_softmax(-1), 2, labels.unsqueeze(2)).squeeze(2)
    full = per_token * mask + (~mask) * 1000
    ref = ref_full * mask + (~mask) * 1000
    losses = []
    for i in range(full.shape[0]):
        pol = full[i][full[i] <= 0]
        rf = ref[i][ref[i] <= 0]
        n = len(pol)
        betas = torch.full((n,), beta)
        betas[:bias_length] = beta * bias_factor
        if bias_length:
            betas[0] = beta * first_token_bias_factor
        w = (2 * (1 - torch.sigmoid(betas * (pol - rf)))).detach().clamp(min=1e-3)
        losses.append(w * pol)
    return -torch.cat(losses).mean()


def median_time(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=160)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM

    from harness.models import resolve_model

    torch.manual_seed(0)
    path = resolve_model(args.model).path
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    V = model.config.vocab_size
    ids = torch.randint(0, V, (args.batch, args.length))
    labels = ids.clone()
    labels[:, : args.length // 4] = -100  # prompt
    for i in range(args.batch):  # ragged right padding, at most half the response
        pad = (7 * i) % max(1, (args.length - args.length // 4) // 2)
        if pad:
            labels[i, args.length - pad:] = -100
    with torch.no_grad():
        ref_logp, mask = token_logprobs(model(input_ids=ids).logits, labels)
    betas = beta_schedule(response_positions(mask))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=not torch.cuda.is_available())

    def step(kind: str):
        def run():
            with autocast:
                logits = model(input_ids=ids).logits
            logp, m = token_logprobs(logits, labels)
            if kind == "sft":
                loss = -(logp.sum() / m.sum())
            else:
                loss = constrained_loss(logp, ref_logp, betas, m)
            loss.backward()
            opt.step()
            opt.zero_grad()
        return run

    sft_s = median_time(step("sft"), args.reps)
    con_s = median_time(step("constrained"), args.reps)

    with torch.no_grad(), autocast:
        fixed = model(input_ids=ids).logits.float()
    logits = fixed.clone().requires_grad_(True)

    def loss_vec():
        logp, m = token_logprobs(logits, labels)
        constrained_loss(logp, ref_logp, betas, m).backward()

    def loss_loop():
        official_style_loss(logits, labels, ref_logp).backward()

    vec_s = median_time(loss_vec, args.reps)
    loop_s = median_time(loss_loop, args.reps)

    tokens = int(mask.sum())
    print(f"batch {args.batch} x {args.length} tokens ({tokens} supervised), model {args.model}, reps {args.reps}")
    print(f"full step, plain SFT           : {sft_s * 1000:8.1f} ms")
    print(f"full step, constrained         : {con_s * 1000:8.1f} ms")
    print(f"  ratio constrained / SFT      : {con_s / sft_s:.3f}x   (target <= 1.15x)")
    print(f"loss only, vectorised          : {vec_s * 1000:8.1f} ms")
    print(f"loss only, per-sample loop     : {loop_s * 1000:8.1f} ms")
    print(f"  ratio per-sample / vectorised: {loop_s / vec_s:.2f}x")


if __name__ == "__main__":
    main()
