#!/usr/bin/env bash
# Download, on a machine with network access, the wheels that benchmarks/gpu_check.sh installs on the
# GPU machine (Python 3.12, torch / torchvision / numpy / PIL / tqdm / lightning-utilities present; no
# network; no lightly). Only pure-Python wheels: lightly itself and, as a fallback, lightning-utilities
# (the one dependency lightly's loss / heads / transforms import). lightly's other declared dependencies
# (hydra-core, omegaconf, pytorch_lightning) are not imported by the benchmark; antlr4-python3-runtime has
# no wheel at all. Everything goes to benchmarks/wheels/ (git-ignored), which the device tool must carry:
#
#     benchmarks/prepare_gpu_wheels.sh          # once, here
#     # device tool: run(command="bash benchmarks/gpu_check.sh", carry=["benchmarks/wheels"])
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
du -sh "$DEST"
