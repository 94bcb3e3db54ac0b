#!/usr/bin/env bash
# scripts/gpu_check.sh [OUT_DIR]: posbench's checks on one CUDA GPU in under 8 minutes (sized for an H200).
#
#   1. bf16 training steps per encoding (model=small, batch 8 x 2048): model.attention=sdpa for every
#      encoding that trains, flex for a few, torch.compile off, then on for a few. Tokens/s, MFU against
#      the bf16 matmul peak measured in the same run, and the ratio to the plain PyTorch GPT of
#      scripts/bench_train.py at the same compile setting.
#   2. long evaluation (model=tiny, bf16, batch 1) of nope, rope, alibi, t5 and fire at 65,536 and
#      131,072 tokens: seconds and peak CUDA memory (torch.cuda.max_memory_allocated).
#   3. `python -m posbench eval hf=DIR` of a randomly initialised model of Llama-3.2-1B's shape
#      (vocabulary 128,256) at 16K, 32K and 64K tokens: each length's peak CUDA memory.
#
# Output, all in OUT_DIR (default gpu-check-out/ in the repository root): results.jsonl (one JSON line
# per row), log.txt (every command's output), env.txt (machine, versions, commit), hf-results.json
# (part 3's results.json) and summary.md (the tables, also printed at the end). Every part runs under `timeout`
# within one overall budget (GPU_CHECK_BUDGET_S, 465 s); a part stopped at its limit keeps the rows it
# finished, and the summary says which parts stopped.
#
# Python: GPU_CHECK_PYTHON, .venv/bin/python or python3, the first whose torch sees CUDA (`make setup`
# when none has torch). posbench runs from this checkout (PYTHONPATH), uninstalled. On a GPU machine
# without a package index, first make the dependency pack where the dev venv is, and take
# build/gpu-deps along; the packages that machine's Python lacks (hydra-core, omegaconf, jsonschema,
# ...) are then linked from it:
#   scripts/gpu_check.sh --pack [DIR]   # default build/gpu-deps, for Python GPU_CHECK_TARGET_PYTHON (3.12)
# GPU_CHECK_DRY_RUN=1 runs every part at toy sizes on the CPU, without CUDA (torch.compile skipped).
set -uo pipefail
CALLER_DIR=$(pwd)
cd "$(dirname "$0")/.."
ROOT=$(pwd)
from_caller() { case $1 in /*) echo "$1" ;; *) echo "$CALLER_DIR/$1" ;; esac; }  # a path given on the command line

if [ "${1:-}" = "--pack" ]; then
    exec "${GPU_CHECK_PYTHON:-.venv/bin/python}" scripts/gpu_deps.py pack \
        "$(if [ -n "${2:-}" ]; then from_caller "$2"; else echo build/gpu-deps; fi)" \
        --python-version "${GPU_CHECK_TARGET_PYTHON:-3.12}"
fi

OUT_DIR=$(if [ -n "${1:-}" ]; then from_caller "$1"; else echo "$ROOT/gpu-check-out"; fi)
DRY=${GPU_CHECK_DRY_RUN:-0}
BUDGET=${GPU_CHECK_BUDGET_S:-465}
SECONDS=0  # the budget counts from here
mkdir -p "$OUT_DIR"
RESULTS=$OUT_DIR/results.jsonl
LOG=$OUT_DIR/log.txt
ENV_TXT=$OUT_DIR/env.txt
: >"$RESULTS"
: >"$LOG"
: >"$ENV_TXT"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
[ "$DRY" = 1 ] && export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

cuda_ok() { "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; }
has_torch() { "$1" -c 'import torch' >/dev/null 2>&1; }

PY="" FALLBACK=""
for candidate in "${GPU_CHECK_PYTHON:-}" .venv/bin/python python3; do
    [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 || continue
    if cuda_ok "$candidate"; then PY=$candidate; break; fi
    [ -z "$FALLBACK" ] && has_torch "$candidate" && FALLBACK=$candidate
done
PY=${PY:-$FALLBACK}
if [ -z "$PY" ]; then
    echo "no Python with torch here: make setup (needs a package index; not counted in the budget)"
    make setup >>"$LOG" 2>&1 || { echo "gpu_check: no Python with torch, and make setup failed (see $LOG)" >&2; exit 1; }
    PY=.venv/bin/python
    SECONDS=0  # the install is not part of the budget
fi

echo "\$ $PY -c 'import torch; print(torch.__version__, torch.cuda.is_available())'" | tee -a "$ENV_TXT"
"$PY" -c 'import torch; print(torch.__version__, torch.cuda.is_available())' 2>&1 | tee -a "$ENV_TXT"
if [ "$DRY" != 1 ] && ! cuda_ok "$PY"; then
    echo "gpu_check: torch in $PY sees no CUDA device; run this on an NVIDIA GPU machine with a CUDA build of torch (GPU_CHECK_DRY_RUN=1 for a CPU dry run)" >&2
    exit 1
fi

# posbench's own dependencies: this Python's, else linked from the pack, else pip (where an index answers)
SITE=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-site.XXXXXX")
HF_DIR=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-hf.XXXXXX")  # part 3's model (2.5 GB), corpus and run
trap 'rm -rf "$SITE" "$HF_DIR"' EXIT
PACK=${GPU_CHECK_DEPS:-build/gpu-deps}
IMPORTS='import posbench.config, posbench.reports.results, jsonschema'
if ! PYTHONPATH="$ROOT" "$PY" -c "$IMPORTS" >/dev/null 2>&1; then
    if [ -f "$PACK/manifest.json" ]; then
        "$PY" scripts/gpu_deps.py link --pack "$PACK" --into "$SITE" 2>&1 | tee -a "$ENV_TXT"
    else
        echo "no $PACK: pip install hydra-core omegaconf jsonschema" | tee -a "$ENV_TXT"
        timeout 120 "$PY" -m pip install -q --retries 0 --timeout 10 hydra-core omegaconf jsonschema >>"$LOG" 2>&1
    fi
fi
export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c "$IMPORTS" >>"$LOG" 2>&1; then
    echo "gpu_check: posbench does not import with $PY (see $LOG); make the pack with scripts/gpu_check.sh --pack where the dev venv is and bring $PACK" >&2
    exit 1
fi

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown) ($(git status --porcelain 2>/dev/null | wc -l) paths changed)"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    "$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda)'
    "$PY" -c 'import transformers; print("transformers", transformers.__version__)' 2>&1 | tail -1
    echo "dry run: $DRY; budget: ${BUDGET} s"
} >>"$ENV_TXT" 2>&1

record() {  # NAME OUTCOME SECONDS
    printf '{"part": "status", "name": "%s", "outcome": "%s", "seconds": %d}\n' "$1" "$2" "$3" >>"$RESULTS"
    echo "   part $1: $2 ($3 s)"
}

run_part() {  # NAME SECONDS COMMAND...: at most SECONDS, and never past the budget (15 s kept for the summary)
    local name=$1 want=$2
    shift 2
    local left=$((BUDGET - SECONDS - 15))
    local limit=$((want < left ? want : left))
    if [ "$limit" -lt 10 ]; then record "$name" "skipped: the budget is spent" 0; return; fi
    echo "== part $name (at most ${limit} s)" | tee -a "$LOG"
    echo "\$ $*" >>"$LOG"
    local start=$SECONDS rc
    timeout -k 5 "$limit" "$@" >>"$LOG" 2>&1
    rc=$?
    case $rc in
        0) record "$name" "done" $((SECONDS - start)) ;;
        124 | 137) record "$name" "stopped at its ${limit} s limit" $((SECONDS - start)) ;;
        *) record "$name" "failed with exit code $rc (see log.txt)" $((SECONDS - start)) ;;
    esac
}

CHECK=("$PY" scripts/gpu_check.py)
if [ "$DRY" = 1 ]; then
    TRAIN_SIZE=(--model smoke --batch 2 --seq-len 128 --steps 2)
    EVAL_ARGS=(--model smoke --lengths 256 512)
    HF_ARGS=(--shape toy --val-tokens 1200) HF_LENGTHS="[128,256]" HF_MAX_TOKENS=512 HF_DEVICE=cpu
else
    TRAIN_SIZE=(--model small --batch 8 --seq-len 2048 --steps 5)
    EVAL_ARGS=(--model tiny --lengths 65536 131072)
    HF_ARGS=(--shape llama-3.2-1b --val-tokens 70000) HF_LENGTHS="[16384,32768,65536]" HF_MAX_TOKENS=65536 HF_DEVICE=cuda
fi
# every encoding that trains (scripts/bench_variants.py): nope and the plain GPT first, the paths that
# loop over query blocks under autograd last, so that a slow one cannot keep the others from running
read -r -a TRAINED <<<"$("$PY" -c 'import sys; sys.path.insert(0, "scripts"); from bench_variants import names
slow = ("cope", "fox", "transformer_xl", "stick_breaking")
print(" ".join(sorted((n for n in names(training=True) if n != "nope"), key=lambda n: (n in slow, slow.index(n) if n in slow else 0))))' 2>>"$LOG")"

run_part 1a-sdpa 70 "${CHECK[@]}" train --attention sdpa --compile 0 "${TRAIN_SIZE[@]}" \
    --encodings nope plain-gpt "${TRAINED[@]}" --out "$RESULTS"
run_part 1b-flex 60 "${CHECK[@]}" train --attention flex --compile 0 "${TRAIN_SIZE[@]}" \
    --encodings nope alibi t5 sandwich --out "$RESULTS"
if [ "$DRY" = 1 ] && [ "${GPU_CHECK_DRY_COMPILE:-0}" != 1 ]; then
    record 1c-sdpa-compiled "skipped in a dry run" 0
    record 1d-flex-compiled "skipped in a dry run" 0
else
    run_part 1c-sdpa-compiled 90 "${CHECK[@]}" train --attention sdpa --compile 1 "${TRAIN_SIZE[@]}" \
        --encodings nope plain-gpt rope alibi --out "$RESULTS"
    run_part 1d-flex-compiled 45 "${CHECK[@]}" train --attention flex --compile 1 "${TRAIN_SIZE[@]}" \
        --encodings alibi t5 --out "$RESULTS"
fi
run_part 2-long-eval 95 "${CHECK[@]}" eval "${EVAL_ARGS[@]}" --encodings nope rope alibi t5 fire --out "$RESULTS"

if "$PY" -c 'import transformers, tokenizers' >/dev/null 2>&1; then
    run_part 3a-hf-model 40 "${CHECK[@]}" hf-model "$HF_DIR/model" "${HF_ARGS[@]}"
    run_part 3b-hf-eval 60 "${CHECK[@]}" hf-eval --out "$RESULTS" -- "hf=$HF_DIR/model" data=text_files \
        "data.train_files=[$HF_DIR/model/train.txt]" "data.val_files=[$HF_DIR/model/val.txt]" \
        "data.cache_dir=$HF_DIR/cache" "eval.lengths=$HF_LENGTHS" "eval.max_tokens=$HF_MAX_TOKENS" \
        logger=jsonl "device=$HF_DEVICE" "run_root=$HF_DIR/runs"
    find "$HF_DIR/runs" -name results.json -exec cp {} "$OUT_DIR/hf-results.json" \; 2>/dev/null
else
    record 3-hf "skipped: transformers or tokenizers does not import" 0
fi

timeout 30 "$PY" scripts/gpu_summary.py "$OUT_DIR" || echo "gpu_check: no summary (see $LOG)"
echo "gpu_check: ${SECONDS} s in all; output in $OUT_DIR/"
