"""Mutant: early stop never skips a broken prompt."""
import inspect
import textwrap

import attacks.decoding as D

src = textwrap.dedent(inspect.getsource(D.DecodingAttack.plan_wave))
assert "if ex.id in broken else" in src and "super().plan_wave(" in src, "mutant out of date"
src = src.replace("if ex.id in broken else", "if False else").replace("super().plan_wave(",
                                                                         "super(DecodingAttack, self).plan_wave(")
ns = dict(vars(D))
exec(src, ns)
D.DecodingAttack.plan_wave = ns["plan_wave"]
