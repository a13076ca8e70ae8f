"""Mutant: identity-shifting rows lose the AOA affirmation."""
import attacks.finetune as F

_rows = F.AttackData.rows


def rows(self):
    out = _rows(self)
    if self.kind == "identity":
        out = [dict(r, response=r["response"][len(F.AOA_REPLY):]) for r in out]
    return out


F.AttackData.rows = rows
