"""GCG speed: steps/s and best loss after equal wall time, ours vs nanoGCG 0.3.0 vs the naive
(llm-attacks style) evaluation, on the same model, prompt, target, search width, top-k and init.

    python bench/gcg_speed.py [--budget 90] [--width 128] [--topk 256] [--arms ours,naive,nanogcg]

Arms (each gets ``--budget`` seconds of optimisation, model loading excluded, one after another):

- ``ours``: ``attacks.gcg_optim.run`` (prefix cache, suffix cache, logits on target positions only,
  candidate batches sized for the machine);
- ``naive``: the same algorithm and candidates with ``naive=True``: every candidate's whole
  sequence in one forward pass with logits at every position (the original llm-attacks
  evaluation);
- ``nanogcg``: nanoGCG 0.3.0 itself (``GCG(model, tokenizer, config).run(messages, target)``,
  prefix cache on, batch size unset = the whole search width), run as a subprocess in its own
  venv (``--venv``, default bench/out/nanogcg-venv) with transformers 4.47.1, created on first
  use: ``pip install nanogcg==0.3.0 transformers==4.47.1`` and the few pure-Python deps, torch
  reused from this venv through a ``.pth`` file that sys.path appends after the venv's own
  site-packages (so its transformers 4.47 wins). Two things are done to nanoGCG to make it run
  the same prompt: the tokenizer is rebuilt from tokenizer.json (4.47 cannot read the
  ``TokenizersBackend`` class that transformers 5 writes) and its ``bos_token`` is unset, because
  nanoGCG 0.3.0 strips *every* occurrence of the BOS text from the rendered template and
  SmolLM2's BOS is its turn marker ``<|im_start|>``. The token counts of the three segments are
  printed for each arm and must agree.

Every arm runs with ``early_stop`` off. A step's loss is the lowest candidate loss of that step
(nanoGCG's ``losses``); "best loss" is the lowest over the steps finished within the budget,
steps/s counts those steps over the time the last one finished. Ratios are against the arms
measured in this same run. Random candidate draws differ between nanoGCG and ours, so compare
losses over several prompts (``--prompts``) before reading much into a single one.
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
DEFAULT_VENV = ROOT / "bench" / "out" / "nanogcg-venv"
NANOGCG_PINS = ["nanogcg==0.3.0", "transformers==4.47.1", "tokenizers>=0.20,<0.22", "huggingface-hub>=0.24,<1.0",
                "safetensors", "scipy", "protobuf", "sentencepiece", "regex", "requests", "pyyaml", "tqdm",
                "packaging", "numpy", "filelock", "fsspec"]


# --------------------------------------------------------------------------- nanoGCG worker (its own venv)


def worker(args: argparse.Namespace) -> None:
    """Runs under the nanoGCG venv: imports only torch, transformers 4.47 and nanogcg."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    import nanogcg
    from nanogcg import gcg as ng

    path = Path(args.model_path)
    cfg = json.loads((path / "tokenizer_config.json").read_text())
    tok = PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"), eos_token=cfg.get("eos_token"),
                                  pad_token=cfg.get("pad_token"), unk_token=cfg.get("unk_token"))
    template = path / "chat_template.jinja"
    tok.chat_template = template.read_text() if template.exists() else cfg["chat_template"]
    tok.bos_token = None  # see the module docstring
    model = AutoModelForCausalLM.from_pretrained(str(path), torch_dtype=torch.float32).eval()
    torch.manual_seed(args.seed)

    class Budget(Exception):
        pass

    record: dict = {"losses": [], "times": []}
    state = {"in_step": False, "t0": 0.0}
    grad_fn, loss_fn = ng.GCG.compute_token_gradient, ng.GCG._compute_candidates_loss_original

    def timed_grad(self, optim_ids):
        if time.perf_counter() - state["t0"] >= args.budget:
            raise Budget
        state["in_step"] = True
        return grad_fn(self, optim_ids)

    def timed_loss(self, search_batch_size, input_embeds):
        out = loss_fn(self, search_batch_size, input_embeds)
        if state["in_step"]:  # not the init buffer's call
            record["losses"].append(float(out.min()))
            record["times"].append(time.perf_counter() - state["t0"])
            state["in_step"] = False
        return out

    ng.GCG.compute_token_gradient, ng.GCG._compute_candidates_loss_original = timed_grad, timed_loss
    config = nanogcg.GCGConfig(num_steps=10**6, optim_str_init=args.init, search_width=args.width, topk=args.topk,
                               seed=args.seed, early_stop=False, verbosity="WARNING")
    attack = ng.GCG(model, tok, config)
    state["t0"] = time.perf_counter()
    try:
        attack.run([{"role": "user", "content": args.prompt + " "}], args.target)
    except Budget:
        pass
    record.update(versions={"nanogcg": "0.3.0", "transformers": transformers.__version__, "torch": torch.__version__},
                  tokens={"before": int(attack.before_embeds.shape[1]), "after": int(attack.after_embeds.shape[1]),
                          "target": int(attack.target_ids.shape[1]),
                          "suffix": len(tok(args.init, add_special_tokens=False)["input_ids"])},
                  threads=torch.get_num_threads())
    print("RESULT " + json.dumps(record))


