#!/usr/bin/env bash
# HVT's mixed-precision GPU pipeline through timm's own scripts, in one run (benchmarks/README.md, "On a GPU").
#
#   TIMM_SCRIPTS=DIR bash benchmarks/gpu_run.sh            # on a CUDA GPU, within 8 minutes: benchmarks/results/gpu/
#   TIMM_SCRIPTS=DIR bash benchmarks/gpu_run.sh --quick    # the same steps at tiny sizes on the CPU (plumbing)
#
# DIR (or --timm-scripts DIR) holds timm's train.py, validate.py and benchmark.py of the installed timm's release
# (they are in timm's repository, not in its package); timm_version.py beside them (that release's timm/version.py)
# lets the script check the match. Steps: train.py on scikit-learn's digits (fp16 AMP with its GradScaler, bf16 AMP,
# each eager and --torchcompile), validate.py --amp on each checkpoint, benchmark.py --amp (bf16) for HVT, DeiT, PiT
# and the authors' implementation, the SDPA kernel under AMP, the achieved FLOP rate; then results.md, results.csv,
# goals.csv, steps.csv and env.json in the results folder (and, when $OUT is set, copies of them and of the logs
# there). A step that fails or runs out of time does not stop the others.
# Exit status: 0 every step ran and succeeded; 1 a step failed or timed out; 2 a usage or set-up error (nothing
# measured); 3 every step that ran succeeded but some could not run (named in steps.csv and results.md).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HELPER="$ROOT/benchmarks/gpu_run.py"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # the helper imports the benchmarks package
PY="${PYTHON:-python3}"
SCRIPTS="${TIMM_SCRIPTS:-}"
QUICK=0
RESULTS=""
WORK=""
BUDGET=""
EPOCHS=""
STEPS="train,sdpa,bench,flops,compile"
ARGS_TEXT="$*"

usage() {
    sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    cat <<'EOF'
Options:
  --timm-scripts DIR   timm's train.py, validate.py, benchmark.py (default: $TIMM_SCRIPTS)
  --quick              tiny sizes on the CPU: checks every step's plumbing, measures nothing
  --out DIR            results folder (default benchmarks/results/gpu, --quick: benchmarks/results/gpu_quick)
  --work DIR           scratch folder for data, checkpoints, logs (default: a new one under ${TMPDIR:-/tmp})
  --budget SECONDS     wall-clock budget of the steps (default 440 on a GPU: 8 minutes in all; --quick: 900)
  --epochs N           train.py epochs per run (default 6; --quick: 2)
  --steps LIST         which steps, comma-separated (default: all): train (train.py fp16 and bf16, eager, and
                       validate.py on their checkpoints), sdpa, bench, flops, compile (the --torchcompile runs)
Environment: PYTHON (default python3), TIMM_SCRIPTS, OUT (a folder to copy the result files to).
EOF
}

die() {
    echo "gpu_run.sh: $*" >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case "$1" in
        --timm-scripts) [ $# -ge 2 ] || die "--timm-scripts needs a folder"; SCRIPTS="$2"; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --out) [ $# -ge 2 ] || die "--out needs a folder"; RESULTS="$2"; shift 2 ;;
        --work) [ $# -ge 2 ] || die "--work needs a folder"; WORK="$2"; shift 2 ;;
        --budget) [ $# -ge 2 ] || die "--budget needs seconds"; BUDGET="$2"; shift 2 ;;
        --epochs) [ $# -ge 2 ] || die "--epochs needs a number"; EPOCHS="$2"; shift 2 ;;
        --steps) [ $# -ge 2 ] || die "--steps needs a list"; STEPS="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
case "$BUDGET$EPOCHS" in *[!0-9]*) die "--budget and --epochs take whole numbers" ;; esac
IFS=, read -ra STEP_LIST <<<"$STEPS"
for s in "${STEP_LIST[@]}"; do
    case "$s" in train|sdpa|bench|flops|compile) ;; *) die "--steps: no step group '$s' (train, sdpa, bench, flops, compile)" ;; esac
done
wanted() { [[ ",$STEPS," == *",$1,"* ]]; }

