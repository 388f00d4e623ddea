#!/usr/bin/env bash
# ModelOpt on the H200 (carried now): import, the two ModelOpt mutants, the ModelOpt tests, a fuzz of its backends.
set -u
O=${OUT:-/tmp/out}; mkdir -p "$O"; W=/tmp/P; mkdir -p $W
{ date; cat .lead/HEAD; du -sh .device; } > $W/start.txt 2>&1
source bench/device-env.sh
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >> $W/start.txt 2>&1
pack() { tar czf "$O/modelopt.tgz" --exclude='P/results/*/cases' -C /tmp P 2>/dev/null; }
python3 -c "import modelopt, torch; from modelopt.torch.quantization.qtensor import NVFP4QTensor; print('modelopt', modelopt.__version__, torch.__version__)" >> $W/start.txt 2>&1
nvfp4-harness backends 2>&1 | grep -i -A2 modelopt > $W/backends.txt
timeout 150 nvfp4-harness selftest --budget 60 --mutant mutant-ckpt-nibble-order --mutant mutant-ckpt-scales-swizzled-twice --json $W/selftest.json > $W/selftest.txt 2>&1; echo "rc=$?" >> $W/selftest.txt
pack
timeout 150 python3 -m pytest -n 4 -p no:cacheprovider -q -rs tests/test_env.py tests/test_mutants.py tests/test_third_party_backends.py -k "modelopt or env" > $W/tests.txt 2>&1; echo "rc=$?" >> $W/tests.txt
pack
timeout 150 nvfp4-harness fuzz --backends quant-modelopt,ckpt-modelopt --budget 60 -n 4 --results $W/results --report $W/report.html > $W/fuzz.txt 2>&1; echo "rc=$?" >> $W/fuzz.txt
rm -f $W/report.html; date >> $W/start.txt; pack
cat $W/start.txt; tail -3 $W/selftest.txt $W/tests.txt; grep "^cases" $W/fuzz.txt
