"""Mutant: retry backoff is not capped at backoff_max."""
import judges.transport as T
from tests.mutants._mutate import mutate_method

mutate_method(T.RetryPolicy, "delay", "min(self.backoff_max, self.backoff_base * 2 ** attempt)",
              "self.backoff_base * 2 ** attempt", T)
