#!/usr/bin/env bash
# Every GPU benchmark of the project, on one GPU, in <= 8 minutes; results under $OUT.
#
#   1. throughput at 32 px, ResNet-18 small stem, batch 512, cifar10-shaped random data:
#      ours MoCo v2, ours CLIM (CutMix, random positives table), lightly (same precision)
#   2. benchmarks/selection.py --device cuda --n 1281167 --m 10000 (torch backend without faiss-gpu)
#   3. the large-data path (issue 5): 224 px ResNet-50 on a folder of random JPEGs, ours with
#      data.augment=device (auto on CUDA) and =loader, and lightly
#   4. lightly's example as published (fp32) at 32 px, for reference
#   5. `clim ablate --scale gpu`, if that command exists: the whole matrix (18 variants, 3/2 seeds,
#      each run sized for <= 8 min) cannot fit, so this is a probe that times the preset's most
#      expensive headline run (full CLIM, 3 epochs: one with positives) in whatever time is left;
#      the matrix listing (--dry-run) and the run's log come back
#
# The GPU machine has torch / torchvision but no lightly, faiss, Fashion-MNIST or network: run
# benchmarks/prepare_gpu_wheels.sh here first, then through the device tool
#     run(command="bash benchmarks/gpu_check.sh", carry=["benchmarks/wheels", "benchmarks/gpu_data"],
#         timeout_s=600)
# Every step has its own time limit and a failing step does not stop the others; summary.txt
# lists each step's exit status (124 = stopped at its limit). At most 8 files are written to $OUT.
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
    log "$name: rc=$rc; $(grep -E 'ratio_vs_lightly|epoch time|select_positives:|plain faiss' "$OUT/$file" | tail -3 | tr '\n' ' ')"
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
step throughput-32px 150 throughput_32px.txt $THROUGHPUT --dataset cifar10-random --backbone resnet18 \
    --small-stem true --image-size 32 --batch-size 512 --steps 50 --warmup 10

# --- 2. selection at ImageNet scale ------------------------------------------------------------------
step selection 150 selection.txt "$PY" benchmarks/selection.py --device cuda --n 1281167 --m 10000 --repeat 2

# --- 3. the large-data path: JPEG folder, 224 px, ResNet-50 ------------------------------------------
FOLDER=(--dataset jpeg-folder --root /tmp/clim-jpegs --n 8192 --backbone resnet50 --image-size 224
        --batch-size 128 --steps 20 --warmup 5)
step folder-device 120 throughput_folder.txt $THROUGHPUT "${FOLDER[@]}" --variants ours-mocov2,lightly --augment device
step folder-loader 60 throughput_folder.txt $THROUGHPUT "${FOLDER[@]}" --variants ours-mocov2 --augment loader

# --- 4. lightly as published (fp32), 32 px -----------------------------------------------------------
step lightly-fp32 60 throughput_32px.txt $THROUGHPUT --dataset cifar10-random --backbone resnet18 \
    --small-stem true --image-size 32 --batch-size 512 --steps 50 --warmup 10 --variants lightly --lightly-precision fp32

# --- 5. ablation, if the command exists --------------------------------------------------------------
if "$PY" -m clim ablate --help 2>/dev/null | grep -q -- "--scale"; then
    FMNIST=benchmarks/gpu_data/fashion-mnist
    if [ -e "$FMNIST/train-images-idx3-ubyte.gz" ] || [ -e "$FMNIST/train-images-idx3-ubyte" ]; then
        DATA=(--set "data.root=$PWD/$FMNIST")
    else
        DATA=(--set data.name=fmnist-mini)  # no Fashion-MNIST carried: the embedded 10k subset
    fi
    step ablate-matrix 30 ablate.txt "$PY" -m clim ablate --scale gpu --out /tmp/clim-ablate "${DATA[@]}" --dry-run
    step ablate-probe $((BUDGET - SECONDS - 10)) ablate.txt "$PY" -m clim ablate --scale gpu --out /tmp/clim-ablate \
        --only clim --seeds-main 1 --set train.epochs=3 "${DATA[@]}"
    run_log=$(find /tmp/clim-ablate -name ablate.log 2>/dev/null | head -1)
    [ -n "$run_log" ] && cp "$run_log" "$OUT/ablate_probe_run.log"
    results=$(find /tmp/clim-ablate -maxdepth 1 -name RESULTS.md 2>/dev/null | head -1)
    [ -n "$results" ] && cat "$results" >>"$OUT/ablate.txt"
else
    log "ablate: 'clim ablate --scale' not available in this version: skipped"
fi
log "done in ${SECONDS}s"
