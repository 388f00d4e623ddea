#!/usr/bin/env bash
# 1) selftest on the final tree; 2) A/B: torchao weight-only fuzz with and without fp32_reductions, side by side.
set -u
O=${OUT:-/tmp/out}; mkdir -p "$O"; W=/tmp/M; mkdir -p $W
{ date; cat .lead/HEAD; } > $W/start.txt 2>&1
source bench/device-env.sh
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >> $W/start.txt 2>&1
pack() { tar czf "$O/ab.tgz" -C /tmp M 2>/dev/null; }
timeout 200 nvfp4-harness selftest --budget 60 --json $W/selftest.json > $W/selftest.txt 2>&1; echo "rc=$?" >> $W/selftest.txt
date >> $W/start.txt; pack
rm -rf /tmp/ab && cp -a . /tmp/ab && rm -rf /tmp/ab/.device
sed -i 's/return reduced_precision_reductions_off() if x.is_cuda else contextlib.nullcontext()/return contextlib.nullcontext()  # A\/B: fix removed/' /tmp/ab/harness/backends/torchao_nvfp4.py
grep -n "A/B" /tmp/ab/harness/backends/torchao_nvfp4.py >> $W/start.txt
B=${AB_BUDGET:-90}
( cd /tmp/ab && PYTHONPATH=/tmp/site:/tmp/ab timeout 200 python3 -m harness.cli fuzz --backends linear-torchao-weight-only --budget $B -n 6 --results $W/nofix --report $W/nofix.html > $W/nofix.txt 2>&1; echo "rc=$?" >> $W/nofix.txt ) &
( timeout 200 nvfp4-harness fuzz --backends linear-torchao-weight-only --budget $B -n 6 --results $W/fix --report $W/fix.html > $W/fix.txt 2>&1; echo "rc=$?" >> $W/fix.txt ) &
wait
rm -f $W/*.html
date >> $W/start.txt; pack
grep -h "^cases" $W/nofix.txt $W/fix.txt; tail -2 $W/selftest.txt
