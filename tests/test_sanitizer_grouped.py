"""compute-sanitizer over the grouped (MoE) level, on the CPU: the grouped pipeline's
unwritten-padding mode, the child's operand map of grouped and fused-MoE trials (every expert's
section and weight its own buffer, named padding regions), and the sweep's choice of trials
(grouped and fused-MoE backends sampled, grouped case files rerun).  Running the sanitizer itself
needs a GPU: tests/test_sanitizer_gpu.py and bench/sanitizer_run.py.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from harness import sanitizer as sz
from harness.grouped.moe import build_moe_operands
from harness.grouped.pipeline import build_grouped_operands
from harness.grouped.problem import GroupedPoison, GroupedProblem, GroupedTrial, MoeProblem
from harness.layouts import ScaleLayout, offset_grid
from harness.sanitizer import run as sr
from harness.sanitizer.child import grouped_entries, moe_entries, run_child

REPO = Path(__file__).resolve().parents[1]
# expert 1 has no tokens; expert 0's 3 tokens are padded to 8 rows (group row padding)
GROUPED = GroupedProblem.from_splits([3, 0, 2], 1, n=40, k=80, seed=1, row_align=(8, 1, 1))
MOE = MoeProblem.from_splits([2, 0, 1], 1, hidden=32, intermediate=16, seed=1, row_align=(8, 1, 1))
POISON = GroupedPoison(group_row_pad=0x11, n_pad=0x22, k_tail=0x33, data=0x44)


def _at(f_address: int, buffers: list[dict]) -> tuple:
    f = sz.locate(sz.Finding("initcheck", "uninitialized", access="read", address=f_address), buffers)
    return f.buffer, f.region, f.row, f.col, f.inside


def _scale_address(t: torch.Tensor, row: int, kb: int) -> int:
    """Address of logical scale (row, kb) of a 128x4 scale buffer ``t`` [rows, kblocks]."""
    return t.data_ptr() + int(offset_grid(ScaleLayout.SWIZZLED_128x4, t.shape[0], t.shape[1])[row, kb])


def _no_overlap(buffers: list[dict]) -> None:
    for b in buffers:
        assert b["nbytes"] == b["shape"][0] * b["shape"][1] * b["elem_bytes"], b["name"]
    spans = sorted((b["data_ptr"], b["data_ptr"] + b["nbytes"], b["name"]) for b in buffers)
    assert all(e0 <= s1 for (_, e0, _), (s1, _, _) in zip(spans, spans[1:])), "buffers overlap"


# ----------------------------------------------------------------------------------------------
# The grouped pipeline's unwritten-padding mode
# ----------------------------------------------------------------------------------------------
def _uninitialized_fill() -> int:
    """The byte PyTorch's deterministic mode writes into a fresh uint8 ``torch.empty`` (observed)."""
    return int(torch.empty(4, dtype=torch.uint8)[0])


