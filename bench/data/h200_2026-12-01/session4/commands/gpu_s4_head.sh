#!/usr/bin/env bash
# HEAD on the H200 with ModelOpt carried: the regression corpus and the oracle/mutant/env tests (README's options).
set -u
O=${OUT:-/tmp/out}; mkdir -p "$O"
{ date; cat .lead/HEAD; } > "$O/head.txt"
source bench/device-env.sh
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null 2>&1
timeout 250 python3 -m pytest -n auto -p no:cacheprovider --nvfp4-workers-per-gpu 4 -rs regressions tests/test_third_party_backends.py tests/test_mutants.py tests/test_env.py tests/test_optional.py >> "$O/head.txt" 2>&1; echo "rc=$?" >> "$O/head.txt"
date >> "$O/head.txt"
