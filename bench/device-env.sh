# Sourced at the start of a command on the offline GPU machine (see bench/device-pack.sh): installs what
# .device/ carries into /tmp/site and puts it, and the checkout, on PYTHONPATH.
# NVFP4_DEVICE_ORACLES=0: leave the [oracles] extra out (README's test command must pass both ways).
if [ ! -d /tmp/site/flashinfer ]; then
  mkdir -p /tmp/site
  tar xJf .device/flashinfer.txz -C /tmp/site
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .device/wheels/*.whl
fi
if [ "${NVFP4_DEVICE_ORACLES:-1}" != 0 ] && [ ! -d /tmp/site/torchao ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .device/oracles/*.whl
fi
if [ "${NVFP4_DEVICE_ORACLES:-1}" = 0 ]; then
  rm -rf /tmp/site/torchao* /tmp/site/compressed_tensors* /tmp/site/pydantic* /tmp/site/loguru* \
    /tmp/site/modelopt* /tmp/site/nvidia_modelopt* /tmp/site/omegaconf* /tmp/site/antlr4* /tmp/site/pulp*
fi
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
export FLASHINFER_WORKSPACE_BASE=${FLASHINFER_WORKSPACE_BASE:-/tmp/flashinfer-ws}
export PYTHONUNBUFFERED=1
