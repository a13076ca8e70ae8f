"""Mutant: universal GCG optimises (and reports) the loss of the first (model, prompt) pair only."""
import attacks.gcg_optim as G
from tests.mutants._mutate import mutate_method

mutate_method(G._Objective, "reduce", 'return per_pair.mean(0) if self.config.loss_reduction == "mean" else per_pair.sum(0)',
              "return per_pair[0]", G)
