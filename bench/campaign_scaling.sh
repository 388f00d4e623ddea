#!/usr/bin/env bash
# Campaign acceptance on GPUs: the budget is spent, cases/s scale with the GPUs, a killed worker
# loses nothing.  Writes JSON and logs under $OUT (default: ./campaign-out).
#
#   bench/campaign_scaling.sh scaling [SECONDS]   (node with >= 2 GPUs; default 120 s; ~7 min)
#       1. `fuzz --budget SECONDS` on one GPU (CUDA_VISIBLE_DEVICES=first GPU, one worker)
#       2. `fuzz --budget SECONDS` on two GPUs (one xdist worker per GPU), same pairs
#       3. a 60 s two-GPU campaign in which worker gw0 is SIGKILLed once it has recorded cases:
#          every line it had written must still be there at the end; then Ctrl-C (SIGINT) ends it
#       -> $OUT/campaign_scaling.json: cases, cases/s, fuzzing seconds of each, the 2/1 ratio, the
#          kill check; $OUT/*.log: the commands' output
#   bench/campaign_scaling.sh budget [SECONDS]    (one GPU; default 600 s)
#       `fuzz --budget SECONDS`: fuzzing seconds (controller start to last record), cases, cases/s
#       -> $OUT/campaign_budget.json.  SECONDS=600 takes ~11 min: start it detached with
#   bench/campaign_scaling.sh budget-start [SECONDS]   (returns at once; runs in /tmp/nvfp4-campaign-budget)
#   bench/campaign_scaling.sh budget-collect           (later: copies its JSON and log into $OUT)
#
# BACKENDS (default all) and PROPERTIES (default all) select the pairs.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/campaign-out}
mkdir -p "$OUT"
MODE=${1:-scaling}
PY=${PYTHON:-$(command -v python || command -v python3)}
BACKENDS=${BACKENDS:-all}
PROPERTIES=${PROPERTIES:-all}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export NVFP4_HARNESS_PROGRESS_INTERVAL=${NVFP4_HARNESS_PROGRESS_INTERVAL:-15}

# the results directory of a run: a results root with a `latest` run, or the directory itself
run_dir() { if [ -e "$1/latest" ]; then readlink -f "$1/latest"; else echo "$1"; fi; }

