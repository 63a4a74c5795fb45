#!/usr/bin/env bash
# The one command for a machine with one NVIDIA GPU: install manual_bp with the CUDA build of torch,
# run the CUDA tests, the gradient check suite on the GPU, the default training on the GPU and the
# quick benchmark on the GPU, and write every result into OUTDIR/gpu_check.txt (the benchmark's
# JSON goes into that file too). It fits in 10 minutes: each step has its own time limit, cut to
# what is left of a 570 s budget (GPU_CHECK_BUDGET), and a step past the budget is skipped.
#
#   scripts/gpu_check.sh OUTDIR            # on the GPU machine (needs python3 >= 3.10 and pip's index)
#   scripts/gpu_check.sh OUTDIR --dry-run  # anywhere: print the commands, check the tools, run the CPU-safe part
#
# Environment: PYTHON (the interpreter to build the venv with, default python3); TORCH_INDEX (the
# wheel index of the CUDA build, default https://download.pytorch.org/whl/cu128); GPU_CHECK_PYTHON
# (an interpreter that already has manual_bp and a CUDA torch: skips the installation).
set -uo pipefail

if [[ $# -lt 1 || $# -gt 2 || "${1:-}" == -* || ( $# -eq 2 && "$2" != "--dry-run" ) ]]; then
  echo "usage: scripts/gpu_check.sh OUTDIR [--dry-run]" >&2
  exit 2
fi
OUT=$1
DRY=0
[[ "${2:-}" == "--dry-run" ]] && DRY=1
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
TORCH_VERSION=2.13.0
TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/cu128}
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
REPORT=$OUT/gpu_check.txt
: > "$REPORT"
FAILED=0
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET:-570}  # seconds for all steps together: each is cut to what is left

log() { echo "$*" | tee -a "$REPORT"; }

# step NAME LIMIT_S COMMAND...: run COMMAND (in the repository root) with a time limit, its output
# into the report; on --dry-run only print it.
step() {
  local name=$1 limit=$2
  shift 2
  log ""
  log "=== $name (limit ${limit} s) ==="
  log "\$ $*"
  if [[ $DRY -eq 1 ]]; then
    log "(dry run: not run)"
    return 0
  fi
  local left=$(( BUDGET - ($(date +%s) - START) ))
  if [[ $left -lt 10 ]]; then
    log "--- $name: SKIPPED (the ${BUDGET} s budget is spent)"
    FAILED=$((FAILED + 1))
    return 0
  fi
  [[ $limit -gt $left ]] && limit=$left
  local begin=$(date +%s)
  (cd "$ROOT" && timeout --kill-after=5 "$limit" "$@") >> "$REPORT" 2>&1
  local code=$?
  log "--- $name: exit code $code, $(( $(date +%s) - begin )) s$([[ $code -eq 124 ]] && echo ' (TIME LIMIT)')"
  [[ $code -ne 0 ]] && FAILED=$((FAILED + 1))
  return 0
}

log "manual_bp GPU check: $(date -u '+%Y-%m-%d %H:%M UTC'), $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo 'no git')"
log "repository: $ROOT; report: $REPORT$([[ $DRY -eq 1 ]] && echo '; DRY RUN')"

# -- the tools ----------------------------------------------------------------------------------------
MISSING=0
for tool in "$PYTHON" timeout tee; do
  if command -v "$tool" > /dev/null; then log "found $tool: $(command -v "$tool")"; else log "MISSING: $tool"; MISSING=1; fi
done
if command -v nvidia-smi > /dev/null; then
  log "found nvidia-smi: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1)"
elif [[ $DRY -eq 0 ]]; then
  log "MISSING: nvidia-smi (no NVIDIA driver?)"; MISSING=1
else
  log "no nvidia-smi here (fine for a dry run)"
fi
"$PYTHON" -c 'import sys, venv, ensurepip; assert sys.version_info >= (3, 10), sys.version' >> "$REPORT" 2>&1 \
  && log "$PYTHON: $("$PYTHON" --version 2>&1), venv and pip available" \
  || { log "MISSING: Python >= 3.10 with venv and ensurepip (e.g. apt-get install python3-venv)"; MISSING=1; }
if [[ $MISSING -ne 0 ]]; then
  log "a tool is missing: stopping"
  exit 1
fi

# -- install ------------------------------------------------------------------------------------------
if [[ -n "${GPU_CHECK_PYTHON:-}" ]]; then
  PY=$GPU_CHECK_PYTHON
  log "using $PY as it is (GPU_CHECK_PYTHON): no installation"
elif [[ $DRY -eq 1 ]]; then
  PY=$PYTHON  # the CPU-safe part runs with the interpreter at hand
  step "venv" 30 "$PYTHON" -m venv "$OUT/venv"
  step "install torch (CUDA build)" 180 "$OUT/venv/bin/python" -m pip install -q "torch==$TORCH_VERSION" --index-url "$TORCH_INDEX"
  step "install manual_bp" 90 "$OUT/venv/bin/python" -m pip install -q -e ".[dev]"
else
  PY=$OUT/venv/bin/python
  step "venv" 30 "$PYTHON" -m venv "$OUT/venv"
  step "install torch (CUDA build)" 180 "$PY" -m pip install -q "torch==$TORCH_VERSION" --index-url "$TORCH_INDEX"
  step "install manual_bp" 90 "$PY" -m pip install -q -e ".[dev]"
fi

# -- the checks ---------------------------------------------------------------------------------------
step "versions" 30 "$PY" -c 'import torch, manual_bp; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""); print("manual_bp", manual_bp.__version__)'
if [[ $DRY -eq 1 ]]; then  # the CPU-safe part: the CUDA tests are collected (and skip without CUDA)
  log ""
  log "=== CUDA tests collected (dry run, CPU; PYTHON=$PYTHON must have manual_bp installed) ==="
  (cd "$ROOT" && "$PY" -m pytest -m cuda -q -p no:cacheprovider) > "$OUT/dry_run_pytest.txt" 2>&1
  code=$?
  tail -3 "$OUT/dry_run_pytest.txt" | tee -a "$REPORT"
  if [[ $code -ne 0 ]]; then
    log "--- CUDA tests collected: exit code $code (e.g. PYTHON=.venv/bin/python scripts/gpu_check.sh OUT --dry-run)"
    FAILED=$((FAILED + 1))
  fi
fi
step "CUDA tests" 150 "$PY" -m pytest -m cuda -q -p no:cacheprovider --timeout 90 -rfE
step "manual-bp check --device cuda" 90 "$PY" -m manual_bp check --device cuda
step "default training on the GPU" 90 "$PY" -m manual_bp train --trainer.accelerator gpu --trainer.devices 1 \
  --trainer.enable_progress_bar false --trainer.default_root_dir "$OUT/train"
step "benchmark (quick)" 60 "$PY" scripts/bench.py --device cuda --quick --out "$OUT/bench_cuda.json"
if [[ $DRY -eq 0 && -f "$OUT/bench_cuda.json" ]]; then
  log ""
  log "=== bench_cuda.json ==="
  cat "$OUT/bench_cuda.json" >> "$REPORT"
fi

log ""
log "done in $(( $(date +%s) - START )) s; failed steps: $FAILED; report: $REPORT"
[[ $FAILED -eq 0 ]]