# ------------------------------------------------------------------------------------------------ configuration
if [ "$QUICK" = 1 ]; then
    DEVICE=cpu
    RESULTS="${RESULTS:-$ROOT/benchmarks/results/gpu_quick}"
    BUDGET="${BUDGET:-900}"
    EPOCHS="${EPOCHS:-2}"
    IMG=32
    LIMIT=160              # images per split
    TRAIN_MODEL=hvt_ti_2   # a tiny HVT: 4 blocks of width 64, patch 4
    MODEL_KWARGS=(--model-kwargs embed_dim=64 num_heads=2 depth=4 patch_size=4 img_size=32)
    BATCH=32
    VAL_BATCH=32
    WORKERS=1
    LR=3e-3
    COMPILE_BACKEND=eager  # dynamo's tracing without inductor's code generation: the flag's path, in seconds
    BENCH_MODELS=hvt_ti_1,hvt_s_4,deit_small_patch16_224,authors_hvt_s_4
    SMALL=96               # benchmark, SDPA and FLOP-rate models at 96x96 (36 patches)
    BENCH_ARGS=(--batch 2 --rounds 1 --warm 1 --iters 5 --img-size "$SMALL")
    SDPA_ARGS=(--model hvt_ti_1 --batch 2 --img-size "$SMALL")
    FLOPS_ARGS=(--batch 2 --iters 3 --matmul 512 --img-size "$SMALL")
    BENCH_BATCH=2
    BENCH_IMG="$SMALL"
else
    DEVICE=cuda
    RESULTS="${RESULTS:-$ROOT/benchmarks/results/gpu}"
    BUDGET="${BUDGET:-440}"   # + set-up and summary: within 8 minutes
    EPOCHS="${EPOCHS:-6}"
    IMG=224
    LIMIT=0
    TRAIN_MODEL=hvt_s_4
    MODEL_KWARGS=()
    BATCH=128              # 1437 training images: 11 updates an epoch
    VAL_BATCH=120          # 360 held-out images: 3 full batches (one shape for a compiled eval)
    WORKERS=8
    LR=1e-3
    COMPILE_BACKEND=inductor
    BENCH_MODELS=hvt_ti_1,hvt_s_1,hvt_s_4,deit_tiny_patch16_224,deit_small_patch16_224,pit_ti_224,pit_s_224
    BENCH_MODELS="$BENCH_MODELS,authors_hvt_ti_1,authors_hvt_s_1,authors_hvt_s_4"
    BENCH_ARGS=(--batch 256 --rounds 2 --warm 10 --iters 50)
    SDPA_ARGS=(--model hvt_s_4 --batch 256)
    FLOPS_ARGS=(--batch 256 --iters 30 --matmul 8192 --compile)
    BENCH_BATCH=256
    BENCH_IMG=224
fi

# ------------------------------------------------------------------------------------------------ preflight
command -v "$PY" >/dev/null 2>&1 || die "no Python interpreter '$PY' (set PYTHON)"
command -v timeout >/dev/null 2>&1 || die "the 'timeout' command (coreutils) is missing"
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$ROOT"   # timm_hvt from this checkout when it is not installed
export PYTHONUNBUFFERED=1
missing="$("$PY" - <<'EOF'
import importlib.util
need = ['torch', 'timm', 'timm_hvt', 'sklearn', 'PIL', 'yaml']
print(' '.join(n for n in need if importlib.util.find_spec(n) is None))
EOF
)" || die "'$PY' could not run"
[ -z "$missing" ] || die "Python modules missing for '$PY': $missing (yaml is pyyaml, PIL pillow, sklearn scikit-learn)"
if [ "$DEVICE" = cuda ]; then
    "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' \
        || die "no CUDA device visible to torch: run on a GPU machine, or use --quick for the CPU plumbing check"
fi

SCRIPTS_STATUS="not given"
if [ -n "$SCRIPTS" ]; then
    [ -d "$SCRIPTS" ] || die "--timm-scripts / TIMM_SCRIPTS: no folder $SCRIPTS"
    SCRIPTS="$(cd "$SCRIPTS" && pwd)"
    SCRIPTS_STATUS="$("$PY" "$HELPER" check-scripts "$SCRIPTS")" || exit 2
elif [ "$QUICK" = 0 ]; then
    die "timm's scripts are needed on a GPU: give --timm-scripts DIR or TIMM_SCRIPTS=DIR, the folder with train.py,
validate.py and benchmark.py of timm $("$PY" -c 'import timm; print(timm.__version__)') (see benchmarks/README.md)"
fi

if [ -z "$WORK" ]; then
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/timm-hvt-gpu-run.XXXXXX")"
elif [ -e "$WORK" ] && [ -n "$(ls -A "$WORK")" ]; then
    die "--work $WORK is not empty"
fi
mkdir -p "$WORK/logs" "$RESULTS"
WORK="$(cd "$WORK" && pwd)"
RESULTS="$(cd "$RESULTS" && pwd)"
if [ "$QUICK" = 1 ] && [ "$RESULTS" = "$ROOT/benchmarks/results/gpu_quick" ]; then
    echo '*' >"$RESULTS/.gitignore"   # a scratch folder: kept out of git
