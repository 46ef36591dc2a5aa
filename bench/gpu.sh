#!/usr/bin/env bash
# Every GPU section of emi's benchmarks in one prepared run (docs/benchmarks-gpu.md):
#
#   bash bench/gpu.sh            # on a GPU machine: Qwen2.5-7B shape, random weights, bf16, < 9 min
#   bash bench/gpu.sh --dry-run  # the same script on CPU at tiny shapes (tests/test_gpu_script.py)
#   bash bench/gpu.sh --fetch-wheels  # here, with a registry: download bench/gpu-wheels.txt into .whl/
#
# Sections (bench/gpu_sections.py): in-process generate (generate and paged samplers), steering
# and ablation overhead, capture, the EM table, the static sampler (compiled on CUDA; last). Each runs
# in its own process under a time cap, inside
# one overall budget (EMI_GPU_BUDGET_S, default 510 s); a section that fails or runs out of time gets a
# row saying so and the others still run. emi is imported from this checkout (PYTHONPATH), with no
# dependency resolution: the machine's own torch and transformers are used whatever emi pins. Wheels
# in .whl/ (bench/gpu-wheels.txt says which, and how to fetch them) are installed with
# `pip install --no-index --no-deps --target /tmp/site` first. Prints the markdown table, and writes
# it to $OUT/gpu-table.md (with the log and each section's JSON) when OUT is set.
set -u
cd "$(dirname "$0")/.."
DRY=""
case "${1:-}" in
  --dry-run) DRY="--dry-run" ;;
  --fetch-wheels)
    mkdir -p .whl
    grep -vE '^\s*(#|$)' bench/gpu-wheels.txt | xargs "${PYTHON:-python3}" -m pip download -q --no-deps \
      --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
      --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform manylinux1_x86_64 -d .whl || exit 1
    mb=$(du -sm .whl | cut -f1)
    ls -l .whl
    echo "total ${mb} MiB in .whl/"
    [ "$mb" -lt 64 ] || { echo "emi: error: .whl/ holds ${mb} MiB; at most 64 MiB travels to the GPU machine" >&2; exit 2; }
    exit 0 ;;
  "") ;;
  *) echo "usage: bash bench/gpu.sh [--dry-run | --fetch-wheels]" >&2; exit 2 ;;
esac
START=$(date +%s)
BUDGET=${EMI_GPU_BUDGET_S:-510}
SCALE=1
if [ -n "$DRY" ]; then  # a shared CI machine: the caps guard a GPU lease, not this
  BUDGET=${EMI_GPU_BUDGET_S:-2000}
  SCALE=4
fi
PY=${PYTHON:-python3}
WORK=$(mktemp -d /tmp/emi-gpu.XXXXXX)
mkdir -p "$WORK/tmp"  # the sections' scratch (capture's stores, the EM run's answers): removed at the end
LOG="$WORK/gpu-log.txt"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

say() { echo "$@" | tee -a "$LOG" >&2; }

if [ -z "$DRY" ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>>"$LOG"; then
  echo "emi: error: torch sees no CUDA device here; on a CPU run bash bench/gpu.sh --dry-run" >&2
  exit 2
fi
SITE=""
if [ -z "$DRY" ] && ls .whl/*.whl >/dev/null 2>&1; then
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      >>"$LOG" 2>&1; then
    SITE=/tmp/site
    say "installed from .whl/: $(cd .whl && ls *.whl | tr '\n' ' ')"
  else
    say "note: installing .whl/ failed (see the log); running without those wheels"
  fi
elif [ -z "$DRY" ]; then
  say "note: no wheels in .whl/ (bench/gpu-wheels.txt); the sections need none of them"
fi
export PYTHONPATH="$PWD${SITE:+:$SITE}${PYTHONPATH:+:$PYTHONPATH}"

if [ -z "$DRY" ] && command -v nvidia-smi >/dev/null 2>&1; then
  DEVICE=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)
  DEVICE="${DEVICE:-no GPU answered nvidia-smi}"
elif [ -z "$DRY" ]; then
  DEVICE="no nvidia-smi (CPU?)"
else
  DEVICE="CPU (dry run, tiny shapes)"
fi
"$PY" - >>"$LOG" 2>&1 <<'EOF'
import importlib.metadata as m, torch, transformers
print(f"torch {torch.__version__} (cuda: {torch.cuda.is_available()}), transformers {transformers.__version__}; "
      f"emi pins torch 2.13 and transformers 5.23 and is run here on these without resolving its pins")
for name in ("peft", "safetensors", "tokenizers", "numpy", "scipy", "jaxtyping", "einops"):
    try:
        print(f"  {name} {m.version(name)}")
    except m.PackageNotFoundError:
        print(f"  {name}: not installed")
EOF
say "device: $DEVICE"
# emi's dependencies that the GPU image lacks: unimportable in every section, so a dry run catches a use
WITHOUT=transformer_lens,nnsight,sae_lens,plotly,kaleido,openai,zstandard
SKIPPED=""
for spec in generate:110 steer:100 capture:70 em:110 static:150; do
  s=${spec%%:*}
  cap=$(( ${spec##*:} * SCALE ))
  left=$(( BUDGET - ($(date +%s) - START) ))
  [ "$cap" -gt "$left" ] && cap=$left
  if [ "$cap" -lt 20 ]; then
    SKIPPED="$SKIPPED$s=not run: the ${BUDGET} s budget was spent;"
    say "== $s: skipped, budget spent"
    continue
  fi
  say "== $s (at most $cap s)"
  t0=$(date +%s)
  TMPDIR="$WORK/tmp" timeout -k 10 "$cap" "$PY" bench/gpu_sections.py "$s" --out "$WORK" $DRY --without "$WITHOUT" >>"$LOG" 2>&1
  rc=$?
  say "   $s: exit $rc after $(( $(date +%s) - t0 )) s"
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    SKIPPED="$SKIPPED$s=did not finish within its $cap s (see gpu-log.txt);"
  elif [ "$rc" -ne 0 ]; then
    why=$(grep -E '^[A-Za-z_.]*(Error|Exception)' "$LOG" | tail -1 | tr ';|' ',/' | cut -c1-200)
    SKIPPED="$SKIPPED$s=failed (exit $rc): ${why:-see gpu-log.txt};"
  fi
done
"$PY" bench/gpu_sections.py table "$WORK" --device-name "$DEVICE" --skipped "$SKIPPED" >"$WORK/gpu-table.md"
rc=$?
rm -rf "$WORK/tmp"
cat "$WORK/gpu-table.md"
say "total $(( $(date +%s) - START )) s"
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  cp "$WORK/gpu-table.md" "$LOG" "$OUT/"
  cp "$WORK"/*.json "$OUT/" 2>/dev/null
  rm -rf "$WORK"
else
  echo "log and each section's JSON: $WORK" >&2
fi
exit $rc
