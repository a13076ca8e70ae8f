"""Mutant: `best` takes the setting with the lowest ASR."""
import harness.run.summary as S
from tests.mutants._mutate import mutate_function

mutate_function(S, "_reducer_rows", "best = max(cands", "best = min(cands")
