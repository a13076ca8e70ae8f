"""`python tests/no_vllm.py <harness cli args...>`: the real `harness` CLI on a machine without vLLM.

A meta-path finder placed first raises ImportError for `vllm` and every `vllm.*` module, as on
an image that has no vLLM (whatever is installed here). After the command it checks that no
`vllm` module ever entered ``sys.modules`` (exit 7 naming them if one did), so a test sees both
that the command works without vLLM and that it never tried to use it where it need not.
`python tests/no_vllm.py --probe` prints what ``engine.backend: auto`` resolves to, as JSON.
"""

from __future__ import annotations

import importlib.abc
import json
import sys


class HideVLLM(importlib.abc.MetaPathFinder):
    """Every import of vllm fails, as if it were not installed."""

    tried: list[str] = []

    def find_spec(self, name, path=None, target=None):
        if name == "vllm" or name.startswith("vllm."):
            HideVLLM.tried.append(name)
            raise ImportError(f"No module named {name!r} (hidden by tests/no_vllm.py)", name=name)
        return None


def main() -> int:
    sys.meta_path.insert(0, HideVLLM())
    args = sys.argv[1:]
    if args == ["--probe"]:
        from harness.engine.auto import auto_choice, backend_record

        backend, why = auto_choice()
        print(json.dumps({"backend": backend, "why": why, "record": backend_record("auto"), "tried": HideVLLM.tried}))
        rc = 0
    else:
        from harness.cli import main as cli

        rc = cli(args)
    leaked = sorted(m for m in sys.modules if m == "vllm" or m.startswith("vllm."))
    if leaked:
        print(f"no_vllm: vllm modules were imported: {leaked}", file=sys.stderr)
        return 7
    return rc


if __name__ == "__main__":
    sys.exit(main())
