#!/usr/bin/env bash
# Download, on a machine with network access, the wheels that benchmarks/gpu_check.sh installs on the
# GPU machine (Python 3.12, torch / torchvision / numpy / PIL / tqdm / lightning-utilities present; no
# network; no lightly). Only pure-Python wheels: lightly itself and, as a fallback, lightning-utilities
# (the one dependency lightly's loss / heads / transforms import). lightly's other declared dependencies
# (hydra-core, omegaconf, pytorch_lightning) are not imported by the benchmark; antlr4-python3-runtime has
# no wheel at all. Everything goes to benchmarks/wheels/ (git-ignored). The Fashion-MNIST idx files
# (30 MB), which the trainer-rate step of gpu_check.sh trains on, are packed into benchmarks/gpu_data/
# (git-ignored; see below). The device tool must carry both folders:
#
#     benchmarks/prepare_gpu_wheels.sh          # once, here
#     # device tool: run(command="bash benchmarks/gpu_check.sh",
#     #                  carry=["benchmarks/wheels", "benchmarks/gpu_data"], timeout_s=600)
#
# LIGHTLY_VERSION (default 1.6.0, the version of the CPU measurements) and PYTHON may be overridden.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
LIGHTLY_VERSION=${LIGHTLY_VERSION:-1.6.0}
DEST=benchmarks/wheels
mkdir -p "$DEST"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation py \
    --abi none --platform any -d "$DEST" "lightly==$LIGHTLY_VERSION" "lightning-utilities>=0.10"
ls -l "$DEST"

# Fashion-MNIST for gpu_check.sh's trainer-rate step: the four idx files (30 MB) into benchmarks/gpu_data/.
# From Debian's dataset-fashion-mnist package or clim's own download cache; failing both, clim downloads
# it (build_dataset("fmnist"), into ~/.cache/clim). Without them that step is skipped, so say so loudly.
FMNIST_DEST=benchmarks/gpu_data/fashion-mnist
find_fmnist() {
    for source in /usr/share/datasets/fashion-mnist "$HOME/.cache/clim/FashionMNIST/raw"; do
        if [ -e "$source/train-images-idx3-ubyte.gz" ] && [ -e "$source/t10k-labels-idx1-ubyte.gz" ]; then
            echo "$source"
            return
        fi
    done
}
source_dir=$(find_fmnist)
if [ -z "$source_dir" ]; then
    echo "no Fashion-MNIST here: downloading it with clim (or: apt-get install dataset-fashion-mnist)"
    PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -c \
        "from clim.data import build_dataset; print(len(build_dataset('fmnist', None, 'train')), 'images')" \
        || true
    source_dir=$(find_fmnist)
fi
if [ -n "$source_dir" ]; then
    mkdir -p "$FMNIST_DEST"
    cp "$source_dir"/*-ubyte.gz "$FMNIST_DEST/"
    echo "Fashion-MNIST from $source_dir -> $FMNIST_DEST"
else
    echo "WARNING: no Fashion-MNIST packed: gpu_check.sh will skip the trainer-rate step" >&2
fi
du -sh "$DEST" benchmarks/gpu_data 2>/dev/null || true