summarize() {  # summarize NAME RESULTS_ROOT WALL_S BUDGET_S RC -> one JSON object on stdout
  "$PY" - "$@" <<'EOF'
import datetime as dt, json, sys
from pathlib import Path
name, root, wall, budget, rc = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
d = root / "latest" if (root / "latest").exists() else root
plan = json.loads((d / "campaign" / "plan.json").read_text())
recs = []
for p in d.glob("results-*.jsonl"):
    for line in p.read_text().splitlines():
        try:
            recs.append(json.loads(line))
        except ValueError:
            pass
cases = [r for r in recs if r.get("outcome") != "skip"]
last = max((dt.datetime.strptime(r["time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc).timestamp()
            for r in cases), default=plan["start"])
fuzz_s = last - plan["start"]
workers = sorted({r.get("worker") for r in cases})
print(json.dumps({"name": name, "budget_s": budget, "fuzzing_s": round(fuzz_s, 1), "command_wall_s": round(wall, 1),
                  "cases": len(cases), "cases_per_s": round(len(cases) / max(fuzz_s, 1e-9), 2),
                  "failures": sum(r.get("outcome") in ("fail", "crash") and r.get("final", True) for r in cases),
                  "pairs": len({(r["backend"], r["property"]) for r in cases}), "workers": workers,
                  "plan_workers": plan["workers"], "exit_status": rc, "results_dir": str(d)}))
EOF
}

fuzz() {  # fuzz NAME BUDGET WORKERS [extra env...]: runs the campaign, prints its summary JSON
  local name=$1 budget=$2 workers=$3
  local res="$OUT/results-$name"
  rm -rf "$res"
  local t0; t0=$(date +%s.%N)
  "$PY" -m harness fuzz --budget "$budget" -n "$workers" --backends "$BACKENDS" --properties "$PROPERTIES" \
    --results "$res" --report "$OUT/report-$name.html" >"$OUT/$name.log" 2>&1
  local rc=$?
  local t1; t1=$(date +%s.%N)
  summarize "$name" "$res" "$("$PY" -c "print($t1 - $t0)")" "$budget" "$rc"
}

env_json() {
  "$PY" - <<'EOF'
import json, subprocess, datetime
import torch, hypothesis
gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
print(json.dumps({"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "gpus": gpus, "torch": torch.__version__, "cuda": torch.version.cuda,
                  "hypothesis": hypothesis.__version__,
                  "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()}))
EOF
}

case "$MODE" in
scaling)
  S=${2:-120}
  first=$("$PY" -c "import torch; print(0 if torch.cuda.device_count() else '')")
  # (DRY_RUN_CPU=1: the same steps on the CPU, to check the script itself; the numbers mean nothing)
  [ -n "$first" ] || [ "${DRY_RUN_CPU:-0}" = 1 ] || { echo "campaign_scaling: no CUDA GPU visible" >&2; exit 2; }
  if [ -n "$first" ]; then n1=auto; n2=auto; else n1=1; n2=2; fi
  one=$(CUDA_VISIBLE_DEVICES=0 fuzz one-gpu "$S" "$n1")
  two=$(fuzz two-gpus "$S" "$n2")
  # the kill: a 60 s two-GPU campaign, gw0 SIGKILLed once it has >= 20 cases, then SIGINT
  res="$OUT/results-kill"; rm -rf "$res"
  "$PY" -m harness fuzz --budget 600 -n "$n2" --backends "$BACKENDS" --properties "$PROPERTIES" \
    --results "$res" --report "$OUT/report-kill.html" >"$OUT/kill.log" 2>&1 &
  cli=$!
  kill_json=$("$PY" - "$res" "$cli" <<'EOF'
import json, os, signal, sys, time
from pathlib import Path
root, cli = Path(sys.argv[1]), int(sys.argv[2])
def d():
    return root / "latest" if (root / "latest").exists() else root
t0 = time.time(); victim = None
while time.time() - t0 < 240 and victim is None:
    for p in (d() / "campaign").glob("worker-gw0.json"):
        try:
            st = json.loads(p.read_text())
        except ValueError:
            continue
        if st.get("cases", 0) >= int(os.environ.get("KILL_AFTER_CASES", "20")):
            victim = st
    time.sleep(0.5)
if victim is None:
    print(json.dumps({"killed": False, "why": "gw0 never reached 20 cases in 240 s"})); sys.exit(0)
stream = d() / "results-gw0.jsonl"
before = stream.read_text().splitlines()
os.kill(victim["pid"], signal.SIGKILL)
killed_at = time.time()
time.sleep(30)
os.kill(cli, signal.SIGINT)  # Ctrl-C: clean stop, report rendered
t_int = time.time()
while time.time() - t_int < 240:
    try:
        os.kill(cli, 0)
        if open(f"/proc/{cli}/stat").read().rsplit(")", 1)[1].split()[0] == "Z":
            break
    except OSError:
        break
    time.sleep(0.2)
stopped = time.time() - t_int
after = stream.read_text().splitlines()
print(json.dumps({"killed": True, "worker_pid": victim["pid"], "lines_before_kill": len(before),
                  "lines_after": len(after), "none_lost": after[:len(before)] == before,
                  "stopped_s_after_sigint": round(stopped, 1),
                  "report_rendered": (root.parent / "report-kill.html").exists()}))
EOF
)
  wait "$cli"; kill_rc=$?
  "$PY" - "$one" "$two" "$kill_json" "$kill_rc" "$(env_json)" >"$OUT/campaign_scaling.json" <<'EOF'
import json, sys
one, two, kill, rc, env = json.loads(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4]), json.loads(sys.argv[5])
kill["exit_status"] = rc
print(json.dumps({"environment": env, "one_gpu": one, "two_gpus": two,
                  "speedup_cases_per_s": round(two["cases_per_s"] / max(one["cases_per_s"], 1e-9), 3),
                  "kill": kill}, indent=2))
EOF
  cat "$OUT/campaign_scaling.json"
  ;;
budget)
  S=${2:-600}
  b=$(fuzz budget "$S" auto)
  "$PY" -c "import json,sys; print(json.dumps({'environment': json.loads(sys.argv[2]), 'run': json.loads(sys.argv[1])}, indent=2))" \
    "$b" "$(env_json)" | tee "$OUT/campaign_budget.json"
  ;;
budget-start)
  S=${2:-600}
  mkdir -p /tmp/nvfp4-campaign-budget
  OUT=/tmp/nvfp4-campaign-budget setsid nohup bash "$0" budget "$S" >/tmp/nvfp4-campaign-budget/driver.log 2>&1 < /dev/null &
  echo "started: bench/campaign_scaling.sh budget $S (pid $!); collect with: bench/campaign_scaling.sh budget-collect"
  ;;
budget-collect)
  src=/tmp/nvfp4-campaign-budget
  if [ ! -s "$src/campaign_budget.json" ]; then
    echo "not finished yet:"; tail -3 "$src/budget.log" 2>/dev/null; exit 3
  fi
  cp "$src/campaign_budget.json" "$src/budget.log" "$src/driver.log" "$OUT/" && cat "$OUT/campaign_budget.json"
  ;;
*)
  echo "usage: bench/campaign_scaling.sh {scaling [S]|budget [S]|budget-start [S]|budget-collect}" >&2; exit 2 ;;
esac
