"""Mutant: GCG's token gradient replaced by noise (random search with GCG's budget)."""
import torch

import attacks.gcg_optim as G

_real = G.token_gradient


def token_gradient(problem, ids):
    grad, loss, match, kv = _real(problem, ids)
    return torch.randn(grad.shape, dtype=grad.dtype), loss, match, kv


G.token_gradient = token_gradient
