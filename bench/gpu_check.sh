#!/usr/bin/env bash
# The GPU verification the project runs on a lent Hopper node (see bench/RESULTS.md).
# Usage: bench/gpu_check.sh OUTDIR {tests|fuzz|regressions|bench|selftest|all|sanitize}  (all: all but sanitize)
# Expects flashinfer importable (e.g. `source .device/device-env.sh` on the lent machine).
set -uo pipefail
out=${1:?OUTDIR}; what=${2:-all}
mkdir -p "$out"
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null 2>&1 || echo "editable install failed"
export PYTHONUNBUFFERED=1
{ date -u; nvidia-smi -L; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"; } | tee "$out/env.txt"
nvfp4-harness backends 2>&1 | tee "$out/backends.txt"
if [[ $what == tests || $what == all ]]; then
  python3 -m pytest tests/ -q -p no:cacheprovider -n 4 -rfEs > "$out/tests.txt" 2>&1
  grep -E "^(FAILED|ERROR|SKIPPED)|passed|failed" "$out/tests.txt" | tail -40
fi
if [[ $what == fuzz || $what == all ]]; then
  rm -rf "$out/res"
  timeout 420 python3 -m pytest -n auto properties/ regressions/ -q -p no:cacheprovider -rs \
      --nvfp4-results "$out/res" 2>&1 | tail -40 | tee "$out/props.txt"
  nvfp4-harness report "$out/res" -o "$out/report.html" >/dev/null
  # where each backend computed: an updated copy of bench/verified.json to review and commit
  cp bench/verified.json "$out/verified.json"
  nvfp4-harness record-verified "$out/res" --file "$out/verified.json" \
      --source "bench/gpu_check.sh fuzz, $(date -u +%F)" | tee "$out/verified.txt"
  # no horizontal overflow at 1280 and 1920 px; screenshots report-1280.png, report-1920.png
  if [[ -x ${NVFP4_CHROMIUM:-/usr/bin/chromium} ]]; then
    python3 -m harness.report.browser "$out/report.html" --screenshots "$out" 2>&1 | tee "$out/browser.txt"
  else
    echo "chromium missing: copy $out/report.html to a machine with it and run python3 -m harness.report.browser"
  fi
  tar czf "$out/results.tgz" -C "$out" res && rm -rf "$out/res"
fi
if [[ $what == regressions || $what == all ]]; then
  # upstream tracking: the terminal summary lists every case's state (transitions first)
  rm -rf "$out/reg"
  python3 -m pytest -n auto regressions/ -q -p no:cacheprovider -rs --nvfp4-results "$out/reg" 2>&1 \
      | tail -40 | tee "$out/regressions.txt"
  nvfp4-harness report "$out/reg" -o "$out/regressions.html" >/dev/null
fi
if [[ $what == bench || $what == all ]]; then
  python3 bench/quantizer_bandwidth.py --json "$out/bench_quantizer.json" 2>&1 | tail -30
  python3 bench/cases_per_second.py --json "$out/bench_cases.json" 2>&1 | tail -30
  python3 bench/grouped_pipeline.py --json "$out/bench_grouped.json" 2>&1 | tail -30
fi
if [[ $what == selftest || $what == all ]]; then
  nvfp4-harness selftest --budget 5 --json "$out/selftest.json" 2>&1 | tee "$out/selftest.txt"
fi
if [[ $what == sanitize ]]; then
  # compute-sanitizer over the corpus and 1 case per backend (memcheck, initcheck), the mutants' self-test,
  # and raw sanitizer output of harness runs for the parser's test data
  python3 bench/sanitizer_run.py --json "$out/sanitizer.json" --sample 1 > "$out/sanitizer.txt" 2>&1
  tail -30 "$out/sanitizer.txt"
  bash bench/sanitizer_capture.sh "$out/sanitizer-capture" > /dev/null 2>&1; cat "$out/sanitizer-capture/rc.txt"
fi