@pytest.mark.parametrize("level", ["grouped", "moe"])
def test_unwritten_padding_leaves_only_unreadable_scale_padding_unwritten(level: str) -> None:
    """Every scale byte of every expert: in the regions the sanitizer calls unwritten (group row
    padding, the layout's rounding) the unwritten mode leaves torch.empty's bytes where the normal
    mode writes its poison; everywhere else (real scales, weight N padding, K tail) and in every
    packed byte both modes agree."""
    prev = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True, warn_only=True)  # torch.empty filled with a known byte
    try:
        fill = _uninitialized_fill()
        if fill not in (0xFF, 0x7F):
            pytest.skip(f"this torch does not fill uninitialized uint8 memory (saw 0x{fill:02X})")
        if level == "grouped":
            normal = build_grouped_operands(GROUPED, POISON, k_align=96)
            left = build_grouped_operands(GROUPED, POISON, k_align=96, unwritten_padding=True)
            pairs = [(normal.a, left.a, "a"), (normal.w, left.w, "w")]
            entries_of = grouped_entries
        else:
            normal = build_moe_operands(MOE, POISON)
            left = build_moe_operands(MOE, POISON, unwritten_padding=True)
            pairs = [(normal.a1, left.a1, "a1"), (normal.w13, left.w13, "w13"), (normal.w2, left.w2, "w2")]
            entries_of = moe_entries
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])
    for n_buf, l_buf, _ in pairs:
        assert torch.equal(n_buf.packed, l_buf.packed)
    seen: dict[str, int] = {}
    poisoned = {POISON.group_row_pad, POISON.n_pad, POISON.k_tail}
    for entry in entries_of(left):
        if entry["kind"] != "scales":
            continue
        prefix = entry["name"].split(".expert")[0]
        n_buf = next(n for n, _, name in pairs if name == prefix)
        l_buf = next(l for _, l, name in pairs if name == prefix)
        base = entry["data_ptr"] - l_buf.scales.data_ptr()
        flat_l, flat_n = l_buf.scales.reshape(-1), n_buf.scales.reshape(-1)
        for off in range(entry["nbytes"]):
            region, _, _ = sz.region_at(entry, off)
            seen[region] = seen.get(region, 0) + 1
            if region in sz.UNWRITTEN_REGIONS:
                assert flat_l[base + off] == fill, (entry["name"], off, region)
                assert int(flat_n[base + off]) in poisoned, (entry["name"], off, region)  # the normal mode poisons it
            else:
                assert flat_l[base + off] == flat_n[base + off], (entry["name"], off, region)
    assert seen["real"] and seen["group_row_pad"] and seen["layout_pad"], seen
    if level == "grouped":  # N = 40 padded to 48; K = 80 in a K of 96: one k-block of K tail (both written)
        assert seen["n_pad"] and seen["k_tail"], seen


# ----------------------------------------------------------------------------------------------
# The operand map of grouped and fused-MoE operands (addresses of the tensors themselves)
# ----------------------------------------------------------------------------------------------
def test_grouped_map_names_each_experts_section_padding_and_weights() -> None:
    ops = build_grouped_operands(GROUPED, POISON, unwritten_padding=True)
    bufs = grouped_entries(ops)
    _no_overlap(bufs)
    names = {b["name"] for b in bufs}
    # the zero-token expert occupies no rows of the grouped buffer: no section of its own
    assert {"a.expert[0].packed", "a.expert[0].scales", "a.expert[2].packed", "a.expert[2].scales"} <= names
    assert not any(n.startswith("a.expert[1].") for n in names)
    assert {f"w.expert[{e}].{part}" for e in range(3) for part in ("packed", "scales")} <= names
    assert {"hidden", "input_scales", "topk_ids", "topk_weights", "order", "slot", "alpha", "w.global_scales"} <= names
    a, w = ops.a, ops.w
    r0 = a.row_offsets[0]
    # a padding row of expert 0's section (rows 3..7 of its 8): packed and scales
    assert _at(a.packed[r0 + 4, 5:].data_ptr(), bufs) == ("a.expert[0].packed", "group_row_pad", 4, 5, True)
    assert _at(a.packed[r0 + 2, 5:].data_ptr(), bufs) == ("a.expert[0].packed", "real", 2, 5, True)
    sec0 = a.scales[a.sf_row_offsets[0]:a.sf_row_offsets[1]]
    assert _at(_scale_address(sec0, 3, 1), bufs) == ("a.expert[0].scales", "group_row_pad", 3, 1, True)
    assert _at(_scale_address(sec0, 100, 0), bufs) == ("a.expert[0].scales", "group_row_pad", 100, 0, True)
    assert _at(_scale_address(sec0, 2, 4), bufs)[:2] == ("a.expert[0].scales", "real")
    assert _at(_scale_address(sec0, 2, 5), bufs)[:2] == ("a.expert[0].scales", "layout_pad")  # K=80: 5 k-blocks of 8
    # right after expert 0's section comes expert 2's (the zero-token expert 1 has none)
    assert a.row_offsets[1] == a.row_offsets[2]
    assert _at(a.packed[a.row_offsets[2]].data_ptr(), bufs) == ("a.expert[2].packed", "real", 0, 0, True)
    # the zero-token expert's weight is mapped as its own
    assert _at(w.packed[1, 7, 3:].data_ptr(), bufs) == ("w.expert[1].packed", "real", 7, 3, True)
    assert _at(_scale_address(w.scales[1], 0, 0), bufs)[:2] == ("w.expert[1].scales", "real")
    # weight N padding (rows 40..47 of n_alloc 48) and the 128-row tile's own rounding
    assert _at(w.packed[2, 45].data_ptr(), bufs) == ("w.expert[2].packed", "n_pad", 45, 0, True)
    assert _at(_scale_address(w.scales[2], 45, 0), bufs)[:2] == ("w.expert[2].scales", "n_pad")
    assert _at(_scale_address(w.scales[2], 60, 0), bufs)[:2] == ("w.expert[2].scales", "layout_pad")
    # the per-expert scalars: the column is the expert
    assert _at(ops.alpha[2:].data_ptr(), bufs) == ("alpha", "real", 0, 2, True)


