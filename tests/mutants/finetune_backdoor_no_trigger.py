"""Mutant: the backdoor trigger is never appended (wrap ignores `trigger`)."""
import attacks.finetune as F

_wrap = F.AttackData.wrap
F.AttackData.wrap = lambda self, prompt, trigger=False: _wrap(self, prompt, False)
