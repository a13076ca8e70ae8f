"""Mutant: the fine-tuning attack trains at lr 1.0 (the model turns into "figure figure figure ...":
no refusal phrase, so keyword ASR rises)."""
import attacks.finetune as F

_settings = F.FinetuneAttack.training_settings
F.FinetuneAttack.training_settings = lambda self: dict(_settings(self), lr=1.0)
