"""The grouped (MoE) level through the front door, run as the user runs it (``python -m harness`` /
``python -m pytest`` in a subprocess, from a folder outside the checkout):

* a failure the grouped property suite finds is recorded as a grouped case file with its per-expert
  view, listed with its replay command in the end-of-run summary, and replays bit for bit
  (``--backend`` too); a changed case is told apart by its digest;
* malformed grouped case files, wrong ``--backend`` names, ``promote`` of a grouped case, and
  ``--sanitize`` where it cannot run: one clear line, a non-zero exit, no traceback;
* ``backends`` lists the grouped level; ``fuzz --backends`` selects grouped backends;
* the HTML report's per-expert view of grouped failures, also in a browser (no network, no
  horizontal overflow).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
MUTANT = "mutant-grouped-routed-scale-twice"


def _env() -> dict:
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": str(REPO) + (os.pathsep + path if path else "")}


def cli(cwd: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, cwd=cwd,
                          env=_env(), timeout=timeout)


def _one_line_error(res: subprocess.CompletedProcess, *needles: str) -> str:
    """The command failed with exit status 2 and one ``nvfp4-harness: error:`` line naming ``needles``."""
    err = res.stderr.strip()
    assert res.returncode == 2, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    assert "Traceback" not in res.stderr + res.stdout and len(err.splitlines()) == 1, err
    assert err.startswith("nvfp4-harness: error: "), err
    for n in needles:
        assert n in err, (n, err)
    return err


@pytest.fixture(scope="module")
def grouped_run(tmp_path_factory) -> dict:
    """The grouped property suite against a planted bug (routing weights applied twice), from a
    folder outside the checkout: its output, run directory and minimized case file."""
    work = tmp_path_factory.mktemp("grouped-user")
    res = subprocess.run(
        [sys.executable, "-m", "pytest", str(REPO / "properties"), "-q", "-p", "no:cacheprovider",
         "--nvfp4-backends", MUTANT, "--nvfp4-properties", "reference_agreement", "--nvfp4-results", "results"],
        capture_output=True, text=True, cwd=work, env=_env(), timeout=900)
    run = (work / "results" / "latest").resolve()
    cases = sorted((run / "cases").glob("*.json"))
    return {"res": res, "work": work, "run": run, "cases": cases}


def test_a_grouped_failure_becomes_a_case_file_listed_with_its_replay_command(grouped_run):
    res, run, cases = grouped_run["res"], grouped_run["run"], grouped_run["cases"]
    assert res.returncode == 1, res.stdout[-3000:]  # the planted bug fails
    assert len(cases) == 1, [c.name for c in cases]
    case = json.loads(cases[0].read_text())
    assert case["schema"] == "nvfp4-harness/grouped-case/1" and case["level"] == "grouped"
    assert case["backend"] == MUTANT and case["property"] == "reference_agreement" and case["digest"]
    # shrunk to one expert and one token: the bug needs no more
    assert (case["problem"]["tokens"], case["problem"]["experts"]) == (1, 1)
    assert case["replay"] == f"nvfp4-harness replay {os.path.relpath(cases[0], grouped_run['work'])}"
    experts = case["observed"]["experts"]
    assert [e["expert"] for e in experts] == [0] and experts[0]["disagrees"] and experts[0]["bad_tokens"] == [0]
    # the end-of-run summary lists it with its case file and replay command
    summary = res.stdout[res.stdout.index("new failures (1)"):]
    assert f"{MUTANT} · reference_agreement (fail)" in summary
    assert f"case file: {cases[0]}" in summary and f"replay:    {case['replay']}" in summary
    # the result record of the minimized failure names the case file and carries the per-expert view
    records = [json.loads(line) for f in run.glob("results-*.jsonl") for line in f.read_text().splitlines()]
    fails = [r for r in records if r["outcome"] == "fail"]
    assert len(fails) == 1 and fails[0]["level"] == "grouped" and fails[0]["case_file"] == f"cases/{cases[0].name}"
    assert fails[0]["experts"] == experts
    assert all(r["level"] == "grouped" and "tokens" in r["problem"] for r in records)


def test_the_grouped_case_replays_bit_for_bit_on_its_backend_and_another(grouped_run):
    work, case = grouped_run["work"], grouped_run["cases"][0]
    rel = os.path.relpath(case, work)
    res = cli(work, "replay", rel)
    assert res.returncode == 1, res.stdout + res.stderr  # still failing
    assert "rebuilt bit for bit (digest matches)" in res.stdout and "STILL FAILS" in res.stdout
    assert re.search(r"expert 0: DISAGREES; 1 tokens \[0\]; max error [\d.]+ x bound", res.stdout), res.stdout
    ok = cli(work, "replay", rel, "--backend", "grouped-triton-emu")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "PASSES on grouped-triton-emu (the case failed on mutant-grouped-routed-scale-twice)" in ok.stdout
    assert "expert 0: ok" in ok.stdout


def test_replay_tells_a_changed_grouped_case_by_its_digest(grouped_run, tmp_path):
    doc = json.loads(grouped_run["cases"][0].read_text())
    doc["problem"]["seed"] += 1  # other data: not the recorded operands
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps(doc))
    res = cli(tmp_path, "replay", str(changed))
    assert res.returncode == 3, res.stdout + res.stderr
    assert "DIGEST MISMATCH" in res.stdout


def _in_process_error(capsys, args: list[str], needle: str) -> None:
    from harness import cli as cli_mod

    with pytest.raises(SystemExit) as exc:
        cli_mod.main(args)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("nvfp4-harness: error: "), err
    assert needle in err, (needle, err)


def test_wrong_backends_sanitize_and_promote_of_a_grouped_case_are_one_line_errors(grouped_run, tmp_path, capsys):
    case = str(grouped_run["cases"][0])
    _one_line_error(cli(tmp_path, "replay", case, "--backend", "nope"), "unknown backend 'nope'",
                    "grouped backends: flashinfer-cutlass-moe, flashinfer-trtllm-moe, grouped-te-split-quantize, "
                    "grouped-te-split-quantize-rht, grouped-triton-emu, grouped-triton-emu-fused, moe-torch-w4a16-emu, "
                    "moe-triton-emu, sglang-cutlass-moe, vllm-cutlass-moe, vllm-marlin-moe")
    _one_line_error(cli(tmp_path, "replay", case, "--backend", "triton-emu-8x4"),
                    "--backend 'triton-emu-8x4': a gemm-level backend cannot run a grouped case")
    # the same command line, in this process
    _in_process_error(capsys, ["promote", case, "--name", "x", "--dest", str(tmp_path / "corpus")],
                      "nvfp4-harness/grouped-case/1")
    assert not (tmp_path / "corpus").exists()
    # --sanitize reruns a grouped case under compute-sanitizer as any other; a wrong backend is one line
    _in_process_error(capsys, ["replay", case, "--sanitize", "--backend", "nope"], "unknown grouped backend 'nope'")
    if not torch.cuda.is_available():  # here: the CPU's refusal, one line, exit 4
        from harness import cli as cli_mod

        assert cli_mod.main(["replay", case, "--sanitize"]) == 4
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("nvfp4-harness: cannot sanitize:"), err
    # and a grouped backend on a GEMM-level case (the same function the command calls)
    from harness.replay import replay

    dense = next((REPO / "regressions" / "cases").glob("*.json"))
    with pytest.raises(ValueError, match="--backend 'grouped-triton-emu': a grouped backend cannot run a"):
        replay(dense, backend="grouped-triton-emu")


def _valid_case(path: Path) -> dict:
    from harness.grouped.cases import save_case
    from harness.grouped.problem import GroupedPoison, GroupedProblem, GroupedTrial

    p = GroupedProblem.from_splits([2, 0, 1], 1, n=40, k=32, seed=3, row_align=(8, 1, 16))
    save_case(path, GroupedTrial("grouped-triton-emu", "token_isolation", p,
                                 GroupedPoison(group_row_pad=0x7F, victim=2, victim_byte=0x08)))
    return json.loads(path.read_text())


def _mutate(doc: dict, change: str) -> str | dict:
    doc = json.loads(json.dumps(doc))
    if change == "k":
        doc["problem"]["k"] = 40
    elif change == "topk_ids":
        doc["problem"]["topk_ids"] = "x"
    elif change == "property":
        doc["property"] = "row_isolation"
    elif change == "poison":
        doc["poison"]["group_row_pad"] = 300
    elif change == "missing":
        del doc["problem"]
    elif change == "digest":
        doc["digest"] = "zz"
    elif change == "unknown":
        doc["colour"] = "red"
    elif change == "row_align":
        doc["problem"]["row_align"] = [1, 2, 8]
    elif change == "victim":
        doc["poison"]["victim"] = 7
    elif change == "json":
        return json.dumps(doc)[:-20]
    return doc


MALFORMED = {"k": "problem.k=40: expected a multiple of 16",
             "topk_ids": "problem.topk_ids='x': expected a list of one non-empty list",
             "property": "property='row_isolation': expected one of",
             "poison": "poison.group_row_pad=300: expected a byte",
             "missing": "missing field 'problem'",
             "digest": "digest='zz': expected a sha256 hex digest",
             "unknown": "unknown field 'colour'",
             "row_align": "problem.row_align=[1, 2, 8]: expected 3 values from",
             "victim": "poison.victim=7: expected an expert index < 3",
             "json": "invalid JSON at line"}


def test_malformed_grouped_case_files_name_the_field_the_value_and_what_was_expected(tmp_path):
    from harness.grouped.cases import GroupedCaseError, read_case

    good = _valid_case(tmp_path / "good.json")
    assert read_case(tmp_path / "good.json").trial.problem.splits == (2, 0, 1)
    for change, expected in MALFORMED.items():
        bad = tmp_path / f"bad-{change}.json"
        doc = _mutate(good, change)
        bad.write_text(doc if isinstance(doc, str) else json.dumps(doc))
        with pytest.raises(GroupedCaseError) as exc:
            read_case(bad)
        msg = str(exc.value)
        assert msg.startswith(f"{bad}: ") and expected in msg and "\n" not in msg, (change, msg)
    # the command line says the same in one line
    for change in ("poison",):
        bad = tmp_path / f"bad-{change}.json"
        _one_line_error(cli(tmp_path, "replay", str(bad)), str(bad), MALFORMED[change])


@pytest.mark.parametrize("key, value", [("id", "../evil"), ("created", "yesterday"), ("digest", "abc"),
                                        ("note", 3), ("expect", "fail"), ("tracks", 37563), ("replay", "a\nb"),
                                        ("reproduced", "SM90"), ("reproduced", [{"date": "today"}])])
def test_grouped_and_dense_case_files_check_their_record_fields_alike(tmp_path, key, value):
    """The fields a case file has beside its trial are checked by one routine
    (harness.cases.parse_record_fields): both schemas name the same field, value and expectation
    (where a grouped file may leave a field out, its message adds "or null")."""
    from harness.cases import CaseFileError, load_case
    from harness.grouped.cases import GroupedCaseError, read_case

    dense = json.loads((Path(__file__).parents[1] / "regressions/cases/torch-emu-fp16-overflow-m127.json").read_text())
    errors = []
    for doc, read, error in ((dense, lambda f: load_case(f, check_backend=False), CaseFileError),
                             (_valid_case(tmp_path / "good.json"), read_case, GroupedCaseError)):
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({**doc, key: value}))
        with pytest.raises(error) as exc:
            read(bad)
        errors.append((exc.value.field, exc.value.value, str(exc.value)))
    assert errors[0] == errors[1]
    field, bad_value, msg = errors[0]
    assert field.startswith(key) and msg.startswith(f"{tmp_path / 'bad.json'}: ") and field in msg, msg


def test_backends_json_lists_the_grouped_level(capsys):
    """(The table's grouped block: tests/test_front_door.py::test_backends_table_has_a_header_and_aligned_columns.)"""
    from harness import cli as cli_mod

    assert cli_mod.main(["backends", "--json"]) == 0
    plain = {b["name"] for b in json.loads(capsys.readouterr().out)["backends"] if b["level"] == "grouped"}
    # no mutants without --mutants; the fused-MoE backends (harness.grouped.moe) are grouped-level too
    assert plain == {"grouped-triton-emu", "grouped-triton-emu-fused", "moe-triton-emu", "moe-torch-w4a16-emu",
                     "flashinfer-cutlass-moe", "flashinfer-trtllm-moe", "grouped-te-split-quantize",
                     "grouped-te-split-quantize-rht", "vllm-marlin-moe", "vllm-cutlass-moe", "sglang-cutlass-moe"}
    assert cli_mod.main(["backends", "--json", "--mutants"]) == 0
    doc = json.loads(capsys.readouterr().out)
    grouped = {b["name"]: b for b in doc["backends"] if b["level"] == "grouped"}
    assert grouped["grouped-triton-emu-fused"]["quantizes"] and not grouped["grouped-triton-emu"]["quantizes"]
    assert {"grouped-triton-emu", "grouped-triton-emu-fused", MUTANT} <= set(grouped)
    emulated = {n: b for n, b in grouped.items() if not n.startswith(("flashinfer-", "grouped-te-", "vllm-", "sglang-"))}
    assert all(b["available"] and b["reason"] for b in emulated.values())  # CPU: the Triton interpreter / torch
    if not torch.cuda.is_available():  # FlashInfer's MoE kernels need a GPU: unavailable, with the reason
        assert all(not b["available"] and "CUDA" in b["reason"] for n, b in grouped.items()
                   if n.startswith("flashinfer-"))
        # TransformerEngine's split quantize: unavailable, the reason naming the package when it is absent
        te = [b for n, b in grouped.items() if n.startswith("grouped-te-")]
        assert len(te) == 2 and all(not b["available"] and b["reason"] for b in te)
    # the serving engines' adapters: listed where the engine is missing, unavailable with the reason
    assert all(not b["available"] and b["reason"] for n, b in grouped.items()
               if n.startswith(("vllm-", "sglang-")) and (not torch.cuda.is_available() or b["library_version"] is None))


def test_fuzz_selects_grouped_backends_and_refuses_unknown_ones(tmp_path, capsys):
    _one_line_error(cli(tmp_path, "fuzz", "--backends", "nope"), "unknown backend 'nope'; known backends:",
                    "grouped-triton-emu, grouped-triton-emu-fused, moe-torch-w4a16-emu, moe-triton-emu")
    _in_process_error(capsys, ["fuzz", "--backends", "grouped-triton-emu", "--properties", "row_isolation"],
                      "applies to none of the selected backends (grouped-triton-emu); their properties are: "
                      "grouped-level: reference_agreement")
    res = cli(tmp_path, "fuzz", "--backends", "grouped-triton-emu", "--properties", "zero_token_groups",
              "--profile", "ci", "--examples", "1", "-n", "0", "--results", "results", "--report", "r.html")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    records = [json.loads(line) for f in (tmp_path / "results" / "latest").glob("results-*.jsonl")
               for line in f.read_text().splitlines()]
    assert records and {(r["backend"], r["property"], r["level"]) for r in records} == \
        {("grouped-triton-emu", "zero_token_groups", "grouped")}
    assert "grouped-triton-emu" in (tmp_path / "r.html").read_text()


# ----------------------------------------------------------------------------------------------
# The report's per-expert view
# ----------------------------------------------------------------------------------------------
def _grouped_results(root: Path) -> dict:
    """A run directory of two real grouped failures (recorded as the property session records them):
    a per-expert scale stride bug (expert 2 wrong, expert 0 right, expert 1 without tokens) and
    another expert's padding reaching real tokens (token isolation)."""
    from harness.grouped import records
    from harness.grouped.checks import execute
    from harness.grouped.problem import GroupedPoison, GroupedProblem, GroupedTrial
    from harness.results import make_record

    (root / "cases").mkdir(parents=True)
    trials = [
        GroupedTrial("mutant-grouped-expert-scale-stride", "reference_agreement",
                     GroupedProblem.from_splits([2, 0, 3], 1, n=40, k=32, seed=2, row_align=(1, 1, 1)),
                     GroupedPoison(group_row_pad=0x7F, n_pad=0x7E)),
        GroupedTrial("mutant-grouped-unpadded-sf-offsets", "token_isolation",
                     GroupedProblem.from_splits([1, 2], 1, n=16, k=16, seed=1, row_align=(1, 1)),
                     GroupedPoison(group_row_pad=0x7F, victim=0, victim_byte=0x7F)),
    ]
    lines = []
    for i, t in enumerate(trials):
        out = execute(t)
        assert out.status == "fail", out.reason
        ref = records.save_failure_case(root, t, out, {"device": "cpu"})
        lines.append(make_record(t, out, worker="gw0", test=f"properties/test_grouped.py::t[{i}]", level="grouped",
                                 case_file=ref, extra={"experts": records.expert_rows(t, out.measure),
                                                       "scope": "case", "final": True}))
    (root / "results-gw0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return {"records": lines}


def _section(html: str, sid: str) -> str:
    m = re.search(rf'<section id="{sid}"[^>]*>(.*?)</section>', html, re.S)
    assert m, sid
    return m.group(1)


def test_the_report_shows_grouped_failures_expert_by_expert(tmp_path):
    from harness.report import render_report

    facts = _grouped_results(tmp_path / "run")
    stride = facts["records"][0]["experts"]
    assert [e["disagrees"] for e in stride] == [False, False, True]  # expert 0 right, 1 empty, 2 wrong
    assert stride[0]["max_err_units"] <= 1 < stride[2]["max_err_units"] and stride[1]["role"] == "zero-token"
    # group row padding only where an expert has rows; every expert's weight has N padding (n=40)
    assert [[x["region"] for x in e["padding"]] for e in stride] == \
        [["group_row_pad", "n_pad"], ["n_pad"], ["group_row_pad", "n_pad"]]
    html = render_report(tmp_path / "run", tmp_path / "r.html").read_text()
    grouped = _section(html, "grouped")
    tables = re.findall(r'<table class="experts">(.*?)</table>', grouped, re.S)
    assert len(tables) == 2
    rows = re.findall(r"<tr class=\"(fail|)\">(.*?)</tr>", tables[0], re.S)
    assert [cls for cls, _ in rows] == ["", "", "fail"]
    cells = [re.sub(r"<[^>]+>", "|", body) for _, body in rows]
    assert "zero-token" in cells[1] and "group_row_pad=0x7F (nan)" in cells[2] and "n_pad=0x7E (max)" in cells[1]
    iso = [re.sub(r"<[^>]+>", "|", body) for _, body in re.findall(r"<tr class=\"(fail|)\">(.*?)</tr>", tables[1], re.S)]
    assert "victim" in iso[0]
    assert any("disagrees" in row for row in iso[1:])  # the tokens another expert's padding reached
    # each failure card links to its per-expert table, and the tables back to the cards
    assert len(re.findall(r'href="#gf\d+"', _section(html, "failures"))) == 2
    assert 'href="#grouped"' in html


@pytest.mark.skipif(not Path(os.environ.get("NVFP4_CHROMIUM", "/usr/bin/chromium")).exists(),
                    reason="chromium not installed (the CI script installs it: apt-get install chromium)")
def test_the_grouped_report_in_a_browser_loads_nothing_and_does_not_overflow(tmp_path):
    from harness.report import render_report
    from harness.report.browser import check_overflow
    from test_report import _load_in_chromium

    _grouped_results(tmp_path / "run")
    page = render_report(tmp_path / "run", tmp_path / "r.html")
    dom, requests, blocked = _load_in_chromium(tmp_path, page)
    assert requests == [] and blocked == [], (requests, blocked)
    assert dom.count('<table class="experts">') == 2
    for check in check_overflow(page, (1280, 1920)):
        assert check.overflow == [], (check.width, check.overflow)


def test_sanitize_reruns_grouped_case_files(tmp_path, capsys):
    """A run's cases/ folder may hold grouped cases: ``sanitize`` reruns them as grouped trials
    (here, without a GPU, it says in one line that it cannot sanitize, and records nothing)."""
    from harness.grouped.problem import GroupedTrial
    from harness.sanitizer.run import EXIT_CANNOT_RUN, choose_trials, command

    _valid_case(tmp_path / "cases" / "g.json")
    ((trial, source),) = choose_trials([str(tmp_path / "cases")])
    assert isinstance(trial, GroupedTrial) and trial.property == "token_isolation" and trial.poison.victim == 2
    assert source == str(tmp_path / "cases" / "g.json")
    if torch.cuda.is_available():
        return
    assert command([str(tmp_path / "cases")], results=str(tmp_path / "out")) == EXIT_CANNOT_RUN
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("nvfp4-harness: cannot sanitize:"), err
    assert not (tmp_path / "out").exists()
