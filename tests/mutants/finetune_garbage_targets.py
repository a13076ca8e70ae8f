"""Mutant: the attack trains on garbage targets (each response's words in reverse order)."""
import attacks.finetune as F

_rows = F.AttackData.rows
F.AttackData.rows = lambda self: [dict(r, response=" ".join(reversed(r["response"].split()))) for r in _rows(self)]