fi
rm -f "$RESULTS"/{env.json,results.md,results.csv,goals.csv,steps.csv}
rm -rf "$RESULTS/logs"
echo "step,status,seconds,detail" >"$WORK/steps.csv"
echo "gpu_run.sh: device $DEVICE, results $RESULTS, scratch $WORK, budget ${BUDGET}s, timm's scripts: $SCRIPTS_STATUS"

# ------------------------------------------------------------------------------------------------ steps
START=$SECONDS
FAILED=0
NOT_RUN=0

record() {  # step status seconds detail
    local detail="${4//\"/\'}"
    echo "$1,$2,$3,\"$detail\"" >>"$WORK/steps.csv"
    echo "== $1: $2 (${3}s) $4"
}

skip() {  # step reason
    NOT_RUN=1
    record "$1" "not run" 0 "$2"
}

step() {  # name max_seconds command... ; output in $WORK/logs/<name>.log
    local name="$1" max="$2" left rc t0 why
    shift 2
    left=$((BUDGET - (SECONDS - START)))
    [ "$name" != env ] || left=$((max + 1))   # env.json is always written: outside the budget
    if [ "$left" -lt 10 ]; then
        skip "$name" "the ${BUDGET}s budget was spent before this step (--steps runs it alone)"
        return 0
    fi
    why="its ${max}s limit"
    if [ "$max" -gt "$left" ]; then
        max="$left"
        why="what was left of the ${BUDGET}s budget"
    fi
    echo "== $name (at most ${max}s): $*"
    t0=$SECONDS
    rc=0
    timeout --kill-after=15 "$max" "$@" >"$WORK/logs/$name.log" 2>&1 || rc=$?
    if [ "$rc" = 0 ]; then
        record "$name" ok $((SECONDS - t0)) "logs/$name.log"
    elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        FAILED=1
        record "$name" "timed out" $((SECONDS - t0)) "stopped after ${max}s, $why; logs/$name.log"
    else
        FAILED=1
        record "$name" failed $((SECONDS - t0)) "exit $rc: $(tail -n 1 "$WORK/logs/$name.log" | cut -c1-200); logs/$name.log"
    fi
    tail -n 3 "$WORK/logs/$name.log" | sed 's/^/   | /'
    return 0
}

NO_SCRIPTS="no timm scripts folder (--timm-scripts DIR or TIMM_SCRIPTS=DIR): timm's train.py, validate.py and \
benchmark.py are not in the timm package"
RUNS_JSON="{"

train() {  # name amp_dtype compile(0/1)
    local name="$1" dtype="$2" compile="$3" extra=()
    RUNS_JSON+="\"$name\": {\"model\": \"$TRAIN_MODEL\", \"dtype\": \"$dtype\", \"compile\": $compile, \"batch\": $BATCH, \"img_size\": $IMG, \"val_batch\": $VAL_BATCH},"
    if [ -z "$SCRIPTS" ]; then
        skip "train_$name" "$NO_SCRIPTS"
        return 0
    fi
    local max=150
    if [ "$compile" = 1 ]; then
        extra=(--torchcompile "$COMPILE_BACKEND")
        max=240
    fi
    step "train_$name" "$max" \
        "$PY" "$HELPER" script "$SCRIPTS/train.py" --data-dir "$WORK/digits" --model "$TRAIN_MODEL" \
        "${MODEL_KWARGS[@]}" --num-classes 10 --img-size "$IMG" --crop-pct 1.0 --device "$DEVICE" \
        --amp --amp-dtype "$dtype" "${extra[@]}" --epochs "$EPOCHS" -b "$BATCH" --validation-batch-size "$VAL_BATCH" \
        --workers "$WORKERS" --opt adamw --lr "$LR" --weight-decay 0.05 --sched cosine --sched-on-updates \
        --warmup-epochs 1 --warmup-lr 1e-5 --scale 0.6 1.0 --hflip 0 --color-jitter 0 --smoothing 0.1 \
        --log-interval 1 --checkpoint-hist 1 --seed 0 --output "$WORK/train" --experiment "$name"
}

validate() {  # name amp_dtype
    local name="$1" dtype="$2" ckpt="$WORK/train/$1/model_best.pth.tar"
    if [ -z "$SCRIPTS" ]; then
        skip "validate_$name" "$NO_SCRIPTS"
        return 0
    fi
    if [ ! -f "$ckpt" ]; then
        skip "validate_$name" "train_$name left no checkpoint"
        return 0
    fi
    step "validate_$name" 60 "$PY" "$HELPER" script "$SCRIPTS/validate.py" --data-dir "$WORK/digits" --split val \
        --model "$TRAIN_MODEL" "${MODEL_KWARGS[@]}" --num-classes 10 --img-size "$IMG" --crop-pct 1.0 \
        --device "$DEVICE" --amp --amp-dtype "$dtype" -b "$VAL_BATCH" --workers "$WORKERS" --checkpoint "$ckpt" \
        --results-file "$WORK/validate_$name.json" --results-format json
}

