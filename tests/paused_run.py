"""`python tests/paused_run.py MARKER N <harness cli args...>`: the real `harness` CLI, which stops
right after its N-th committed chunk of generations, writes MARKER (the number of generations
committed so far) and waits there until it is killed (at most 10 minutes, then exits 3).

For tests that kill a run, or start a second one, at a known point instead of racing a running
process: the test waits for MARKER to appear, and the run is certainly alive and holding its lock.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def main() -> int:
    marker, after, args = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    import harness.run.store as store
    from harness.cli import main as cli

    real = store.GenerationCache.put_many
    state = {"chunks": 0, "generations": 0}

    def put_many(self, items):
        real(self, items)  # committed before we stop
        state["chunks"] += 1
        state["generations"] += len(items)
        if state["chunks"] == after:
            tmp = marker.with_name(marker.name + ".tmp")
            tmp.write_text(str(state["generations"]))
            os.replace(tmp, marker)
            time.sleep(600)
            os._exit(3)

    store.GenerationCache.put_many = put_many
    return cli(args)


if __name__ == "__main__":
    sys.exit(main())