def ensure_venv(venv: Path) -> Path:
    """The nanoGCG venv's python, created on first use (torch shared with this venv via a .pth)."""
    py = venv / "bin" / "python"
    check = "import nanogcg, transformers, torch; assert transformers.__version__ == '4.47.1'"
    if py.exists() and subprocess.run([str(py), "-c", check], capture_output=True).returncode == 0:
        return py
    print(f"creating the nanoGCG venv in {venv} (pip install {' '.join(NANOGCG_PINS[:2])} …)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", *NANOGCG_PINS], check=True)
    site = subprocess.run([str(py), "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True,
                          text=True, check=True).stdout.strip()
    import torch

    torch_site = Path(torch.__file__).resolve().parent.parent  # this venv's site-packages
    # .pth lines are appended to sys.path after the venv's own site-packages: its transformers wins.
    (Path(site) / "zz_main_venv_torch.pth").write_text(f"{torch_site}\n")
    subprocess.run([str(py), "-c", check], check=True)
    return py


# --------------------------------------------------------------------------- our arms


def ours(model, tok, args: argparse.Namespace, naive: bool) -> dict:
    import torch

    from attacks import gcg_optim as gcg

    config = gcg.GCGConfig(num_steps=10**6, optim_str_init=args.init, search_width=args.width, topk=args.topk,
                           seed=args.seed, early_stop=False, naive=naive, time_budget_s=args.budget)
    seg = gcg.segments_of(tok, [{"role": "user", "content": args.prompt + " "}])
    res = gcg.run(model, tok, seg, args.target, config)
    return {"losses": res.losses, "times": res.step_times, "threads": torch.get_num_threads(),
            "tokens": {"before": len(seg.before), "after": len(seg.after),
                       "target": len(tok.encode(args.target, add_special_tokens=False)),
                       "suffix": len(tok.encode(args.init, add_special_tokens=False))}}


def summarise(rec: dict, budget: float) -> dict:
    pairs = [(t, loss) for t, loss in zip(rec["times"], rec["losses"]) if t <= budget]
    steps = len(pairs)
    return {"steps": steps, "steps_per_s": steps / pairs[-1][0] if steps else 0.0,
            "best_loss": min(loss for _, loss in pairs) if steps else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--budget", type=float, default=90.0, help="seconds of optimisation per arm and prompt")
    ap.add_argument("--width", type=int, default=128, help="search width (nanoGCG default 512; CPU-sized here)")
    ap.add_argument("--topk", type=int, default=256)
    ap.add_argument("--init", default=" ".join(["x"] * 20))
    ap.add_argument("--prompts", type=int, default=1, help="demo prompts (each gets every arm)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arms", default="ours,naive,nanogcg")
    ap.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    ap.add_argument("--json", type=Path, default=None, help="also write the raw per-step records here")
    # worker mode (inside the nanoGCG venv)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model-path", help=argparse.SUPPRESS)
    ap.add_argument("--prompt", help=argparse.SUPPRESS)
    ap.add_argument("--target", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    sys.path.insert(0, str(ROOT))
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    from attacks import gcg_optim as gcg
    from harness import hardware
    from harness.data import load_dataset
    from harness.data.base import DatasetConfig
    from harness.models import resolve_model

    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    cpu = hardware.cpu_info()
    print(f"CPU: {cpu['model']} ({cpu['cores']} cores), features: {', '.join(cpu['flags'])}; "
          f"torch threads {torch.get_num_threads()}; {time.strftime('%Y-%m-%d %H:%M %Z')}")
    resolved = resolve_model(args.model)
    tok = AutoTokenizer.from_pretrained(resolved.path)
    model = gcg.load_model(resolved.path)
    examples = load_dataset(DatasetConfig(format="demo", limit=args.prompts))
    py = ensure_venv(args.venv) if "nanogcg" in arms else None
    print(f"model {args.model}, search width {args.width}, top-k {args.topk}, init {len(args.init.split())} x "
          f"'{args.init.split()[0]}', {args.budget:.0f} s per arm and prompt, {len(examples)} prompt(s), early stop off")

    results: dict[str, list[dict]] = {a: [] for a in arms}
    raw: list[dict] = []
    with tqdm(total=len(arms) * len(examples), desc="gcg bench", unit="run") as bar:
        for ex in examples:
            for arm in arms:
                bar.set_postfix(arm=arm, prompt=ex.id)
                if arm == "nanogcg":
                    cmd = [str(py), str(Path(__file__).resolve()), "--worker", "--model-path", str(resolved.path),
                           "--prompt", ex.prompt, "--target", ex.target, "--init", args.init, "--width",
                           str(args.width), "--topk", str(args.topk), "--seed", str(args.seed), "--budget",
                           str(args.budget)]
                    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
                    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
                    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
                    if line is None:
                        raise RuntimeError(f"nanoGCG worker failed:\n{out.stderr[-3000:]}")
                    rec = json.loads(line[len("RESULT "):])
                else:
                    args.prompt, args.target = ex.prompt, ex.target
                    rec = ours(model, tok, args, naive=arm == "naive")
                rec.update(arm=arm, example=ex.id, **summarise(rec, args.budget))
                results[arm].append(rec)
                raw.append(rec)
                bar.update(1)
                tqdm.write(f"  {ex.id} {arm:8s} tokens {rec['tokens']}  steps {rec['steps']:3d}  "
                           f"{rec['steps_per_s']:.3f} steps/s  best loss {rec['best_loss']:.3f}")

    toks = {json.dumps(r["tokens"], sort_keys=True) for r in raw}
    if len(toks) > len(examples):
        print(f"WARNING: the arms saw different token counts: {toks}")
    print(f"\n{'arm':10s} {'steps':>6s} {'steps/s':>9s} {'best loss (mean)':>17s}")
    mean = {}
    for arm in arms:
        rs = results[arm]
        mean[arm] = (sum(r["steps_per_s"] for r in rs) / len(rs), sum(r["best_loss"] for r in rs) / len(rs))
        print(f"{arm:10s} {sum(r['steps'] for r in rs):6d} {mean[arm][0]:9.3f} {mean[arm][1]:17.3f}")
    if "ours" in arms:
        for base in (a for a in arms if a != "ours"):
            ratio = mean["ours"][0] / mean[base][0] if mean[base][0] else float("inf")
            print(f"ours / {base}: {ratio:.2f}x steps/s, best loss {mean['ours'][1]:.3f} vs {mean[base][1]:.3f} "
                  f"({'lower or equal' if mean['ours'][1] <= mean[base][1] else 'higher'})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"cpu": cpu, "args": {k: str(v) for k, v in vars(args).items()},
                                         "runs": raw}, indent=1))


if __name__ == "__main__":
    main()
