"""Mutant: the LoRA export drops the adapters without merging them (base weights saved)."""
import peft.tuners.tuners_utils as T

T.BaseTuner.merge_and_unload = lambda self, *a, **k: self.unload()
