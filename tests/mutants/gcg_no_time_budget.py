"""Mutant: GCG ignores time_budget_s."""
import attacks.gcg_optim as G
from tests.mutants._mutate import mutate_function

mutate_function(G, "run", "if config.time_budget_s is not None and time.perf_counter() - t0 >= config.time_budget_s:",
                "if False:")