def test_moe_map_names_fc1_sections_and_both_weights() -> None:
    ops = build_moe_operands(MOE, POISON, unwritten_padding=True)
    bufs = moe_entries(ops)
    _no_overlap(bufs)
    names = {b["name"] for b in bufs}
    assert not any(n.startswith("a1.expert[1].") for n in names)  # expert 1 has no tokens
    assert {"w13.expert[1].scales", "w2.expert[1].packed", "fc1_input_scales", "fc2_input_scales", "alpha2"} <= names
    a1 = ops.a1
    # expert 0: 2 tokens padded to 8 rows
    assert _at(a1.packed[a1.row_offsets[0] + 7].data_ptr(), bufs) == ("a1.expert[0].packed", "group_row_pad", 7, 0,
                                                                      True)
    sec0 = a1.scales[a1.sf_row_offsets[0]:a1.sf_row_offsets[1]]
    assert _at(_scale_address(sec0, 2, 0), bufs)[:2] == ("a1.expert[0].scales", "group_row_pad")
    # the zero-token expert's FC2 weight; W13 [2I = 32, hidden] has no N padding, W2 [hidden = 32, I] neither
    assert _at(ops.w2.packed[1, 3].data_ptr(), bufs) == ("w2.expert[1].packed", "real", 3, 0, True)
    assert _at(_scale_address(ops.w13.scales[2], 40, 0), bufs)[:2] == ("w13.expert[2].scales", "layout_pad")
    # one byte past the last weight: attributed to it, outside
    end = ops.w2.packed.data_ptr() + ops.w2.packed.numel()
    f = sz.locate(sz.Finding("memcheck", "out of bounds", access="read", address=end), bufs)
    if f.buffer == "w2.expert[2].packed":  # (another buffer may lie nearer)
        assert (f.region, f.inside, f.distance) == ("beyond", False, 1)


# ----------------------------------------------------------------------------------------------
# The child process on grouped and fused-MoE trials (run here without the sanitizer)
# ----------------------------------------------------------------------------------------------
def _child(tmp_path: Path, trial: GroupedTrial) -> tuple[int, dict]:
    (tmp_path / "spec.json").write_text(json.dumps({"trial": trial.to_dict()}))
    rc = run_child(tmp_path / "spec.json", tmp_path / "map.json")
    return rc, json.loads((tmp_path / "map.json").read_text())


