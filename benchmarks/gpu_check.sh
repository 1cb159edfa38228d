#!/usr/bin/env bash
# Every GPU benchmark and check of the project, on one GPU, in <= 8.5 minutes (BUDGET_S = 510 s);
# results under $OUT.
#
# Most important first; each step has its own time limit (the table below), and the limits plus the
# set-up reserve add up to at most BUDGET_S (checked before anything runs):
#   1. throughput at 32 px, ResNet-18 small stem, batch 512, cifar10-shaped random data: ours MoCo v2,
#      ours CLIM (CutMix, random positives table), lightly (same precision), with the host syncs of 20
#      steps counted by source line and a torch.profiler table of 10 steps
#   2. resume on CUDA: a short trainer run (fmnist-mini, deterministic) killed inside its second epoch
#      and run again must finish with the uninterrupted run's tensors (benchmarks/resume_check.py)
#   3. benchmarks/selection.py --device cuda --n 1281167 --m 10000 (torch backend without faiss-gpu)
#   4. the large-data path: 224 px ResNet-50 on a folder of random JPEGs, ours with data.decode=auto
#      (nvJPEG on the GPU) next to lightly
#   5. the trainer itself: `clim pretrain --preset mocov2-fmnist --set train.batch_size=512`, images/s
#      of its second epoch, next to lightly's MoCo v2 example as published (fp32) on the same
#      Fashion-MNIST images (benchmarks/gpu_data, packed by prepare_gpu_wheels.sh)
#   6. variants of step 1: NCHW (train.channels_last=false: split-BN as one cuDNN call on the free
#      [N/s, s*C, H, W] view where a pass holds one view, the grouped op otherwise), and NCHW without
#      batched views (every pass one cuDNN call)
#   7. bf16 autocast vs float32: the loss curves of the same 100 steps (benchmarks/amp_curve.py);
#      then the ops of one step on the real CUDA path, split-BN vs plain BN (benchmarks/op_count.py,
#      the CPU proxy of BENCHMARKS.md measured where it stands for)
#   8. the CUDA-only tests of tests/ (-k 'cuda or gpu')
#   9. train.compile=true for ours MoCo v2 (its set-up + warm-up line is the compile time), only when
#      the steps before left COMPILE_NEEDS seconds of the budget unused (they usually end early)
#
# The GPU machine has torch / torchvision but no lightly, faiss, Fashion-MNIST or network: run
# benchmarks/prepare_gpu_wheels.sh here first, then through the device tool
#     run(command="bash benchmarks/gpu_check.sh", carry=["benchmarks/wheels", "benchmarks/gpu_data"],
#         timeout_s=600)
# A failing step does not stop the others; summary.txt lists each step's exit status (124 = stopped
# at its limit). At most 8 files are written to $OUT. `bash benchmarks/gpu_check.sh --plan` prints
# every step (limit, output file, condition, command line) and exits without running or writing
# anything: it needs no GPU (tests/test_scripts_smoke.py parses each printed command).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out/gpu_check}
PY=${PYTHON:-python3}
BUDGET=${BUDGET_S:-510}  # seconds for the whole script, set-up included
SETUP_RESERVE=25         # environment report and the pip installs before step 1
export PYTHONUNBUFFERED=1
THROUGHPUT="$PY benchmarks/throughput.py --device cuda"

# name:limit_s, in the order they run; a step's limit is also cut to what is left of the budget.
LIMITS=(throughput-32px:80 resume-cuda:60 selection:50 folder-gpu-decode:70 fmnist-trainer:45
        fmnist-lightly:30 nchw:30 nchw-unbatched:25 amp-curve:30 op-count:20 cuda-tests:45)
