#!/usr/bin/env bash
# Download, on a machine with network access, the wheels that benchmarks/gpu_check.sh installs on the
# GPU machine (Python 3.12, torch / torchvision / numpy / PIL / tqdm / lightning-utilities present; no
# network; no lightly). Only pure-Python wheels: lightly itself and, as a fallback, lightning-utilities
# (the one dependency lightly's loss / heads / transforms import). lightly's other declared dependencies
# (hydra-core, omegaconf, pytorch_lightning) are not imported by the benchmark; antlr4-python3-runtime has
# no wheel at all. Everything goes to benchmarks/wheels/ (git-ignored). The Fashion-MNIST idx files
# (30 MB), which the ablation probe of gpu_check.sh trains on, are copied to benchmarks/gpu_data/
# (git-ignored) when this machine has them. The device tool must carry both folders:
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

# Fashion-MNIST for the ablation probe (optional: without it the probe uses the embedded subset).
for source in /usr/share/datasets/fashion-mnist "$HOME/.cache/clim/FashionMNIST/raw"; do
    if [ -e "$source/train-images-idx3-ubyte.gz" ]; then
        mkdir -p benchmarks/gpu_data/fashion-mnist
        cp "$source"/*-ubyte.gz benchmarks/gpu_data/fashion-mnist/
        break
    fi
done
du -sh "$DEST" benchmarks/gpu_data 2>/dev/null || true