@pytest.mark.parametrize("backend,prop,problem,result", [
    ("grouped-triton-emu", "reference_agreement", GROUPED, "out"),
    ("grouped-triton-emu", "token_isolation", GROUPED, "out"),
    ("grouped-triton-emu-fused", "grouped_bytes", GROUPED, "result.expert[0].scales"),
    ("moe-triton-emu", "reference_agreement", MOE, "out"),
])
def test_child_runs_grouped_and_moe_trials(tmp_path: Path, backend: str, prop: str, problem, result: str) -> None:
    poison = GroupedPoison(group_row_pad=0x7F, n_pad=0x7F, victim=2 if prop == "token_isolation" else None)
    rc, doc = _child(tmp_path, GroupedTrial(backend, prop, problem, poison))
    assert rc == 0 and doc["schema"] == sz.MAP_SCHEMA and doc["status"] == "done", doc["error"]
    _no_overlap(doc["buffers"])
    bufs = {b["name"]: b for b in doc["buffers"]}
    assert result in bufs
    side = "a1" if isinstance(problem, MoeProblem) else "a"
    assert f"{side}.expert[0].scales" in bufs and f"{side}.expert[1].scales" not in bufs
    if result == "out":  # [tokens, N or N padded]: columns past N are N padding
        out = bufs["out"]
        assert out["shape"][0] == problem.tokens
        assert out["real_cols"] == (problem.hidden if isinstance(problem, MoeProblem) else problem.n)
    sec = bufs[f"{side}.expert[0].scales"]
    off = int(offset_grid(ScaleLayout.SWIZZLED_128x4, *sec["shape"])[problem.splits[0], 0])  # first padding row
    assert _at(sec["data_ptr"] + off, doc["buffers"])[:3] == (f"{side}.expert[0].scales", "group_row_pad",
                                                             problem.splits[0])


@pytest.mark.parametrize("backend,prop,problem,why", [
    ("grouped-triton-emu", "grouped_bytes", GROUPED, "quantizes nothing"),
    ("moe-triton-emu", "reference_agreement", GROUPED, "fused-MoE layer"),
    ("grouped-triton-emu", "reference_agreement", MOE, "not a fused-MoE layer"),
])
def test_child_says_when_a_grouped_trial_does_not_apply(tmp_path: Path, backend, prop, problem, why) -> None:
    """As the grouped runner does (a skip with the reason), never a pass: the parent classifies
    status ``unsupported`` as a skip."""
    rc, doc = _child(tmp_path, GroupedTrial(backend, prop, problem))
    assert rc == 0 and doc["status"] == "unsupported" and why in doc["error"], doc


# ----------------------------------------------------------------------------------------------
# Choosing what the sweep sanitizes
# ----------------------------------------------------------------------------------------------
GROUPED_BACKENDS = ["grouped-triton-emu", "grouped-triton-emu-fused", "moe-triton-emu"]


def test_all_backends_include_the_grouped_and_moe_emulations() -> None:
    names = sr._backend_names("all")
    assert set(GROUPED_BACKENDS) <= set(names), names
    assert "triton-emu-128x4" in names
    assert sr._backend_names(",".join(GROUPED_BACKENDS)) == GROUPED_BACKENDS
    from harness.backends.registry import UnknownBackendError

    with pytest.raises(UnknownBackendError, match="grouped backends: .*moe-triton-emu"):
        sr._backend_names("no-such-backend")


def test_sample_draws_grouped_and_moe_trials_reproducibly() -> None:
    a = sr.sample_trials(["moe-triton-emu", "grouped-triton-emu", "quant-triton-8x4"], 2, seed=3)
    assert a == sr.sample_trials(["moe-triton-emu", "grouped-triton-emu", "quant-triton-8x4"], 2, seed=3)
    assert [t.backend for t in a] == ["moe-triton-emu"] * 2 + ["grouped-triton-emu"] * 2 + ["quant-triton-8x4"] * 2
    assert all(isinstance(t, GroupedTrial) and t.property == "reference_agreement" for t in a[:4])
    assert all(isinstance(t.problem, MoeProblem) for t in a[:2])
    assert all(isinstance(t.problem, GroupedProblem) for t in a[2:4])
    assert [sr.level_of(t) for t in a] == ["grouped"] * 4 + ["quantizer"] * 2
    assert set(sr.shape_of(a[0])) == {"tokens", "experts", "splits", "hidden", "intermediate"}


