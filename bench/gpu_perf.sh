#!/usr/bin/env bash
# The performance run on one GPU (H200): exactness of the int8 reference on the GPU, the side-by-side
# comparison with the base commit, the quantizer sweep, the reference crossover, cases per second,
# the per-case profile and the scale sweep.  One call, at most ~8 minutes; every step has its own
# time cap and a step that would overrun the total is skipped (the log says so).
# Usage (from the repository root):  bash bench/gpu_perf.sh "$OUT"
# Writes: OUT/data/*.json, OUT/scale.png (if matplotlib is installed; otherwise draw it later with
# `python bench/scale.py --plot-only OUT/data/scale_gpu.json --plot bench/scale_gpu.png`), OUT/*.log.
set -uo pipefail
out=${1:-${OUT:?usage: bench/gpu_perf.sh OUTDIR}}
mkdir -p "$out/data"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
# the offline GPU machine's extra packages when they were carried (bench/device-pack.sh)
if [ -d .device ]; then source bench/device-env.sh; fi
TOTAL=${GPU_PERF_SECONDS:-470}
log=$out/gpu_perf.log
{ date -u; nvidia-smi -L 2>&1; git rev-parse HEAD 2>&1 || echo "no git"
  python3 -c "import torch, triton, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
} > "$out/env.txt" 2>&1
cat "$out/env.txt" | tee "$log"

step() {  # step NAME CAP_SECONDS CMD...
  local name=$1 cap=$2; shift 2
  local left=$((TOTAL - SECONDS))
  if (( left < 20 )); then echo "== $name: SKIPPED (total time used: ${SECONDS}s)" | tee -a "$log"; return; fi
  (( cap > left )) && cap=$left
  echo "== $name (cap ${cap}s, at ${SECONDS}s)" | tee -a "$log"
  timeout "$cap" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$out/$name.log" >> "$log"
  echo "== $name: rc=$rc (at ${SECONDS}s)" | tee -a "$log"
}

step exact_reference_tests 60 python3 -m pytest tests/test_exact_reference_gpu.py tests/test_exact_reference.py \
  -q -p no:cacheprovider -rs
step side_by_side 170 python3 bench/side_by_side.py --base "${BASE:-$(cut -d' ' -f1 bench/data/side_by_side_base.txt)}" \
  --rounds 2 --json "$out/data/side_by_side_h200.json"
step quantizer 90 python3 bench/quantizer_bandwidth.py --json "$out/data/quantizer_h200.json"
step reference_speed 50 python3 bench/reference_speed.py --reps 3 --json "$out/data/reference_speed_h200.json"
step cases_per_second 45 python3 bench/cases_per_second.py --json "$out/data/cases_h200.json"
step scale 50 python3 bench/scale.py --reps 2 --json "$out/data/scale_gpu.json" --plot "$out/scale.png"
step case_profile 25 python3 bench/case_profile.py --cases 50 --json "$out/data/case_profile_h200.json"
echo "total ${SECONDS}s" | tee -a "$log"
