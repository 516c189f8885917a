#!/usr/bin/env bash
# Every GPU figure the README and `nepa estimate` need, in one run of at most ~9 minutes on one H100/H200
# (benchmarks/README.md, "The GPU suite"). From the repository root:
#
#   bash benchmarks/gpu_suite.sh                 # the GPU machine (carried wheels in .whl/ are installed first)
#   bash benchmarks/gpu_suite.sh --smoke         # CPU, tiny sizes: the same sections end to end (a slow test)
#   bash benchmarks/gpu_suite.sh --only engine,e2e    # some sections (a rerun of what was skipped or failed)
#
# Sections, most needed first; one that would not fit in what is left of NEPA_SUITE_BUDGET_S (default 540 s) is
# skipped, and the summary says so:
#   step_b    step throughput + MFU, NEPA ViT-B/14 (GeLU, SwiGLU) vs timm ViT-B/14, batch 128 and 256, eager, and
#             the SDPA kernels the causal path runs (step_throughput.py)
#   step_l    the same for ViT-L/14 at batch 128, eager
#   data      2,000 realistic JPEGs in ImageNet layout, prepared into shards (gpu_data.py)
#   engine    `nepa pretrain` ViT-B 50 steps, ZeRO 2, bf16, EMA, checkpoint at 25, SIGTERM at 35, resume, finish,
#             against an uninterrupted run (engine_resume.py)
#   e2e       end to end (the loader, 15 workers) vs model only (end_to_end.py)
#   zero      peak memory per ZeRO stage 0-3, ViT-L at micro-batch 32 (zero_memory.py)
#   compiled  step throughput of B compiled (regional: each block), batch 128 and 256, and the first compiled
#             step of a fresh process with a cold and a warm inductor cache
# Results: results/benchmarks/*_{cuda|cpu}_*.{json,csv} as each script writes them, plus suite_{stamp}.log and
# suite_{stamp}.md (the summary). Where $OUT is set (the device tool), they are also packed into
# $OUT/gpu_results.tgz, with the log and summary beside it.
set -uo pipefail
cd "$(dirname "$0")/.."

SMOKE=0
ONLY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) SMOKE=1 ;;
        --only) ONLY=",$2,"; shift ;;
        *) echo "usage: bash benchmarks/gpu_suite.sh [--smoke] [--only section,...]" >&2; exit 2 ;;
    esac
    shift
done

if compgen -G ".whl/*.whl" >/dev/null; then  # wheels carried to a machine without a registry (gpu_wheels.sh)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/nepa-site \
        .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/nepa-site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
RESULTS=${NEPA_SUITE_RESULTS:-results/benchmarks}
WORK=${NEPA_SUITE_WORK:-$(mktemp -d /tmp/nepa-suite.XXXXXX)}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$RESULTS" "$WORK"
LOG="$RESULTS/suite_${STAMP}.log"
SUMMARY="$RESULTS/suite_${STAMP}.md"
DEADLINE=$((SECONDS + ${NEPA_SUITE_BUDGET_S:-540}))
touch "$WORK/start"

if [ $SMOKE = 1 ]; then
    DEV=(--device cpu)
    export CUDA_VISIBLE_DEVICES="" DS_ACCELERATOR=cpu OMP_NUM_THREADS=1
    B=(nepa-tiny nepa-tiny-swiglu timm-tiny); L=(nepa-tiny timm-tiny); BATCHES=(4); LBATCH=4
    STEP=(--steps 1 --rounds 1 --warmup 1 --threads 1)
    IMAGES=40; ENGINE=(--size tiny --steps 6 --checkpoint-every 3 --signal-at 4 --micro-batch 8 --workers 1)
    E2E=(--model nepa-tiny --batch 8 --row-steps 1 --rows 2 --workers 1); ZERO=(--model nepa-tiny --batch 4 --steps 1)
    STARTS=(--starts nepa-tiny --start-scopes blocks)
else
    DEV=(--device cuda)
    B=(nepa-base nepa-base-swiglu timm-base); L=(nepa-large nepa-large-swiglu timm-large); BATCHES=(128 256); LBATCH=128
    STEP=()
    IMAGES=2000; ENGINE=(--size base --steps 50 --checkpoint-every 25 --signal-at 35 --micro-batch 128)
    E2E=(--model nepa-base-swiglu --batch 128 --row-steps 10 --rows 3 --workers 15); ZERO=(--model nepa-large --batch 32 --steps 2)
    STARTS=(--starts nepa-base --start-scopes blocks)