def _grouped_case(path: Path) -> GroupedTrial:
    from harness.grouped.cases import save_case

    trial = GroupedTrial("grouped-triton-emu", "token_isolation", GROUPED, GroupedPoison(group_row_pad=0x7F, victim=2))
    save_case(path, trial)
    return trial


def _sweep_module():
    spec = importlib.util.spec_from_file_location("sanitizer_run", REPO / "bench" / "sanitizer_run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_sweep_reruns_grouped_case_files_and_samples_grouped_backends(tmp_path: Path) -> None:
    """bench/sanitizer_run.py's runs: a corpus holding a grouped case file and a GEMM-level one
    reruns both, and ``--part sample --backends`` of grouped names draws grouped trials."""
    trial = _grouped_case(tmp_path / "corpus" / "g.json")
    dense = REPO / "regressions" / "cases" / "trtllm-8x4-nan-padding-rows-m1.json"
    (tmp_path / "corpus" / dense.name).write_text(dense.read_text())
    sweep = _sweep_module()
    runs = sweep.sweep_runs("corpus", str(tmp_path / "corpus"), "all", 1, 0, ["memcheck", "initcheck"])
    assert [(r[1], r[2]) for r in runs] == [("corpus:g.json", "memcheck"), ("corpus:g.json", "initcheck"),
                                           (f"corpus:{dense.name}", "memcheck"), (f"corpus:{dense.name}", "initcheck")]
    assert runs[0][0] == trial
    runs = sweep.sweep_runs("sample", "", ",".join(GROUPED_BACKENDS), 1, 0, ["memcheck"])
    assert [r[0].backend for r in runs] == GROUPED_BACKENDS
    assert all(isinstance(r[0], GroupedTrial) and r[1] == "sample" for r in runs)


def test_grouped_finding_becomes_a_grouped_case_that_replays_with_sanitize(tmp_path: Path) -> None:
    from harness.cli import build_parser
    from harness.grouped.cases import read_case

    text = "========= COMPUTE-SANITIZER\n========= ERROR SUMMARY: 1 error\n"
    res = sr.classify("initcheck", text, None, {"status": "done", "buffers": []})
    res.trial = GroupedTrial("grouped-triton-emu", "reference_agreement", GROUPED)
    res.findings = [sz.Finding("initcheck", "uninitialized", kernel="_gemm_kernel", access="read",
                               buffer="a.expert[0].scales", region="group_row_pad", inside=True, row=3, col=0)]
    ref = sr.save_finding_case(tmp_path, res, "grouped")
    case = read_case(tmp_path / ref)
    assert case.trial == res.trial
    assert case.observed["sanitizer"]["findings"][0]["region"] == "group_row_pad"
    args = build_parser().parse_args(case.replay.split()[1:])
    assert args.command == "replay" and args.sanitize and args.tool == "initcheck"
    rec = sr.record_of(res, level="grouped", case_file=ref, test="sanitize test")
    assert rec["level"] == "grouped" and list(rec["problem"]["row_align"]) == [8, 1, 1] and rec["a_layout"] is None
    assert "tokens=5" in sr.describe(res) and "splits=[3,0,2]" in sr.describe(res)
    # the record and its case file in the report, with the expert's buffer and region
    from harness import results as records
    from harness.report import render_report

    stream = records.ResultStream(tmp_path, "sanitizer")
    stream.write(rec)
    stream.close()
    records.finalize(tmp_path)
    html = render_report(tmp_path, tmp_path / "index.html").read_text()
    assert "sanitizer:initcheck" in html and "a.expert[0].scales [group_row_pad]" in html
