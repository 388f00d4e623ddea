"""Benchmark: a base commit's harness and this checkout's, measured side by side in one call.

The base tree is unpacked into a temporary directory (``git archive BASE`` when git and the commit
are available here; otherwise the carried copy ``bench/data/side_by_side_base.tar.gz``, whose
commit is in ``bench/data/side_by_side_base.txt``: the JSON says which was used).  Worker
subprocesses then alternate base, new, base, new, ... (``--rounds``), each importing ``harness``
from its own tree (checked) and measuring on the same device:

* ``cases_per_s``: the small-shape case loop of ``bench/cases_per_second.py`` (the same
  ``make_case`` definition for both trees, 300 cases from the suite's strategy, steady state);
* ``reference_ms``: reference + error bound of one ``--large``^3 case (``reference_gemm`` and
  ``error_bound``, median of 3);
* ``quantizer_ms``: each layout's quantization of a 16384 x 16384 bf16 tensor with the tree's
  default configuration (median of 20; GPU only).

Reported: the median of each metric per tree over the rounds and the ratio new/base (for times:
base/new, i.e. the speedup), with device, date and versions.

Run:  python bench/side_by_side.py --base COMMIT --json bench/data/side_by_side.json
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CARRIED = os.path.join(HERE, "data", "side_by_side_base.tar.gz")
CARRIED_COMMIT = os.path.join(HERE, "data", "side_by_side_base.txt")


def _carried_commit() -> str | None:
    try:
        with open(CARRIED_COMMIT) as fh:
            return fh.read().split()[0]
    except (OSError, IndexError):
        return None


def _extract(tar_path: str, dest: str) -> None:
    with tarfile.open(tar_path) as tf:
        try:
            tf.extractall(dest, filter="data")
        except TypeError:  # Python without extraction filters
            tf.extractall(dest)


def unpack_base(base: str | None, dest: str) -> tuple[str, str]:
    """Unpack the base tree into ``dest``; returns (commit, how)."""
    git = shutil.which("git")
    if base and git and os.path.exists(os.path.join(REPO, ".git")):
        rev = subprocess.run([git, "rev-parse", "--verify", base + "^{commit}"], cwd=REPO, capture_output=True,
                             text=True)
        if rev.returncode == 0:
            commit = rev.stdout.strip()
            arch = subprocess.run([git, "archive", "--format=tar", commit], cwd=REPO, capture_output=True)
            if arch.returncode == 0:
                tar_path = os.path.join(dest, "base.tar")
                with open(tar_path, "wb") as fh:
                    fh.write(arch.stdout)
                _extract(tar_path, os.path.join(dest, "tree"))
                return commit, "git archive"
    carried = _carried_commit()
    if carried and os.path.isfile(CARRIED) and (base is None or carried.startswith(base) or base.startswith(carried)):
        _extract(CARRIED, os.path.join(dest, "tree"))
        return carried, "carried copy bench/data/side_by_side_base.tar.gz"
    raise SystemExit(f"side_by_side: --base {base!r}: not available through git here, and the carried copy "
                     f"is of commit {carried!r}")


# ------------------------------------------------------------------------------------------------
# worker: runs inside one tree
# ------------------------------------------------------------------------------------------------
def worker(root: str, cases: int, large: int, quant: bool, max_nk_blocks: int) -> dict:
    sys.path.insert(0, root)
    import torch

    import harness

    if not os.path.abspath(harness.__file__).startswith(os.path.abspath(root)):
        raise SystemExit(f"side_by_side: harness imported from {harness.__file__}, expected under {root}")
    spec = importlib.util.spec_from_file_location("_cps", os.path.join(HERE, "cases_per_second.py"))
    cps = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cps)
    from hypothesis import HealthCheck, given, settings

    from harness import env, strategies
    from harness.backends import registry
    from harness.oracle import error_bound, reference_gemm
    try:
        from harness.experiments import sync as _sync
        from harness.experiments.gemm import GemmExperiment as _Gemm
        from harness.problem import CLEAN, GemmProblem
        from harness.trial import Trial
    except ImportError:  # the base tree may predate harness/experiments/ and harness/problem.py
        from harness.pipeline import CLEAN, GemmProblem
        from harness.runner import Trial, _Gemm, _sync

    e = env.current()
    dev = e.torch_device
    problems = []

    @settings(max_examples=cases, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(strategies.gemm_problems(max_m=256, max_nk_blocks=max_nk_blocks))
    def collect(p):
        problems.append(p)

    collect()
    one_case, _ = cps.make_case("triton-emu-128x4", dev)
    for p in problems:
        one_case(p)
    _sync()
    t0 = time.perf_counter()
    for p in problems:
        one_case(p)
    _sync()
    res = {"cases_per_s": len(problems) / (time.perf_counter() - t0)}
    if large:
        backend = registry.get("triton-emu-128x4")
        g = _Gemm(backend, Trial(backend.name, "reference_agreement", GemmProblem(large, large, large)), dev)
        ops = g.ops(CLEAN)
        ts = []
        for _ in range(4):
            _sync()
            t = time.perf_counter()
            ref = reference_gemm(ops)
            error_bound(ref, backend.requirements.precision, ops.out_dtype)
            _sync()
            ts.append(time.perf_counter() - t)
            del ref
        res["reference_ms"] = statistics.median(ts[1:]) * 1e3
        del ops, g
    if quant and dev.type == "cuda":
        from harness import format as F
        from harness.kernels.nvfp4 import quantize_into
        from harness.layouts import ScaleLayout, padded_shape

        x = torch.randn(16384, 16384, device="cuda", dtype=torch.bfloat16,
                        generator=torch.Generator("cuda").manual_seed(0))
        gs = F.global_scale_encode_divisor(x.float().abs().amax()).reshape(1)
        for layout in ScaleLayout:
            pr, pk = padded_shape(layout, 16384, 1024)
            packed = torch.empty((16384, 8192), dtype=torch.uint8, device="cuda")
            scales = torch.empty((pr, pk), dtype=torch.uint8, device="cuda")
            for _ in range(3):
                quantize_into(x, gs, layout, packed=packed, scales=scales)
            ts = []
            for _ in range(20):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                quantize_into(x, gs, layout, packed=packed, scales=scales)
                b.record()
                torch.cuda.synchronize()
                ts.append(a.elapsed_time(b))
            res[f"quantizer_ms_{layout.value}"] = statistics.median(ts)
    res["torch"] = torch.__version__
    res["device"] = e.gpu_name or platform.processor() or "cpu"
    return res


def report(runs: dict, commit: str, how: str, args) -> dict:
    metrics = sorted({k for r in runs["new"] + runs["base"] for k, v in r.items() if isinstance(v, (int, float))})
    summary = {}
    for k in metrics:
        vals = {t: [r[k] for r in runs[t] if k in r] for t in ("base", "new")}
        entry = {t: (statistics.median(v) if v else None) for t, v in vals.items()}
        if entry["base"] and entry["new"]:
            if k.endswith("_ms"):
                entry["speedup"] = entry["base"] / entry["new"]
            else:
                entry["ratio_new_over_base"] = entry["new"] / entry["base"]
        summary[k] = entry
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True) \
        if shutil.which("git") and os.path.exists(os.path.join(REPO, ".git")) else None
    first = (runs["new"] or runs["base"])[0]
    out = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "device": first["device"], "torch": first["torch"],
           "python": platform.python_version(), "base_commit": commit, "base_source": how,
           "new_commit": head.stdout.strip() if head and head.returncode == 0 else "working tree (no git)",
           "rounds_done": {t: len(v) for t, v in runs.items()}, "order": "base,new then new,base alternating",
           "summary": summary, "runs": runs}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default=None, help="commit to compare against (default: the carried copy's)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--cases", type=int, default=300)
    ap.add_argument("--large", type=int, default=8192, help="0: skip the large reference")
    ap.add_argument("--no-quantizer", action="store_true")
    ap.add_argument("--max-nk-blocks", type=int, default=256, help="strategy cap (256: the suite's; CPU: small)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("SIDE_BY_SIDE " + json.dumps(worker(args.worker, args.cases, args.large, not args.no_quantizer,
                                                          args.max_nk_blocks)))
        return 0
    base = args.base or _carried_commit()
    tmp = tempfile.mkdtemp(prefix="nvfp4-side-by-side-")
    try:
        commit, how = unpack_base(base, tmp)
        trees = {"base": os.path.join(tmp, "tree"), "new": REPO}
        runs: dict[str, list[dict]] = {"base": [], "new": []}
        for rnd in range(args.rounds):
            for name in ("base", "new") if rnd % 2 == 0 else ("new", "base"):
                cmd = [sys.executable, os.path.abspath(__file__), "--worker", trees[name], "--cases", str(args.cases),
                       "--large", str(args.large), "--max-nk-blocks", str(args.max_nk_blocks)]
                cmd += ["--no-quantizer"] if args.no_quantizer else []
                env = dict(os.environ, PYTHONPATH=trees[name])
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=trees[name])
                line = [ln for ln in proc.stdout.splitlines() if ln.startswith("SIDE_BY_SIDE ")]
                if proc.returncode or not line:
                    print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
                    raise SystemExit(f"side_by_side: the {name} worker failed (exit {proc.returncode})")
                runs[name].append(json.loads(line[0][len("SIDE_BY_SIDE "):]))
                print(name, json.dumps(runs[name][-1]), flush=True)
                out = report(runs, commit, how, args)  # after every worker: a run cut short keeps its data
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({k: v for k, v in out.items() if k != "runs"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
