"""Mutant: the LoRA export saves the PEFT wrapper (adapter files, layers unmerged)."""
import peft.peft_model as P

P.PeftModel.merge_and_unload = lambda self, *a, **k: self
