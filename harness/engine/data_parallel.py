"""Data parallelism: one engine per worker process, each on its own slice of GPUs.

vLLM's offline ``LLM`` refuses ``data_parallel_size > 1`` in a single process. Offline
evaluation needs no coordination between replicas, so each worker runs an ordinary
engine (``tensor_parallel_size`` GPUs each, via ``CUDA_VISIBLE_DEVICES``), requests are
dealt out round-robin, and results come back in request order.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path
from typing import Any, Sequence

from harness.engine.base import Completion, EngineConfig, GenRequest
from harness.errors import ModelError


def _worker(rank: int, model_path: str, config: EngineConfig, devices: str | None, conn: Any) -> None:
    if devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = devices
    from harness.engine import make_engine

    try:
        engine = make_engine(Path(model_path), config)
        conn.send(("ready", rank))
    except Exception as e:  # report start-up failures to the parent instead of hanging it
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    while True:
        msg = conn.recv()
        if msg is None:
            break
        try:
            conn.send(("ok", engine.generate(msg)))
        except Exception as e:
            conn.send(("error", f"{type(e).__name__}: {e}"))
    engine.close()


class DataParallelEngine:
    def __init__(self, model_path: Path, config: EngineConfig, visible_devices: list[str] | None = None) -> None:
        self.backend = config.backend
        n, tp = config.data_parallel_size, config.tensor_parallel_size
        if visible_devices is None:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            visible_devices = visible.split(",") if visible else _cuda_devices()
        if visible_devices and len(visible_devices) < n * tp:
            raise ModelError(f"engine: data_parallel_size {n} x tensor_parallel_size {tp} needs {n * tp} GPUs; "
                             f"{len(visible_devices)} visible")
        ctx = mp.get_context("spawn")  # CUDA and vLLM need fresh interpreters
        inner = config.model_copy(update={"data_parallel_size": 1})
        self.conns, self.procs = [], []
        for rank in range(n):
            devices = ",".join(visible_devices[rank * tp:(rank + 1) * tp]) if visible_devices else None
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(rank, str(model_path), inner, devices, child), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)
        for conn in self.conns:
            status, detail = conn.recv()
            if status != "ready":
                self.close()
                raise ModelError(f"a data-parallel engine worker failed to start: {detail}")

    def generate(self, requests: Sequence[GenRequest], progress: bool = False) -> list[list[Completion]]:
        n = len(self.conns)
        shards = [list(requests[r::n]) for r in range(n)]
        for conn, shard in zip(self.conns, shards):
            conn.send(shard)
        results: list[list[Completion] | None] = [None] * len(requests)
        for rank, conn in enumerate(self.conns):
            status, payload = conn.recv()
            if status != "ok":
                raise ModelError(f"data-parallel worker {rank}: {payload}")
            for j, comps in enumerate(payload):
                results[rank + j * n] = comps
        return results  # type: ignore[return-value]

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for proc in self.procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.terminate()
        self.conns, self.procs = [], []


def _cuda_devices() -> list[str]:
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        return []
