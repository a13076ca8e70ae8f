"""Mutant: judge requests are not bounded by `concurrency`."""
import judges.transport as T
from tests.mutants._mutate import mutate_method

mutate_method(T.OpenAITransport, "_complete_all", "asyncio.Semaphore(self.concurrency)", "asyncio.Semaphore(1000)", T)
