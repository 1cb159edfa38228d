#!/usr/bin/env bash
# Every GPU benchmark of the project, on one GPU, in <= 8 minutes; results under $OUT.
#
#   1. throughput at 32 px, ResNet-18 small stem, batch 512, cifar10-shaped random data:
#      ours MoCo v2, ours CLIM (CutMix, random positives table), lightly (same precision), with the
#      host syncs of 20 steps counted by source line and a torch.profiler table of 10 steps;
#      1b the same two of ours with train.compile=true, 1c ours MoCo v2 without prefetching
#   2. benchmarks/selection.py --device cuda --n 1281167 --m 10000 (torch backend without faiss-gpu)
#   3. the large-data path: 224 px ResNet-50 on a folder of random JPEGs, ours with data.decode=auto
#      (nvJPEG on the GPU) next to lightly; 3b ours with data.decode=cpu (workers decode)
#   4. the trainer itself: `clim pretrain --preset mocov2-fmnist --set train.batch_size=512`, images/s
#      of its second epoch, next to lightly's MoCo v2 example as published (fp32) on the same
#      Fashion-MNIST images (needs benchmarks/gpu_data, see prepare_gpu_wheels.sh)
#   5. lightly's example as published (fp32) at 32 px, for reference
#   6. the CUDA-only tests of tests/ (-k 'cuda or gpu')
#
# The GPU machine has torch / torchvision but no lightly, faiss, Fashion-MNIST or network: run
# benchmarks/prepare_gpu_wheels.sh here first, then through the device tool
#     run(command="bash benchmarks/gpu_check.sh", carry=["benchmarks/wheels", "benchmarks/gpu_data"],
#         timeout_s=600)
# Every step has its own time limit and a failing step does not stop the others; summary.txt
# lists each step's exit status (124 = stopped at its limit). At most 8 files are written to $OUT.
# The steps run in order of importance: the last ones are skipped when the budget is spent.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out/gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
BUDGET=${BUDGET_S:-470}  # seconds for the whole script (the target is 8 minutes)
export PYTHONUNBUFFERED=1
THROUGHPUT="$PY benchmarks/throughput.py --device cuda"

log() { echo "[gpu_check +${SECONDS}s] $*" | tee -a "$OUT/summary.txt"; }

# step NAME LIMIT_S OUTPUT_FILE COMMAND...: run with a time limit (never past the budget), append output.
step() {
    local name=$1 limit=$2 file=$3
    shift 3
    local left=$((BUDGET - SECONDS))
    if ((left < 15)); then
        log "$name: skipped, budget spent"
        return
    fi
    ((limit > left)) && limit=$left
    log "$name: start (limit ${limit}s): $*"
    echo "\$ $*" >>"$OUT/$file"
    timeout --kill-after=10 "$limit" "$@" >>"$OUT/$file" 2>&1
    local rc=$?
    log "$name: rc=$rc; $(grep -E 'ratio_vs_lightly|epoch time|select_positives:|plain faiss|images/s of epoch|host syncs in' "$OUT/$file" | tail -4 | tr '\n' ' ')"
}

# --- environment and installs (no network: carried wheels only) -----------------------------------
{
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
log "environment: $(grep -m1 -E 'NVIDIA|H100|H200' "$OUT/environment.txt")"

# --- 1. throughput, 32 px ----------------------------------------------------------------------------
SMALL=(--dataset cifar10-random --backbone resnet18 --small-stem true --image-size 32 --batch-size 512
       --steps 50 --warmup 10)
step throughput-32px 110 throughput_32px.txt $THROUGHPUT "${SMALL[@]}" --sync-debug --profile 10

# --- 4. the trainer on Fashion-MNIST, next to lightly's published example ----------------------------
FMNIST=benchmarks/gpu_data/fashion-mnist
if [ -e "$FMNIST/train-images-idx3-ubyte.gz" ]; then
    step fmnist-trainer 70 fmnist.txt "$PY" benchmarks/trainer_rate.py --out /tmp/clim-fmnist -- \
        --preset mocov2-fmnist --set "data.root=$PWD/$FMNIST" --set train.batch_size=512 --set train.epochs=2 \
        --set train.knn_every=0 --set train.device=cuda
    step fmnist-lightly 50 fmnist.txt $THROUGHPUT --dataset fmnist --root "$PWD/$FMNIST" --batch-size 512 \
        --steps 40 --warmup 5 --variants lightly --lightly-precision fp32
else
    log "fmnist: no Fashion-MNIST in $FMNIST (run benchmarks/prepare_gpu_wheels.sh where it is installed): skipped"
fi

# --- 2. selection at ImageNet scale ------------------------------------------------------------------
step selection 100 selection.txt "$PY" benchmarks/selection.py --device cuda --n 1281167 --m 10000 --repeat 2

# --- 3. the large-data path: JPEG folder, 224 px, ResNet-50 ------------------------------------------
FOLDER=(--dataset jpeg-folder --root /tmp/clim-jpegs --n 8192 --backbone resnet50 --image-size 224
        --batch-size 128 --steps 20 --warmup 5)
step folder-gpu-decode 110 throughput_folder.txt $THROUGHPUT "${FOLDER[@]}" --variants ours-mocov2,lightly \
    --augment device --decode auto

# --- 1b. compiled encoders, 1c. no prefetching ---------------------------------------------------------
step throughput-32px-compile 110 throughput_32px_variants.txt $THROUGHPUT "${SMALL[@]}" \
    --variants ours-mocov2,ours-clim --set train.compile=true
step throughput-32px-noprefetch 35 throughput_32px_variants.txt $THROUGHPUT "${SMALL[@]}" \
    --variants ours-mocov2 --prefetch false

# --- 3b. workers decode (the CPU path) -----------------------------------------------------------------
step folder-cpu-decode 45 throughput_folder.txt $THROUGHPUT "${FOLDER[@]}" --variants ours-mocov2 \
    --augment device --decode cpu

# --- 5. lightly as published (fp32), 32 px -----------------------------------------------------------
step lightly-fp32 40 throughput_32px.txt $THROUGHPUT "${SMALL[@]}" --variants lightly --lightly-precision fp32
# --- 6. the CUDA-only tests (the rest of the suite runs on CPU in CI) --------------------------------
step cuda-tests 60 cuda_tests.txt "$PY" -m pytest -q -p no:cacheprovider --continue-on-collection-errors \
    -k "cuda or gpu" tests
log "done in ${SECONDS}s"
