"""A sticky CUDA error (illegal address) inside a backend is recorded as a crash of that case, the
worker process ends so no later case runs on a broken context, xdist replaces the worker, and the
rest of the session still runs and is recorded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PLUGIN = '''
import torch
from harness.backends.protocol import GemmBackend, Requirements

class StickyErrorGemm(GemmBackend):
    """Raises what PyTorch raises after a kernel touched an illegal address."""
    name = "test-sticky-cuda-error"
    requirements = Requirements(runs_on_cpu=True)

    def run(self, ops, out=None):
        raise RuntimeError("CUDA error: an illegal memory access was encountered\\n"
                           "CUDA kernel errors might be asynchronously reported at some other API call")

def backends():
    return [StickyErrorGemm()]
'''


def test_sticky_cuda_error_is_a_crash_and_the_session_goes_on(tmp_path):
    plugin = tmp_path / "sticky_plugin.py"
    plugin.write_text(PLUGIN)
    results = tmp_path / "results"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST", "NVFP4_HARNESS"))}
    res = subprocess.run(
        [sys.executable, "-m", "pytest", str(REPO / "properties"), "-q", "-p", "no:cacheprovider", "-n", "1",
         "--nvfp4-plugin", str(plugin), "--nvfp4-backends", "test-sticky-cuda-error,triton-emu-8x4",
         "--nvfp4-properties", "determinism,output_coverage", "--nvfp4-results", str(results)],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=900)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out[-3000:]
    assert "crashed" in out and ("replacing crashed worker" in out or "worker 'gw0' crashed" in out), out[-3000:]
    results = results / "latest"  # this session's run directory
    records = [json.loads(line) for f in results.glob("results-*.jsonl") for line in f.read_text().splitlines()]
    crashes = [r for r in records if r["outcome"] == "crash"]
    assert crashes and all(r["backend"] == "test-sticky-cuda-error" for r in crashes)
    assert "illegal memory access" in crashes[0]["reason"]
    # the correct backend's tests ran too, on a replacement worker, and were recorded
    passes = {r["property"] for r in records if r["backend"] == "triton-emu-8x4" and r["outcome"] == "pass"}
    assert passes == {"determinism", "output_coverage"}
    session = json.loads((results / "session.json").read_text())
    assert session["totals"]["crash"] == len(crashes)
    # a killed worker cannot send what it is back through xdist's workeroutput: the controller
    # records that it went down, with the GPU it had given it
    crashed = {r["worker"] for r in crashes}
    assert crashed <= {w for w, info in session["workers"].items() if info.get("crashed") and "gpu" in info}
    assert session["started"] <= session["finished"]


def test_workers_report_back_through_xdist_and_the_session_is_written_once(tmp_path):
    results = tmp_path / "results"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST", "NVFP4_HARNESS"))}
    res = subprocess.run(
        [sys.executable, "-m", "pytest", str(REPO / "properties"), "-q", "-p", "no:cacheprovider", "-n", "1",
         "--nvfp4-backends", "triton-emu-8x4", "--nvfp4-properties", "determinism",
         "--nvfp4-results", str(results)],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=900)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    results = results / "latest"  # this session's run directory
    session = json.loads((results / "session.json").read_text())
    assert session["totals"]["pass"] >= 1 and session["totals"]["fail"] == 0
    (worker, info), = session["workers"].items()  # the one worker, from its workeroutput
    assert worker == "gw0" and info["worker"] == "gw0" and info["pid"] != os.getpid()
    assert info["environment"]["device"] == session["environment"]["device"]
    assert f"worker gw0: pid {info['pid']} on" in out
    assert sorted(p.name for p in results.iterdir()) == ["cases", "hypothesis.json", "results-gw0.jsonl", "session.json",
                                                         "tests-gw0.jsonl"]


def test_only_sticky_cuda_errors_are_crashes() -> None:
    """torch appends a hint about device-side assertions to every CUDA error: an invalid launch argument
    (the context survives) is a failure of the call, a triggered device-side assert is a crash."""
    from harness.experiments import classify_exception

    hint = ("\nCUDA kernel errors might be asynchronously reported at some other API call, so the stacktrace "
            "below might be incorrect.\nFor debugging consider passing CUDA_LAUNCH_BLOCKING=1\n"
            "Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.\n")
    assert classify_exception(RuntimeError("CUDA error: invalid argument" + hint))[0] == "fail"
    assert classify_exception(RuntimeError("CUDA error: operation not permitted when stream is capturing" + hint))[0] == "fail"
    assert classify_exception(RuntimeError("CUDA error: device-side assert triggered" + hint))[0] == "crash"
    assert classify_exception(RuntimeError("CUDA error: an illegal memory access was encountered" + hint))[0] == "crash"
