"""Mutant: probe sampling picks random candidates instead of the draft model's best."""
import attacks.gcg_optim as G
from tests.mutants._mutate import mutate_function

mutate_function(G, "_evaluate", "chosen = draft_losses.topk(k, largest=False).indices",
                "chosen = torch.randperm(b, generator=generator)[:k].to(cands.device)")
