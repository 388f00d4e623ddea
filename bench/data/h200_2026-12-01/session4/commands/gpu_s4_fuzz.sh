#!/usr/bin/env bash
# Main job over every backend on the H200 + the shared case files; everything tarred into $OUT/fuzz.tgz.
set -u
O=${OUT:-/tmp/out}; mkdir -p "$O"; W=/tmp/L; mkdir -p $W
{ date; nvidia-smi --query-gpu=name,driver_version --format=csv; cat .lead/HEAD 2>/dev/null; } > $W/start.txt 2>&1
source bench/device-env.sh
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >> $W/start.txt 2>&1
python3 -c "import torch, triton, flashinfer, torchao, compressed_tensors; print(torch.__version__, triton.__version__, flashinfer.__version__, torchao.__version__, compressed_tensors.__version__)" >> $W/start.txt 2>&1
pack() { tar czf "$O/fuzz.tgz" --exclude='L/results' -C /tmp L 2>/dev/null; tar czf "$O/results.tgz" -C /tmp/L results 2>/dev/null; }
nvfp4-harness backends > $W/backends.txt 2>&1
timeout ${FUZZ_TIMEOUT:-420} nvfp4-harness fuzz --budget ${FUZZ_BUDGET:-200} -n 6 --results $W/results --report $W/report.html > $W/fuzz.txt 2>&1; echo "rc=$?" >> $W/fuzz.txt
run=$(readlink -f $W/results/latest); echo "run dir $run" >> $W/start.txt
cp bench/verified.json $W/verified-before.json
nvfp4-harness record-verified "$run" --source "bench/data/h200_2026-12-01/session4 (main job, H200)" > $W/record-verified.txt 2>&1
cp bench/verified.json $W/verified-after.json
python3 - "$run" > $W/counts.txt 2>&1 <<'PY'
import json, sys, glob, collections
c = collections.Counter(); p = collections.Counter(); fails = []
for f in glob.glob(sys.argv[1] + '/results-*.jsonl'):
    for line in open(f):
        try: r = json.loads(line)
        except Exception: continue
        o = r.get('outcome') or r.get('status'); c[o] += 1
        if o not in ('skip', 'refused'): p[r.get('property')] += 1
        if o in ('fail', 'crash'): fails.append((r.get('backend'), r.get('property')))
print(dict(c)); print(dict(p)); print(collections.Counter(fails))
PY
pack
for c in .lead/*.json; do nvfp4-harness replay "$c" > $W/replay-$(basename $c .json).txt 2>&1; echo "exit=$?" >> $W/replay-$(basename $c .json).txt; done
date >> $W/start.txt
pack
tail -5 $W/fuzz.txt
