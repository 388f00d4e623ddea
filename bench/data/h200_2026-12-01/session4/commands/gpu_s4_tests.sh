#!/usr/bin/env bash
# README's test command on the H200, with and without the [oracles] extra, side by side (separate site dirs).
set -u
O=${OUT:-/tmp/out}; mkdir -p "$O"
{ date; nvidia-smi --query-gpu=name,driver_version --format=csv; git rev-parse HEAD 2>/dev/null || cat .lead/HEAD; } > "$O/start.txt" 2>&1
source bench/device-env.sh
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >> "$O/start.txt" 2>&1
rm -rf /tmp/site-no && cp -a /tmp/site /tmp/site-no && rm -rf /tmp/site-no/torchao* /tmp/site-no/compressed_tensors* /tmp/site-no/pydantic* /tmp/site-no/loguru*
python3 -c "import torch, triton, flashinfer, torchao, compressed_tensors; print(torch.__version__, triton.__version__, flashinfer.__version__, torchao.__version__, compressed_tensors.__version__)" >> "$O/start.txt" 2>&1
cmd=$(awk '/<!-- test-command -->/{f=1; next} f && /^```bash/{g=1; next} g && /^```/{exit} g{print}' README.md)
echo "README test command: $cmd" >> "$O/start.txt"
rm -rf /tmp/repo-no && cp -a . /tmp/repo-no && rm -rf /tmp/repo-no/.device
( cd /tmp/repo-no && PYTHONPATH=/tmp/site-no:/tmp/repo-no timeout 560 bash -c "$cmd" > "$O/tests-no-oracles.txt" 2>&1; echo "rc=$?" >> "$O/tests-no-oracles.txt" ) &
( PYTHONPATH=/tmp/site:$PWD timeout 560 bash -c "$cmd" > "$O/tests-oracles.txt" 2>&1; echo "rc=$?" >> "$O/tests-oracles.txt" ) &
wait
date >> "$O/start.txt"
tail -3 "$O/tests-oracles.txt" "$O/tests-no-oracles.txt"
