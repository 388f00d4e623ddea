"""``nvfp4-harness replay`` on the edges of the case files a user hands it: fused-MoE cases (their
diagnosis names hidden and intermediate, not n and k), shapes too large for the machine (refused in
one line before any operand is built, not run and blamed on the backend), seeds past what the data
generators take, and a fused-MoE problem missing one of its dimensions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import cli

REPO = Path(__file__).resolve().parents[1]


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        rc = cli.main(list(argv))
    except SystemExit as exc:  # argparse's parser.exit: a one-line error
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err.strip()


def _assert_one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, (rc, err)
    assert len(err.splitlines()) == 1 and err.startswith("nvfp4-harness: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)


def _moe_case(path: Path, backend: str) -> dict:
    from harness.grouped.cases import save_case
    from harness.grouped.checks import execute
    from harness.grouped.problem import GroupedTrial, MoeProblem

    p = MoeProblem.from_splits([1], 1, hidden=16, intermediate=64, row_align=1)
    trial = GroupedTrial(backend, "reference_agreement", p)
    save_case(path, trial, digest=execute(trial, digest=True).digest)  # the operands' digest, as fuzz records it
    return json.loads(path.read_text())


def _grouped_case(path: Path) -> dict:
    from harness.grouped.cases import save_case
    from harness.grouped.problem import GroupedProblem, GroupedTrial

    save_case(path, GroupedTrial("grouped-triton-emu", "reference_agreement",
                                 GroupedProblem.from_splits([1, 0], 1, n=16, k=16, row_align=1)))
    return json.loads(path.read_text())


def test_replay_of_a_fused_moe_case_names_its_dimensions(tmp_path, capsys):
    good = tmp_path / "moe.json"
    _moe_case(good, "moe-torch-w4a16-emu")
    rc, out, err = _run(capsys, "replay", str(good))
    assert rc == 0, (out, err)
    assert "hidden=16 I=64" in out and "digest matches" in out and "PASSES now" in out, out
    # the same operands through a planted bug (the routed sum scaled twice): fails, exit 1
    bad = tmp_path / "moe-mutant.json"
    _moe_case(bad, "mutant-moe-routed-scaling-twice")
    rc, out, err = _run(capsys, "replay", str(bad))
    assert rc == 1 and "STILL FAILS" in out and "hidden=16 I=64" in out, (out, err)


@pytest.mark.parametrize("field, value", [("n", 2**40), ("k", 2**40)])
def test_replay_refuses_a_grouped_case_too_large_for_the_machine(tmp_path, capsys, field, value):
    doc = _grouped_case(tmp_path / "g.json")
    doc["problem"][field] = value
    doc["digest"] = None
    path = tmp_path / "huge.json"
    path.write_text(json.dumps(doc))
    rc, out, err = _run(capsys, "replay", str(path))
    _assert_one_line_error(rc, err, f"{field}={value}", "GiB", "this machine has")
    assert "FAILS" not in out  # never run, so never blamed on the backend


def test_replay_refuses_a_fused_moe_case_too_large_for_the_machine(tmp_path, capsys):
    doc = _moe_case(tmp_path / "m.json", "moe-torch-w4a16-emu")
    doc["problem"]["hidden"] = 2**40
    doc["digest"] = None
    path = tmp_path / "huge.json"
    path.write_text(json.dumps(doc))
    rc, out, err = _run(capsys, "replay", str(path))
    _assert_one_line_error(rc, err, f"hidden={2**40} I=64", "GiB")
    assert "FAILS" not in out


def test_a_seed_past_64_bits_is_a_case_file_error_in_both_schemas(tmp_path, capsys):
    from harness.cases import MAX_SEED

    dense = json.loads((REPO / "regressions" / "cases" / "linear-vllm-empty-batch-3d.json").read_text())
    for name, doc in (("dense", dense), ("grouped", _grouped_case(tmp_path / "g.json")),
                      ("moe", _moe_case(tmp_path / "m.json", "moe-torch-w4a16-emu"))):
        doc["problem"]["seed"] = MAX_SEED + 1
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(doc))
        rc, out, err = _run(capsys, "replay", str(path))
        _assert_one_line_error(rc, err, str(path), f"problem.seed={MAX_SEED + 1}: expected an integer >= 0 and <= {MAX_SEED}")


def test_a_fused_moe_problem_missing_a_dimension_or_with_an_unknown_field_is_named(tmp_path, capsys):
    from harness.grouped.cases import GroupedCaseError, read_case

    doc = _moe_case(tmp_path / "m.json", "moe-torch-w4a16-emu")
    for change, needle in (("intermediate", "missing field 'problem.intermediate'"),
                           ("hidden", "missing field 'problem.hidden'"),
                           ("colour", "unknown field 'problem.colour': expected only [")):
        bad = json.loads(json.dumps(doc))
        if change == "colour":
            bad["problem"]["colour"] = "red"
        else:
            del bad["problem"][change]
        path = tmp_path / f"bad-{change}.json"
        path.write_text(json.dumps(bad))
        with pytest.raises(GroupedCaseError) as exc:
            read_case(path)
        msg = str(exc.value)
        assert msg.startswith(f"{path}: ") and needle in msg and "\n" not in msg, msg
        assert "problem: problem:" not in msg


def test_fuzz_selects_the_fused_moe_properties_by_each_backend_s_own_list(capsys):
    """A fused-MoE backend's properties are its own (``fused_unfused`` is one; the grouped GEMM's
    ``token_isolation`` is not): ``fuzz --properties`` accepts the one and refuses the other in one
    line, naming what the backend has, rather than refusing a real property as unknown or running
    a selection that records nothing."""
    import argparse

    from harness.grouped import registry as grouped_registry
    from harness.trial import all_properties, properties_for

    emu = grouped_registry.get("moe-triton-emu")
    assert properties_for(emu) == tuple(emu.properties) and "fused_unfused" in properties_for(emu)
    assert "token_isolation" not in properties_for(emu) and "fused_unfused" in all_properties()
    assert "fused_unfused" not in properties_for(grouped_registry.get("grouped-triton-emu"))
    # accepted (the selection check is what the command runs before it starts the suite)
    cli._check_selection(argparse.Namespace(backends="moe-triton-emu", properties="fused_unfused"))
    for backends, prop in (("vllm-marlin-moe", "token_isolation"), ("moe-triton-emu", "grouped_bytes")):
        rc, out, err = _run(capsys, "fuzz", "--backends", backends, "--properties", prop)
        have = properties_for(grouped_registry.get(backends))
        _assert_one_line_error(rc, err, f"--properties {prop!r} applies to none of the selected backends ({backends})",
                               f"fused-MoE: {', '.join(have)}")


def test_replay_refuses_a_backend_of_the_other_grouped_kind_in_one_line(tmp_path, capsys):
    """A fused-MoE case on a grouped GEMM backend (and the reverse), given with --backend or written in
    the file, and a property the backend is not put to: one line naming the backend and what would
    fit, exit 2, nothing run."""
    moe = _moe_case(tmp_path / "moe.json", "moe-triton-emu")
    _grouped_case(tmp_path / "g.json")
    rc, out, err = _run(capsys, "replay", str(tmp_path / "moe.json"), "--backend", "grouped-triton-emu")
    _assert_one_line_error(rc, err, "--backend='grouped-triton-emu': a grouped GEMM cannot run this fused-MoE case",
                           "moe-triton-emu")
    rc, out, err = _run(capsys, "replay", str(tmp_path / "g.json"), "--backend", "moe-triton-emu")
    _assert_one_line_error(rc, err, "--backend='moe-triton-emu': a fused-MoE layer cannot run this grouped GEMM case",
                           "grouped-triton-emu")
    for name, doc in (("moe-on-grouped", dict(moe, backend="grouped-triton-emu")),
                      ("w4a16-fused", dict(moe, backend="moe-torch-w4a16-emu", property="fused_unfused")),
                      ("moe-token-isolation", dict(moe, property="token_isolation"))):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(doc))
        rc, out, err = _run(capsys, "replay", str(path))
        _assert_one_line_error(rc, err, str(path))
        assert not out and "trial." not in err, err
    assert "backend='grouped-triton-emu': a grouped GEMM" in _run(capsys, "replay", str(tmp_path / "moe-on-grouped.json"))[2]
    # replay --sanitize checks the same before it looks for compute-sanitizer
    rc, out, err = _run(capsys, "replay", str(tmp_path / "moe.json"), "--sanitize", "--backend", "grouped-triton-emu")
    _assert_one_line_error(rc, err, "--backend='grouped-triton-emu': a grouped GEMM cannot run this fused-MoE case")
    assert "property='fused_unfused' does not apply to it; expected one of ['reference_agreement']" in \
        _run(capsys, "replay", str(tmp_path / "w4a16-fused.json"))[2]
    assert "property='token_isolation': expected one of ['reference_agreement', 'fused_unfused']" in \
        _run(capsys, "replay", str(tmp_path / "moe-token-isolation.json"))[2]


def test_selftest_of_an_unknown_mutant_lists_the_planted_bugs(capsys):
    """``selftest --mutant typo``: one line listing the planted-bug backends (dense and grouped), not
    every backend of the registry."""
    rc, out, err = _run(capsys, "selftest", "--mutant", "mutant-moe-routed-scaling-twise")
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("nvfp4-harness: error: --mutant 'mutant-moe-routed-scaling-twise': unknown; expected a "
                          "planted-bug backend: "), err
    listed = err.split("planted-bug backend: ", 1)[1].split(", ")
    assert "mutant-moe-routed-scaling-twice" in listed and "mutant-pad-row-scales" in listed, listed
    assert all(n.startswith("mutant-") for n in listed), listed


def test_fuzz_summary_names_each_backend_that_computed_nothing_and_why(tmp_path):
    """A fuzz run of backends that cannot run on this machine exits as a run (0) but its summary says,
    per backend, that it computed no case and the backend's own reason, so it never reads as clean."""
    import os
    import subprocess
    import sys

    from harness import env
    from harness.grouped import registry as grouped_registry

    names = [n for n in ("sglang-cutlass-moe", "vllm-marlin-moe", "grouped-te-split-quantize")
             if not grouped_registry.get(n).support(env.current())]
    if not names:
        pytest.skip("every engine adapter runs on this machine: nothing is skipped to report")
    res = subprocess.run([sys.executable, "-m", "harness", "fuzz", "--backends", ",".join(names), "--examples", "1",
                          "-n", "0", "--results", "res", "--report", "r.html"], capture_output=True, text=True,
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert f"{len(names)} backend{'s' if len(names) > 1 else ''} computed no case here:" in res.stdout, res.stdout
    for n in names:
        reason = grouped_registry.get(n).support(env.current()).reason
        assert f"  {n}: {reason.splitlines()[0]}" in res.stdout, (n, res.stdout[-3000:])


def test_report_and_record_verified_of_a_case_file_say_it_is_a_file(tmp_path, capsys):
    """``report CASE.json`` (or ``record-verified``): one line saying the path is a file, not the
    results folder expected, and how a case file runs, rather than "no such directory"."""
    case = REPO / "regressions" / "cases" / "linear-vllm-empty-batch-3d.json"
    for argv, expected in ((("report", str(case), "-o", str(tmp_path / "r.html")), "a fuzz run wrote"),
                           (("record-verified", str(case), "--file", str(tmp_path / "v.json")), "a fuzz or test run wrote")):
        rc, out, err = _run(capsys, *argv)
        _assert_one_line_error(rc, err, f"RESULTS_DIR {str(case)!r}: a file, not a folder: expected the folder {expected}",
                               "`nvfp4-harness replay`")
        assert "no such directory" not in err
    assert not (tmp_path / "r.html").exists() and not (tmp_path / "v.json").exists()


def test_replay_names_both_machines_when_the_case_was_recorded_on_another(tmp_path):
    """A case recorded on an H200 and replayed elsewhere says so beside its verdict (a pass on the
    CPU does not show a GPU-only failure fixed); replayed on the kind of machine it was recorded
    on, it does not."""
    import json

    from harness import env
    from harness.replay import replay

    src = Path(__file__).resolve().parents[1] / "regressions" / "cases" / "torch-emu-fp16-overflow-m127.json"
    doc = json.loads(src.read_text())
    assert doc["environment"]["device"] == "cuda" and doc["environment"]["compute_capability"] == 90
    here = env.current()
    text = replay(src).diagnosis()
    on_h200 = here.device == "cuda" and here.compute_capability == 90 and "H200" in (here.gpu_name or "")
    machine = [line for line in text.splitlines() if line.startswith("machine")]
    if on_h200:
        assert machine == [], text
    else:
        assert len(machine) == 1 and f"recorded on {doc['environment']['gpu_name']} (SM90)" in machine[0], text
    # the same case, recorded (as this copy says) on this very machine: no machine line
    doc["environment"] = here.to_dict()
    same = tmp_path / "same.json"
    same.write_text(json.dumps(doc))
    assert not [line for line in replay(same).diagnosis().splitlines() if line.startswith("machine")]
