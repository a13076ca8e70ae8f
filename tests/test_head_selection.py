"""The LM head on supervised positions only (trainer speed-up) computes exactly the log-probs
and gradients of the full-logits path."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_selected_logprobs_and_gradients_equal_the_full_path(tiny_model, dtype):
    from transformers import AutoModelForCausalLM

    from harness.training.data import collate
    from harness.training.losses import predicting_positions, selected_token_logprobs, token_logprobs
    from harness.training.trainer import head_only_at

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    # rows of different lengths and target spans: padding, prompt-only stretches, a full row
    b = collate([((5, 6, 7, 8), (9, 10, 11)), ((12, 13), (14, 15, 16, 17, 18, 19)), ((20,) * 9, (21,))],
                max_length=32, pad_id=2)

    def run(select: bool):
        model.zero_grad()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            if select:
                with head_only_at(model.get_output_embeddings(), predicting_positions(b["labels"])):
                    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
                logp, mask = selected_token_logprobs(logits, b["labels"])
            else:
                logp, mask = token_logprobs(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits,
                                            b["labels"])
        (-(logp * mask).sum() / mask.sum()).backward()
        return logp.detach(), mask, {n: p.grad.clone() for n, p in model.named_parameters()}

    full, full_mask, full_grad = run(False)
    sel, sel_mask, sel_grad = run(True)
    assert torch.equal(full_mask, sel_mask) and int(full_mask.sum()) == 3 + 6 + 1
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.allclose(full, sel, atol=tol)
    assert (sel[~sel_mask] == 0).all()
    for name, g in full_grad.items():
        assert torch.allclose(g, sel_grad[name], atol=tol, rtol=tol), name
    # the head saw only the 10 predicting positions
    seen = []
    h = model.get_output_embeddings().register_forward_hook(lambda m, a, out: seen.append(tuple(out.shape)))
    with head_only_at(model.get_output_embeddings(), predicting_positions(b["labels"])):
        model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    h.remove()
    assert seen == [(10, model.config.vocab_size)]