COMPILE_NEEDS=100  # s: cold Inductor compiles of both encoders' graphs; run only if the steps above left that
planned=$SETUP_RESERVE
for entry in "${LIMITS[@]}"; do planned=$((planned + ${entry#*:})); done
PLAN=false
[ "${1:-}" = "--plan" ] && PLAN=true
if ((planned > BUDGET)); then
    echo "gpu_check: the step limits add up to ${planned}s, over the ${BUDGET}s budget" >&2
    exit 2
fi
WHEN=""  # --plan: the condition of the steps that follow (empty: always run)
if $PLAN; then
    echo "gpu_check plan (nothing is run): budget ${BUDGET}s, set-up ${SETUP_RESERVE}s, set-up and step limits ${planned}s"
    echo "format: step NAME LIMIT OUTPUT_FILE [CONDITION]: COMMAND (shell-quoted)"
else
    mkdir -p "$OUT"
fi

log() { echo "[gpu_check +${SECONDS}s] $*" | tee -a "$OUT/summary.txt"; }

limit_of() {
    local entry
    for entry in "${LIMITS[@]}"; do
        [ "${entry%%:*}" = "$1" ] && echo "${entry#*:}" && return
    done
    echo "gpu_check: no limit for step $1" >&2
    exit 2
}

# step NAME OUTPUT_FILE COMMAND...: run with NAME's limit (never past the budget), append output.
step() {
    local name=$1 file=$2 limit
    limit=$(limit_of "$name") || exit 2
    shift 2
    if $PLAN; then
        printf 'step %s %ss %s%s:' "$name" "$limit" "$file" "${WHEN:+ [$WHEN]}"
        printf ' %q' "$@"
        printf '\n'
        return
    fi
    local left=$((BUDGET - SECONDS))
    if ((left < 15)); then
        log "$name: skipped, budget spent"
        return
    fi
    ((limit > left)) && limit=$left
    log "$name: start (limit ${limit}s): $*"
    echo "\$ $*" >>"$OUT/$file"
    timeout --kill-after=5 "$limit" "$@" >>"$OUT/$file" 2>&1
    local rc=$?
    log "$name: rc=$rc; $(grep -E 'ratio_vs_lightly|epoch time|select_positives:|plain faiss|images/s of epoch|host syncs in|resume_check:|amp_curve:|warm-up steps|passed|failed' "$OUT/$file" | tail -4 | tr '\n' ' ')"
}

# --- environment and installs (no network: carried wheels only) -----------------------------------
$PLAN || {
    date -Is
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
    lscpu 2>/dev/null | grep -E '^(Model name|CPU\(s\)):'
    "$PY" -c "import sys, torch, torchvision; print('python', sys.version.split()[0], '| torch', torch.__version__, '| torchvision', torchvision.__version__, '| cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
    wheels=(benchmarks/wheels/lightly-*.whl)
    "$PY" -c "import lightning_utilities" 2>/dev/null || wheels+=(benchmarks/wheels/lightning_utilities-*.whl)
    if [ -e "${wheels[0]}" ]; then
        "$PY" -m pip install --quiet --no-index --no-deps --no-compile "${wheels[@]}"
    else
        echo "no lightly wheel in benchmarks/wheels: run benchmarks/prepare_gpu_wheels.sh and carry benchmarks/wheels"
    fi
    "$PY" -m pip install --quiet --no-index --no-deps --no-build-isolation -e . \
        || echo "editable install failed: using PYTHONPATH"
    "$PY" -c "import lightly; print('lightly', lightly.__version__)" 2>&1
} >"$OUT/environment.txt" 2>&1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
$PLAN || log "environment: $(grep -m1 -E 'NVIDIA|H100|H200' "$OUT/environment.txt"); step limits ${planned}s of ${BUDGET}s"

# --- 1. throughput, 32 px ----------------------------------------------------------------------------
SMALL=(--dataset cifar10-random --backbone resnet18 --small-stem true --image-size 32 --batch-size 512
       --steps 50 --warmup 10)
step throughput-32px throughput_32px.txt $THROUGHPUT "${SMALL[@]}" --sync-debug --profile 10

# --- 2. resume on CUDA: killed inside an epoch, run again ----------------------------------------------
# (cuBLAS is deterministic only with a fixed workspace configuration)
step resume-cuda checks.txt env CUBLAS_WORKSPACE_CONFIG=:4096:8 "$PY" benchmarks/resume_check.py --out /tmp/clim-resume -- --preset mocov2-fmnist \
    --set data.name=fmnist-mini --set data.num_workers=2 --set train.device=cuda --set train.batch_size=256 \
    --set train.epochs=2 --set train.knn_every=0 --set train.deterministic=true \
    --set train.checkpoint_every_minutes=0.000001 --set train.log_every=10

# --- 3. selection at ImageNet scale ------------------------------------------------------------------
step selection selection.txt "$PY" benchmarks/selection.py --device cuda --n 1281167 --m 10000 --repeat 2

# --- 4. the large-data path: JPEG folder, 224 px, ResNet-50 ------------------------------------------
FOLDER=(--dataset jpeg-folder --root /tmp/clim-jpegs --n 8192 --backbone resnet50 --image-size 224
        --batch-size 128 --steps 20 --warmup 5)
step folder-gpu-decode throughput_folder.txt $THROUGHPUT "${FOLDER[@]}" --variants ours-mocov2,lightly \
    --augment device --decode auto

# --- 5. the trainer on Fashion-MNIST, next to lightly's published example ----------------------------
FMNIST=benchmarks/gpu_data/fashion-mnist
WHEN="only if $FMNIST/train-images-idx3-ubyte.gz exists"
if $PLAN || [ -e "$FMNIST/train-images-idx3-ubyte.gz" ]; then
    step fmnist-trainer fmnist.txt "$PY" benchmarks/trainer_rate.py --out /tmp/clim-fmnist -- \
        --preset mocov2-fmnist --set "data.root=$PWD/$FMNIST" --set train.batch_size=512 --set train.epochs=2 \
        --set train.knn_every=0 --set train.device=cuda
    step fmnist-lightly fmnist.txt $THROUGHPUT --dataset fmnist --root "$PWD/$FMNIST" --batch-size 512 \
        --steps 40 --warmup 5 --variants lightly --lightly-precision fp32
else
    log "fmnist: no Fashion-MNIST in $FMNIST (run benchmarks/prepare_gpu_wheels.sh and carry benchmarks/gpu_data): skipped"
fi
WHEN=""

# --- 6. NCHW split-BN (one cuDNN call on the [N/s, s*C, H, W] view) ------------------------------------
step nchw throughput_32px_variants.txt $THROUGHPUT "${SMALL[@]}" --steps 30 --variants ours-mocov2,ours-clim \
    --set train.channels_last=false
step nchw-unbatched throughput_32px_variants.txt $THROUGHPUT "${SMALL[@]}" --steps 30 --variants ours-mocov2,ours-clim \
    --set train.channels_last=false --set train.batch_views=false

# --- 7. bf16 vs fp32 loss curves over the same 100 steps ---------------------------------------------
step amp-curve checks.txt "$PY" benchmarks/amp_curve.py --device cuda --steps 100
step op-count checks.txt "$PY" benchmarks/op_count.py --device cuda --foreach

# --- 8. the CUDA-only tests (the rest of the suite runs on CPU in CI) --------------------------------
step cuda-tests checks.txt "$PY" -m pytest -q -p no:cacheprovider --continue-on-collection-errors \
    -k "cuda or gpu" tests

# --- 9. compiled encoders, only in the time the limits above left unused (the compile time is the
#        set-up + warm-up line against step 1's) -------------------------------------------------------
if $PLAN; then
    LIMITS+=("compile:$COMPILE_NEEDS")
    WHEN="only if >= ${COMPILE_NEEDS}s of the budget are left; limit: what is left"
elif ((BUDGET - SECONDS >= COMPILE_NEEDS)); then
    LIMITS+=("compile:$((BUDGET - SECONDS))")
fi
if $PLAN || ((BUDGET - SECONDS >= COMPILE_NEEDS)); then
    step compile throughput_32px_variants.txt $THROUGHPUT "${SMALL[@]}" --steps 30 --variants ours-mocov2 \
        --set train.compile=true
else
    log "compile: skipped, $((BUDGET - SECONDS))s left of the ${COMPILE_NEEDS}s it needs"
fi
$PLAN && exit 0
log "done in ${SECONDS}s"
