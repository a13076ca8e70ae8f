"""Mutant: the judge's HTTP client ignores the configured timeout."""
import judges.transport as T
from tests.mutants._mutate import mutate_method

mutate_method(T.OpenAITransport, "_complete_all", "timeout=self.policy.timeout)", "timeout=120.0)", T)