fi

declare -a DONE=()
section() {  # section NAME SECONDS_NEEDED COMMAND...: run it if asked for and if it fits in the time left
    local name=$1 need=$2 left status start
    shift 2
    if [ -n "$ONLY" ] && [[ "$ONLY" != *",$name,"* ]]; then return 0; fi
    left=$((DEADLINE - SECONDS))
    if [ $SMOKE = 0 ] && [ "$left" -lt "$need" ]; then
        DONE+=("| $name | SKIPPED: $left s left, it needs ~$need s | |")
        echo "== $name: SKIPPED ($left s left, needs ~$need s)" | tee -a "$LOG"
        return 0
    fi
    echo "== $name: $* ($left s left)" | tee -a "$LOG"
    start=$SECONDS
    timeout --signal=TERM --kill-after=20 "$((left > 30 ? left : 30))" "$@" 2>&1 | tee -a "$LOG"
    status=${PIPESTATUS[0]}
    DONE+=("| $name | exit $status | $((SECONDS - start)) s |")
    echo "== $name: exit $status after $((SECONDS - start)) s" | tee -a "$LOG"
}

{
    echo "suite $STAMP, smoke=$SMOKE, $(hostname), git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv 2>/dev/null
    $PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
} 2>&1 | tee -a "$LOG"

section step_b 120 $PY benchmarks/step_throughput.py "${DEV[@]}" --models "${B[@]}" --batch "${BATCHES[@]}" \
    --compile off "${STEP[@]}" --out "$RESULTS"
section step_l 60 $PY benchmarks/step_throughput.py "${DEV[@]}" --models "${L[@]}" --batch $LBATCH --compile off \
    --no-sdpa-check "${STEP[@]}" --out "$RESULTS"
section data 60 $PY benchmarks/gpu_data.py "$WORK/data" --images $IMAGES
section engine 150 $PY benchmarks/engine_resume.py "${DEV[@]}" --data "$WORK/data" "${ENGINE[@]}" --out "$RESULTS"
if [ -d "$WORK/data/shards/imagenet/train" ]; then
    section e2e 100 $PY benchmarks/end_to_end.py "${DEV[@]}" --split "$WORK/data/shards/imagenet/train" "${E2E[@]}" \
        --out "$RESULTS"
else
    DONE+=("| e2e | SKIPPED: no prepared data (the data section did not run) | |")
fi
if $PY benchmarks/end_to_end.py --help 2>/dev/null | grep -q -- "--decode"; then  # the GPU decode path (data.decode)
    section e2e_gpu_decode 100 $PY benchmarks/end_to_end.py "${DEV[@]}" --split "$WORK/data/shards/imagenet/train" \
        "${E2E[@]}" --decode gpu --out "$RESULTS"
else  # HOOK: end_to_end.py learns --decode when the GPU decode path lands on main
    DONE+=("| e2e_gpu_decode | not run: end_to_end.py has no --decode (the GPU decode path is not on this branch) | |")
fi
section zero 100 $PY benchmarks/zero_memory.py "${DEV[@]}" "${ZERO[@]}" --no-search --out "$RESULTS"
section compiled 200 $PY benchmarks/step_throughput.py "${DEV[@]}" --models "${B[@]}" --batch "${BATCHES[@]}" \
    --compile on --compile-scope blocks --no-sdpa-check "${STEP[@]}" "${STARTS[@]}" --out "$RESULTS"

{
    echo "# GPU suite $STAMP (smoke: $SMOKE)"
    echo
    echo "| section | result | time |"
    echo "|---|---|---|"
    printf '%s\n' "${DONE[@]}"
    echo
    echo "Targets and ratios, as the scripts printed them:"
    echo
    grep -hE "meets|MISSES|resumed vs reference|end to end / model only" "$LOG" | sed 's/^/- /'
    echo
    echo "Files: $(find "$RESULTS" -maxdepth 1 -newer "$WORK/start" -type f -printf '%f ' | sort)"
} > "$SUMMARY"
cat "$SUMMARY"
if [ -n "${OUT:-}" ]; then
    find "$RESULTS" -maxdepth 1 -newer "$WORK/start" -type f -printf '%f\n' | tar -czf "$OUT/gpu_results.tgz" -C "$RESULTS" -T -
    cp "$LOG" "$SUMMARY" "$OUT/"
fi
