#!/usr/bin/env bash
# Pack what an offline GPU machine (the lent H200) lacks, as files to carry there with the tree.
# Run from the project root on a machine with PyPI access:  bench/device-pack.sh
# Fills ./.device/ (git-ignored through .git/info/exclude), within the 64 MiB a device call carries:
#   .device/flashinfer.txz  flashinfer-python (newest release, as CI installs; FI_VERSION pins one), without the
#                           CUDA sources of kernels the harness never builds (*.cu outside data/; data/csrc
#                           keeps only nv_internal, the FP4 quantization sources), xz-compressed
#   .device/wheels/         apache-tvm-ffi (flashinfer's compiled dependency)
#   .device/oracles/        the [oracles] extra (torchao, compressed-tensors, nvidia-modelopt) and those of their
#                           dependencies the GPU image lacks: loguru, pydantic, omegaconf, antlr4-python3-runtime
#                           and pulp<4 (16 MiB, as modelopt pins it).  The GPU image already ships transformers,
#                           scipy, rich, tqdm, pyyaml, regex, safetensors, ninja and nvidia-ml-py (ModelOpt 0.47.0
#                           imported there with only these added, 2026-12-01), so the carry is 45 MiB of 64.
# On the GPU machine:  source bench/device-env.sh   (NVFP4_DEVICE_ORACLES=0 leaves the oracles out)
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
grep -qx '/.device/' "$(git rev-parse --git-common-dir)/info/exclude" 2>/dev/null \
  || echo '/.device/' >> "$(git rev-parse --git-common-dir)/info/exclude"
rm -rf .device && mkdir -p .device/wheels .device/oracles
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
python3 -m pip download -q --no-deps "${plat[@]}" -d "$tmp" "flashinfer-python${FI_VERSION:+==$FI_VERSION}"
python3 -m pip download -q --no-deps "${plat[@]}" -d .device/wheels apache-tvm-ffi
python3 -m pip download -q --no-deps "${plat[@]}" -d .device/oracles torchao compressed-tensors loguru \
    pydantic pydantic-core annotated-types typing-inspection nvidia-modelopt omegaconf \
    antlr4-python3-runtime 'pulp<4'
mkdir "$tmp/x" && (cd "$tmp/x" && unzip -q "$tmp"/flashinfer_python-*.whl)
fi="$tmp/x/flashinfer"
find "$fi/data/csrc" -mindepth 1 -maxdepth 1 -type d ! -name nv_internal -exec rm -rf {} +
find "$fi/data/csrc" -maxdepth 1 -type f \( -name '*.cu' -o -name '*.cpp' \) -delete
find "$fi" -path "$fi/data" -prune -o -type f -name '*.cu' -print0 | xargs -0 rm -f
XZ_OPT=-6T0 tar cJf .device/flashinfer.txz -C "$tmp/x" flashinfer
du -sh .device/flashinfer.txz .device/wheels .device/oracles .device
echo "carry .device; on the GPU machine start the command with: source bench/device-env.sh &&"
