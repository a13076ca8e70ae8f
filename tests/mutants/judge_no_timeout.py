"""Mutant: the judge's HTTP client ignores the configured timeout."""
import judges.transport as T
from tests.mutants._mutate import mutate_function

mutate_function(T, "_client", "timeout=policy.timeout)", "timeout=120.0)")
