"""Fine-tuning loop on HF accelerate: SFT, safety-recovery augmentation, constrained loss.

Single process on CPU or one GPU as is; ``accelerate launch`` (FSDP, DeepSpeed, multi-GPU)
scales the same loop, since all device placement, mixed precision, gradient accumulation
and checkpoint state go through the Accelerator.

Output: a plain HF model folder (LoRA merged), with ``provenance.json``, the training data
as JSONL, ``train_log.jsonl`` (loss, and loss by token position, per step).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from harness.models import ResolvedModel
from harness.prompts import PromptBuilder
from harness.training.config import TrainModelSpec, TrainRecipe, TrainSettings
from harness.data import load_dataset
from harness.training.data import TrainPair, batcher_for, build_pairs, refusal_openings, row_chunks, save_jsonl
from harness.turns import end_of_turn_id, stop_token_ids
from harness.training.losses import (
    IGNORE,
    avoided_token_loss,
    beta_schedule,
    constrained_token_loss,
    loss_by_position,
    mix_losses,
    predicting_positions,
    response_positions,
    selected_token_logprobs,
)

LOG_POSITIONS = 16


def _lr_lambda(settings: TrainSettings):
    def f(step: int) -> float:
        if step < settings.warmup_steps:
            return (step + 1) / settings.warmup_steps
        if settings.scheduler == "constant":
            return 1.0
        progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
        if settings.scheduler == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def reference_logprobs(model: torch.nn.Module, pairs: list[TrainPair], max_length: int, pad_id: int,
                       device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """log π_ref(y_t) of every target token of every pair, computed once before training.

    ``model`` is the policy as the training loop calls it (after ``accelerator.prepare``, so
    under the same autocast), one unpadded row at a time: Δ = log π_ref − log π_θ is then 0 at
    step 0 up to kernel noise, instead of the bf16-vs-fp32 gap a separate fp32 pass leaves."""
    from harness.training.data import collate

    from accelerate.utils import extract_model_from_parallel

    out: list[torch.Tensor] = []
    was_training = model.training
    head = extract_model_from_parallel(model).get_output_embeddings()
    model.eval()
    with torch.no_grad():
        for p in pairs:
            b = {k: v.to(device) for k, v in collate([(p.prompt_ids, p.target_ids)], max_length, pad_id).items()}
            with head_only_at(head, predicting_positions(b["labels"])):  # the same kernels as the policy's
                logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            logp, mask = selected_token_logprobs(logits, b["labels"])
            out.append(logp[0][mask[0]].float().cpu())
    model.train(was_training)
    return out


@contextlib.contextmanager
def head_only_at(head: torch.nn.Module, sel: torch.Tensor):
    """Within the block, ``head`` (the model's output embedding) sees only ``hidden[sel]``:
    (B, T, H) -> (N, H), so the forward returns (N, V) logits. A hook inside the model's own
    forward, so DDP/FSDP wrappers still see one forward per step."""
    handle = head.register_forward_pre_hook(lambda _mod, args: (args[0][sel], *args[1:]))
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def exact_fp32_matmuls(enabled: bool):
    """Within the block, fp32 matmuls and convolutions on CUDA are IEEE fp32, not TF32 (10-bit
    mantissa), whatever the process set. Training without mixed precision asks for fp32: with
    TF32 the one-row reference pass and the padded training batch round differently (Δ at step
    0 measured 2.4e-4 on an H200) and CPU and GPU runs part further. Under bf16/fp16 autocast
    the matmuls are low-precision anyway, so the process's setting stands."""
    if not enabled or not torch.cuda.is_available():
        yield
        return
    backends = (torch.backends.cuda.matmul, torch.backends.cudnn)
    # torch >= 2.9: fp32_precision, whose legacy allow_tf32 must not be mixed in
    attr, exact = ("fp32_precision", "ieee") if hasattr(backends[0], "fp32_precision") else ("allow_tf32", False)
    old = [getattr(b, attr) for b in backends]
    for b in backends:
        setattr(b, attr, exact)
    try:
        yield
    finally:
        for b, value in zip(backends, old):
            setattr(b, attr, value)


def _bf16_fast() -> bool:
    """bf16 autocast on GPUs that support it, and on CPUs with native bf16 (AVX512-BF16/AMX:
    measured 2.2x faster per step than fp32 on SmolLM2 here)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class Trainer:
    def __init__(self, recipe: TrainRecipe, spec: TrainModelSpec, base: ResolvedModel, work_dir: Path,
                 anchor_pairs: list[TrainPair] | None = None, progress: bool = True) -> None:
        self.recipe, self.spec, self.base = recipe, spec, base
        self.settings = recipe.settings_for(spec)
        self.work_dir = work_dir
        self.progress = progress
        self.anchor_pairs = anchor_pairs or []
        self._avoid: torch.Tensor | None = None  # refusal openings, for contrast.unlikelihood

    # -- set-up ------------------------------------------------------------------------
    def _model_and_tokenizer(self):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(self.base.path)
        model = AutoModelForCausalLM.from_pretrained(self.base.path, dtype=torch.float32)
        if self.settings.lora is not None:
            from peft import LoraConfig, get_peft_model

            lora = self.settings.lora
            model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                     target_modules=lora.target_modules, task_type="CAUSAL_LM"))
        return model, tok

    def _accelerator(self):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        mp = self.settings.mixed_precision
        if mp == "auto":
            mp = "bf16" if _bf16_fast() else "no"
        from accelerate.state import AcceleratorState, GradientState

        set_seed(self.settings.seed)
        # one process may build several models with different precisions/accumulation; the
        # process group (PartialState) stays, only the per-run accelerator settings are reset
        AcceleratorState._reset_state()
        GradientState._reset_state()
        return Accelerator(gradient_accumulation_steps=self.settings.grad_accum, mixed_precision=mp,
                           cpu=not torch.cuda.is_available())

    # -- the loop ----------------------------------------------------------------------
    def train(self, stop_after: int | None = None, save_steps: tuple[int, ...] = ()) -> Path | None:
        """Train into ``work_dir`` (resuming from its latest checkpoint); returns the model folder.

        ``stop_after`` ends this call after that many steps, checkpointed (time-boxed
        runs; tests of resume); it returns None then. After each step in ``save_steps`` but the
        last a plain model folder is written to ``work_dir/rounds/step-NNNNNN`` (fine-tuning
        rounds); the last step's model is the returned folder, not a second 0.5 GB copy."""
        acc = self._accelerator()
        with exact_fp32_matmuls(acc.mixed_precision == "no"):  # the reference pass and every step
            return self._train(acc, stop_after, save_steps)

    def _train(self, acc, stop_after: int | None, save_steps: tuple[int, ...]) -> Path | None:
        s, spec = self.settings, self.spec
        model, tok = self._model_and_tokenizer()
        end = end_of_turn_id(tok)
        pad = tok.pad_token_id if tok.pad_token_id is not None else end
        builder = PromptBuilder(tok, self.recipe.system_prompt)
        main = build_pairs(load_dataset(spec.data, backend=self.recipe.engine.backend), builder, spec.target, end,
                           with_harmful=spec.objective == "augmented", source=spec.data.label,
                           refusal_templates=spec.refusals == "templates")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        save_jsonl(self.work_dir / "train_data.jsonl", [p.to_json() | {"role": "main"} for p in main])
        save_jsonl(self.work_dir / "anchor_data.jsonl", [p.to_json() | {"role": "anchor"} for p in self.anchor_pairs])

        if spec.contrast is not None and spec.contrast.unlikelihood > 0:
            self._avoid = torch.tensor(refusal_openings(main), device=acc.device)
        if s.epochs is not None:  # steps from the data size (preset: paper)
            s = self.settings = s.model_copy(update={"steps": s.steps_for(len(main), acc.num_processes)})
        batcher = batcher_for(spec, s, main, self.anchor_pairs, pad)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=s.lr, betas=(s.adam_beta1, s.adam_beta2), weight_decay=s.weight_decay)
        # not prepared: a prepared scheduler steps once per process per step under multi-process
        # launches, ending the schedule early; it is stepped once per optimizer step below
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(s))
        model, opt = acc.prepare(model, opt)
        self._head = acc.unwrap_model(model).get_output_embeddings()
        acc.register_for_checkpointing(sched)

        ref: list[torch.Tensor] | None = None
        if spec.objective == "constrained":
            ref_path = self.work_dir / "ref_logprobs.pt"
            if ref_path.exists():
                ref = torch.load(ref_path)
            else:  # the aligned model itself, before any step, at the policy's precision
                ref = reference_logprobs(model, main, s.max_length, pad, device=acc.device)
                if acc.is_main_process:
                    torch.save(ref, ref_path)

        start = self._resume(acc)
        rank, world = acc.process_index, acc.num_processes
        log_path = self.work_dir / "train_log.jsonl"
        _truncate_log(log_path, start)
        model.train()
        bar = tqdm(total=s.steps, initial=start, desc=f"train {spec.name}", unit="step", disable=not self.progress)
        with open(log_path, "a", encoding="utf-8") as log:
            for step in range(start, s.steps):
                t0 = time.time()
                stats: dict[str, Any] = {}
                for micro in range(s.grad_accum):
                    # each process its own micro-batch: batch_size rows per device, as in DDP
                    index = (step * s.grad_accum + micro) * world + rank
                    batch = {k: v.to(acc.device) for k, v in batcher.micro_batch(index).items()}
                    with acc.accumulate(model):
                        stats = self._forward_backward(acc, model, batch, ref)
                        if acc.sync_gradients:
                            acc.clip_grad_norm_(params, s.max_grad_norm)
                        opt.step()
                        if acc.sync_gradients:
                            sched.step()
                        opt.zero_grad()
                record = {"step": step + 1, "lr": sched.get_last_lr()[0], "seconds": round(time.time() - t0, 3), **stats}
                if world > 1:  # which rows each process trained on (last micro-batch), rank by rank
                    record["examples_by_rank"] = acc.gather(batch["example"][None]).tolist()
                if acc.is_main_process:
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                bar.set_postfix(loss=f"{stats['loss']:.3f}")
                bar.update(1)
                if step + 1 in save_steps and step + 1 < s.steps:  # the last step is model/ itself
                    self._export(acc, model, tok, self.work_dir / "rounds" / f"step-{step + 1:06d}")
                if (step + 1) % s.checkpoint_every == 0 and step + 1 < s.steps:
                    self._checkpoint(acc, step + 1)
                if stop_after is not None and step + 1 - start >= stop_after and step + 1 < s.steps:
                    self._checkpoint(acc, step + 1)
                    bar.close()
                    return None
        bar.close()
        return self._save(acc, model, tok, main)

    def _forward_backward(self, acc, model, batch: dict[str, torch.Tensor], ref: list[torch.Tensor] | None):
        """α·data + (1−α)·anchor (``mix_losses``) of one micro-batch, backpropagated in
        length-sorted chunks (``chunk_tokens``) with the batch's token counts as normalisers, so
        the gradient is the padded batch's. Under DDP every chunk but the last skips the
        gradient sync, as accumulation steps do. Returns the step's log stats."""
        spec = self.spec
        mask_all = batch["labels"][:, 1:] != IGNORE
        anchor_rows = batch["is_anchor"][:, None]
        n_data, n_anchor = int((mask_all & ~anchor_rows).sum()), int((mask_all & anchor_rows).sum())
        lengths = batch["attention_mask"].sum(1)
        chunks = row_chunks(lengths, self.settings.chunk_tokens)
        logp_all = torch.zeros(mask_all.shape, device=mask_all.device)
        main_all = torch.zeros(mask_all.shape, device=mask_all.device)
        loss_total, max_delta = 0.0, 0.0
        for j, idx in enumerate(chunks):
            width = int(lengths[idx].max())
            sub = {k: batch[k][idx, :width] for k in ("input_ids", "attention_mask", "labels")}
            sync = contextlib.nullcontext() if j == len(chunks) - 1 else acc.no_sync(model)
            with sync:
                with head_only_at(self._head, predicting_positions(sub["labels"])):
                    logits = model(input_ids=sub["input_ids"], attention_mask=sub["attention_mask"]).logits
                logp, mask = selected_token_logprobs(logits, sub["labels"])
                rows_anchor = batch["is_anchor"][idx][:, None]
                main_mask, anchor_mask = mask & ~rows_anchor, mask & rows_anchor
                if spec.objective == "constrained":
                    main_tokens, delta = self._constrained(logp, main_mask, batch["example"][idx], ref)
                    max_delta = max(max_delta, delta)
                else:
                    main_tokens = -logp
                    rows_contrast = batch["is_contrast"][idx][:, None]
                    if self._avoid is not None and bool(rows_contrast.any()):
                        avoided = avoided_token_loss(logits, sub["labels"], self._avoid) * rows_contrast
                        main_tokens = main_tokens + spec.contrast.unlikelihood * avoided
                loss = mix_losses(main_tokens, main_mask, -logp, anchor_mask, spec.safety_weight,
                                  self.settings.mix or spec.mix, n_data=n_data, n_anchor=n_anchor)
                acc.backward(loss)
            loss_total += float(loss.detach())
            logp_all[idx, :width - 1] = logp.detach().float()
            main_all[idx, :width - 1] = main_tokens.detach().float()
        main_mask, anchor_mask = mask_all & ~anchor_rows, mask_all & anchor_rows
        anchor_loss = (-logp_all * anchor_mask).sum() / n_anchor if n_anchor else torch.tensor(float("nan"))
        safety_mask = main_mask & ~batch["is_contrast"][:, None]
        by_pos = loss_by_position(logp_all, safety_mask, LOG_POSITIONS)
        contrast = {}
        if batch["is_contrast"].any():
            contrast_mask = main_mask & batch["is_contrast"][:, None]
            contrast = {"contrast_loss": float((-logp_all * contrast_mask).sum() / contrast_mask.sum().clamp(min=1))}
        return {"loss": loss_total, "main_loss": float((main_all * main_mask).sum() / max(1, n_data)),
                "anchor_loss": float(anchor_loss),
                **({"max_abs_delta": max_delta} if spec.objective == "constrained" else {}),
                **contrast,
                "mean_depth": float(batch["depth"][~batch["is_anchor"] & ~batch["is_contrast"]].float().mean()),
                "nll_by_position": [None if math.isnan(x) else round(x, 4) for x in by_pos.tolist()]}

    def _constrained(self, logp: torch.Tensor, main_mask: torch.Tensor, examples: torch.Tensor,
                     ref: list[torch.Tensor] | None) -> tuple[torch.Tensor, float]:
        """Per-token constrained loss of the data rows against their reference log-probs."""
        c = self.spec.constraint
        main_rows = main_mask.any(1).nonzero().flatten().tolist()
        logp_ref = torch.zeros_like(logp)
        if main_rows:  # row-major order of main_mask matches the concatenation of the rows' ref vectors
            ref_vals = torch.cat([ref[int(examples[r])][: int(main_mask[r].sum())] for r in main_rows])
            logp_ref[main_mask] = ref_vals.to(logp.device, logp.dtype)
        betas = beta_schedule(response_positions(main_mask), c.beta, c.bias_factor, c.first_token_bias_factor,
                              c.bias_length)
        delta = float(((logp_ref - logp.detach()).abs() * main_mask).max()) if main_mask.any() else 0.0
        return constrained_token_loss(logp, logp_ref, betas, c.weight_floor), delta

    # -- checkpoints ---------------------------------------------------------------------
    def _checkpoint(self, acc, step: int) -> None:
        ckpt = self.work_dir / "checkpoints" / f"step-{step:06d}"
        acc.save_state(str(ckpt))
        (ckpt / "harness_step.json").write_text(json.dumps({"step": step}))
        for old in sorted((self.work_dir / "checkpoints").glob("step-*"))[:-1]:  # keep the latest only
            shutil.rmtree(old, ignore_errors=True)

    def _resume(self, acc) -> int:
        ckpts = sorted((self.work_dir / "checkpoints").glob("step-*")) if (self.work_dir / "checkpoints").exists() else []
        ckpts = [c for c in ckpts if (c / "harness_step.json").exists()]
        if not ckpts:
            return 0
        acc.load_state(str(ckpts[-1]))
        step = json.loads((ckpts[-1] / "harness_step.json").read_text())["step"]
        if self.progress:
            print(f"resuming {self.spec.name} from {ckpts[-1].name}")
        return step

    def _export(self, acc, model, tok, final: Path) -> None:
        """A plain HF folder of the current weights (LoRA merged), written atomically."""
        acc.wait_for_everyone()
        unwrapped = acc.unwrap_model(model)
        if self.settings.lora is not None:
            import copy

            unwrapped, state = copy.deepcopy(unwrapped).merge_and_unload(), None
        else:
            state = acc.get_state_dict(model)  # a collective under FSDP/DeepSpeed: every rank calls it
        tmp = final.with_name(final.name + ".tmp")
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            # any generate() on the saved folder stops where training taught the turn to end
            unwrapped.generation_config.eos_token_id = stop_token_ids(tok, unwrapped.generation_config)
            unwrapped.save_pretrained(tmp, state_dict=state)
            tok.save_pretrained(tmp)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        acc.wait_for_everyone()

    def _save(self, acc, model, tok, main: list[TrainPair]) -> Path:
        final = self.work_dir / "model"
        self._export(acc, model, tok, final)
        if acc.is_main_process:
            # checkpoints only serve to resume an unfinished build (optimizer state: 2x the model)
            shutil.rmtree(self.work_dir / "checkpoints", ignore_errors=True)
        return final


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines after ``step`` (they belong to work lost since the last checkpoint)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))