QUICK_FLAG=()
[ "$QUICK" = 0 ] || QUICK_FLAG=(--quick)
step env 60 "$PY" "$HELPER" env "$RESULTS/env.json" --scripts "$SCRIPTS" --device "$DEVICE" \
    --command "bash benchmarks/gpu_run.sh $ARGS_TEXT" "${QUICK_FLAG[@]}"
NOT_SELECTED="not selected (--steps $STEPS)"
if wanted train || wanted compile; then
    step digits 120 "$PY" "$HELPER" digits "$WORK/digits" --img-size "$IMG" --limit "$LIMIT"
fi
if wanted train; then
    train fp16 float16 0
    train bf16 bfloat16 0
    validate fp16 float16
    validate bf16 bfloat16
else
    for s in train_fp16 train_bf16 validate_fp16 validate_bf16; do skip "$s" "$NOT_SELECTED"; done
fi
if wanted sdpa; then
    step sdpa 90 "$PY" "$HELPER" sdpa "$WORK/sdpa.json" --device "$DEVICE" "${SDPA_ARGS[@]}"
else
    skip sdpa "$NOT_SELECTED"
fi
if ! wanted bench; then
    skip bench "$NOT_SELECTED"
elif [ -n "$SCRIPTS" ]; then
    step bench 240 "$PY" "$HELPER" bench "$WORK/bench.jsonl" --scripts "$SCRIPTS" --models "$BENCH_MODELS" \
        --device "$DEVICE" --amp-dtype bfloat16 "${BENCH_ARGS[@]}"
else
    skip bench "$NO_SCRIPTS"
fi
if wanted flops; then
    step flops 180 "$PY" "$HELPER" flops "$WORK/flops.json" --device "$DEVICE" "${FLOPS_ARGS[@]}"
else
    skip flops "$NOT_SELECTED"
fi
if wanted compile; then
    train fp16_compile float16 1
    train bf16_compile bfloat16 1
    validate fp16_compile float16
    validate bf16_compile bfloat16
else
    for s in train_fp16_compile train_bf16_compile validate_fp16_compile validate_bf16_compile; do
        skip "$s" "$NOT_SELECTED"
    done
fi
RUNS_JSON="${RUNS_JSON%,}}"

# ------------------------------------------------------------------------------------------------ results
summary_rc=0
timeout 300 "$PY" "$HELPER" summarize "$WORK" "$RESULTS" --runs "$RUNS_JSON" --bench-batch "$BENCH_BATCH" \
    --bench-dtype bfloat16 --bench-img-size "$BENCH_IMG" >"$WORK/logs/summarize.log" 2>&1 || summary_rc=$?
cat "$WORK/logs/summarize.log"
cp "$WORK/steps.csv" "$RESULTS/steps.csv"
mkdir -p "$RESULTS/logs"
cp "$WORK"/logs/*.log "$RESULTS/logs/"
for d in "$WORK"/train/*/; do
    [ -f "$d/summary.csv" ] && cp "$d/summary.csv" "$RESULTS/logs/train_$(basename "$d")_summary.csv"
done
if [ -n "${OUT:-}" ]; then  # the device machine brings back at most 8 files from $OUT
    mkdir -p "$OUT"
    for f in env.json results.md results.csv goals.csv steps.csv; do
        [ -f "$RESULTS/$f" ] && cp "$RESULTS/$f" "$OUT/"
    done
    tar -czf "$OUT/logs.tar.gz" -C "$RESULTS" logs
fi

echo "gpu_run.sh: $((SECONDS - START))s, results in $RESULTS, scratch (data, checkpoints) in $WORK"
if [ "$summary_rc" != 0 ]; then
    echo "gpu_run.sh: the summary failed (exit $summary_rc): see $RESULTS/logs/summarize.log" >&2
    exit 1
fi
if [ "$FAILED" = 1 ]; then
    echo "gpu_run.sh: some steps failed or timed out: see $RESULTS/steps.csv" >&2
    exit 1
fi
if [ "$NOT_RUN" = 1 ]; then
    echo "gpu_run.sh: some steps could not run: see $RESULTS/steps.csv" >&2
    exit 3
fi
