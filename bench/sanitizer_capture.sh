#!/usr/bin/env bash
# Capture compute-sanitizer output of harness runs as test data for harness/sanitizer/findings.py's parser
# (tests/data/sanitizer/): the text it prints and the XML it saves, for initcheck on the
# unwritten-padding mutant, memcheck on the write-past and read-past mutants, a clean run of each
# tool and racecheck on the emulation GEMM.  Usage: bench/sanitizer_capture.sh OUTDIR (on a GPU node)
set -u
out=${1:?OUTDIR}; mkdir -p "$out"
cd "$(dirname "$0")/.."
S=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
{ date -u; nvidia-smi -L; "$S" --version; } > "$out/env.txt" 2>&1
export PYTORCH_NO_CUDA_MEMORY_CACHING=1 PYTHONPATH=$PWD
spec() {  # spec FILE BACKEND PROPERTY
  python3 -c "import json,sys; from harness.trial import Trial; from harness.problem import GemmProblem; \
print(json.dumps({'trial': Trial(sys.argv[2], sys.argv[3], GemmProblem(m=5, n=40, k=96, seed=1)).to_dict()}))" \
    "$1" "$2" "$3" > "$1"
}
run() {  # run NAME TOOL BACKEND PROPERTY
  spec "$out/$1.spec.json" "$3" "$4"
  timeout 300 "$S" --tool "$2" --print-limit 20 --show-backtrace no --xml --save "$out/$1.xml" \
    python3 -m harness.sanitizer child "$out/$1.spec.json" "$out/$1.map.json" > "$out/$1.txt" 2>&1
  echo "$1 rc=$?" | tee -a "$out/rc.txt"
}
run initcheck-reads-unwritten-pad-scales initcheck mutant-reads-unwritten-pad-scales reference_agreement
run memcheck-writes-row-past-output memcheck mutant-writes-row-past-output reference_agreement
run memcheck-quantizer-reads-past-rows memcheck mutant-quantizer-reads-past-rows quantizer_agreement
run initcheck-clean-triton-emu-128x4 initcheck triton-emu-128x4 reference_agreement
run memcheck-clean-triton-emu-128x4 memcheck triton-emu-128x4 reference_agreement
run racecheck-triton-emu-128x4 racecheck triton-emu-128x4 reference_agreement
ls -la "$out"
