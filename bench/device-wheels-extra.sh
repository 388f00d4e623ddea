#!/usr/bin/env bash
# Wheels the third-party NVFP4 backends need on the offline GPU machine, on top of
# ../shared/tools/device-wheels.sh (FlashInfer).  Run from the project root on the CPU machine, AFTER
# device-wheels.sh (which creates .device/ and the git exclude):
#     ../shared/tools/device-wheels.sh && bench/device-wheels-extra.sh
# It downloads, for CPython 3.12 manylinux x86_64, into .device/wheels/ (installed on the GPU machine by
# .device/device-env.sh with --no-deps, so every module the imports need is listed here):
#   torchao             NVFP4Tensor (quant-torchao*, linear-torchao-*)                       3.4 MiB
#   compressed-tensors  quant-compressed-tensors, ckpt-compressed-tensors; its utils import
#                       transformers (13.5 MiB) at module level, hence transformers, huggingface-hub
#                       and their runtime dependencies                               about 23 MiB in all
#   MODELOPT=1 adds nvidia-modelopt (quant-modelopt, ckpt-modelopt): importing
#                       modelopt.torch.quantization.qtensor imports modelopt.torch, which needs scipy
#                       (35 MiB), pulp (16 MiB), requests, omegaconf, rich, ...     about 57 MiB more
# The GPU image already has torch, triton, numpy, hypothesis, pytest, pytest-xdist and jinja2.
# The device tool carries at most 64 MiB in all: FlashInfer plus the default set fits, ModelOpt does
# not; without it the ModelOpt backends report "package 'nvidia-modelopt' is not installed" there
# (they are pure torch and run in CI on the CPU).  The import closure was checked against a copy of
# the image's packages (python -S with only those and these wheels on the path).
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
exclude=$(git rev-parse --git-path info/exclude)
grep -qx '/.device/' "$exclude" 2>/dev/null || { mkdir -p "$(dirname "$exclude")"; echo '/.device/' >> "$exclude"; }
mkdir -p .device/wheels
plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64)
# versions as tested on the CPU (pyproject's [oracles] extra); override with e.g. TORCHAO=torchao==0.18.0
pkgs=(
  "${TORCHAO:-torchao==0.18.0}"
  "${COMPRESSED_TENSORS:-compressed-tensors==0.20.1}" loguru psutil pydantic==2.14.4 pydantic-core==2.50.5 annotated-types
  typing-inspection "${TRANSFORMERS:-transformers==5.24.0}" huggingface-hub PyYAML tqdm regex safetensors
  httpx2 httpcore2 h11 anyio sniffio truststore idna certifi
)
if [ "${MODELOPT:-0}" = 1 ]; then
  pkgs+=("${MODELOPT_PKG:-nvidia-modelopt==0.47.0}" scipy pulp omegaconf rich markdown-it-py mdurl pygments
         nvidia-ml-py ninja requests urllib3 charset-normalizer)
fi
python3 -m pip download -q --no-deps "${plat[@]}" -d .device/wheels "${pkgs[@]}"
ls -l .device/wheels | awk 'NR > 1 {printf "%8.1f MiB  %s\n", $5 / 1048576, $9}'
du -sh .device/wheels .device/flashinfer.tgz 2>/dev/null || du -sh .device/wheels
total=$(du -sbc .device | tail -1 | cut -f1)
echo "total carried under .device/: $((total / 1048576)) MiB (limit 64 MiB for all carried paths)"
