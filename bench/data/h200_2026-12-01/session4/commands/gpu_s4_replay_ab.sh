#!/usr/bin/env bash
# Replay the torchao weight-only failures with the fp32-reduction fix removed (/tmp/ab) and with it (checkout).
set -u
O=${OUT:-/tmp/out}; mkdir -p "$O"; W=/tmp/R; mkdir -p $W
source bench/device-env.sh
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . > /dev/null 2>&1
rm -rf /tmp/ab && cp -a . /tmp/ab && rm -rf /tmp/ab/.device
sed -i 's/return reduced_precision_reductions_off() if x.is_cuda else contextlib.nullcontext()/return contextlib.nullcontext()  # A\/B: fix removed/' /tmp/ab/harness/backends/torchao_nvfp4.py
grep -c "A/B" /tmp/ab/harness/backends/torchao_nvfp4.py > $W/patched.txt
for c in .lead/tcases/*.json; do b=$(basename $c .json)
  for rep in 1 2; do echo "(cd /tmp/ab && PYTHONPATH=/tmp/site:/tmp/ab python3 -m harness.cli replay $PWD/$c > $W/nofix-$rep-$b.txt 2>&1; echo exit=\$? >> $W/nofix-$rep-$b.txt)"; done
  echo "(python3 -m harness.cli replay $PWD/$c > $W/fix-$b.txt 2>&1; echo exit=\$? >> $W/fix-$b.txt)"
done > $W/jobs.txt
xargs -P 8 -I{} bash -c {} < $W/jobs.txt
for f in $W/*-*.txt; do echo "$(basename $f): $(grep -m1 '^result' $f | cut -c1-150) $(tail -1 $f)"; done > $W/summary.txt
tar czf "$O/replay.tgz" -C /tmp R
cat $W/summary.txt
