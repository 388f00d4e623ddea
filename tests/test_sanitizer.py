"""compute-sanitizer as a second oracle (harness/sanitizer/), on the CPU.

The parser and the address-to-region mapping are tested on real sanitizer output recorded on an
H200 (tests/data/sanitizer/README.md says how); the operand map, the unwritten-padding pipeline
mode and the command line's refusals are tested here too.  Running the sanitizer itself needs a
GPU: tests/test_sanitizer_gpu.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from harness import sanitizer as sz
from harness.sanitizer import run as sr
from harness.sanitizer.child import run_child
from harness.kernels.nvfp4 import LEAVE, quantize_into
from harness.layouts import OperandRole, Region, ScaleLayout, offset_grid, padded_shape, padding_map
from harness.pipeline import build_gemm_operands, fill_read_padding
from harness.problem import GemmProblem, Poison
from harness.trial import Trial

DATA = Path(__file__).parent / "data" / "sanitizer"
REPO = Path(__file__).resolve().parents[1]


def recorded(name: str) -> str:
    return (DATA / name).read_text()


def script_buffer(text: str) -> dict:
    """The capture script's own print of its buffer (``x 0x7f.. 4000``) as an operand-map entry."""
    m = re.search(r"^(x|out) (0x[0-9a-f]+) (\d+)$", text, re.M)
    assert m, "the capture script printed its buffer"
    n = int(m.group(3))
    return {"name": m.group(1), "kind": "dense", "data_ptr": int(m.group(2), 16), "nbytes": n, "elem_bytes": 4,
            "shape": [1, n // 4], "real_rows": 1, "real_cols": n // 4, "row_region": None, "col_region": None}


# ----------------------------------------------------------------------------------------------
# Parsing recorded output
# ----------------------------------------------------------------------------------------------
def test_text_memcheck_write_past() -> None:
    rep = sz.parse_text(recorded("memcheck-write-past.txt"), "memcheck")
    assert rep.error_count == 3 and len(rep.api_errors) == 2 and not rep.refusals
    (f,) = rep.findings
    assert (f.error, f.access, f.size, f.space, f.kernel, f.source) == \
        ("out of bounds", "write", 4, "global", "write_past", "oob.py:5")
    assert (f.thread, f.block) == ("(122,0,0)", "(0,0,0)")
    buf = script_buffer(recorded("memcheck-write-past.txt"))
    assert f.address == buf["data_ptr"] + 4000
    assert f.allocation == {"relation": "after", "distance": 1, "base": buf["data_ptr"], "size": 4000}


def test_text_memcheck_read_past_counts_printed_and_total() -> None:
    rep = sz.parse_text(recorded("memcheck-read-past.txt"), "memcheck")
    assert rep.error_count == 6  # 4 printed reads + 2 API errors; the summary also counts one not printed
    assert [f.access for f in rep.findings] == ["read"] * 4
    assert {f.kernel for f in rep.findings} == {"read_past"}
    assert [f.allocation["relation"] for f in rep.findings] == ["after", "after", "after", "before"]


def test_text_initcheck_uninitialized_read() -> None:
    rep = sz.parse_text(recorded("initcheck-uninitialized-read.txt"), "initcheck")
    assert rep.error_count == 1000 and len(rep.findings) == 5 and not rep.api_errors
    for f in rep.findings:
        assert (f.tool, f.error, f.access, f.size, f.kernel) == ("initcheck", "uninitialized", "read", 4, "read_uninit")
        assert f.allocation is None  # initcheck names the address only
    assert [f.address for f in rep.findings] == sorted(f.address for f in rep.findings)


def test_xml_matches_the_text_of_the_same_run() -> None:
    xml_rep = sz.parse_xml(recorded("memcheck-write-past.xml"), "memcheck")
    text_rep = sz.parse_text(recorded("memcheck-write-past-xml-run.txt"), "memcheck")
    (x,) = xml_rep.findings
    (t,) = text_rep.findings
    for key in ("error", "access", "size", "space", "kernel", "address", "source", "thread", "block"):
        assert getattr(x, key) == getattr(t, key), key
    assert len(xml_rep.api_errors) == 2
    merged = sz.merge_reports(xml_rep, text_rep)
    assert merged.findings[0].allocation == t.allocation and merged.error_count == 3


def test_xml_refuses_other_files() -> None:
    with pytest.raises(ValueError, match="not compute-sanitizer XML"):
        sz.parse_xml("<html></html>", "memcheck")
    with pytest.raises(ValueError, match="not compute-sanitizer XML"):
        sz.parse_xml(recorded("memcheck-write-past.txt"), "memcheck")


# ----------------------------------------------------------------------------------------------
# Mapping addresses to operands
# ----------------------------------------------------------------------------------------------
def test_locate_agrees_with_the_sanitizers_nearest_allocation() -> None:
    """Map the recorded out-of-bounds reads with the script's buffer and the other allocation the
    sanitizer names: relation and distance must be the tool's own, for every finding."""
    text = recorded("memcheck-read-past.txt")
    rep = sz.parse_text(text, "memcheck")
    x = script_buffer(text)
    other = next(f.allocation for f in rep.findings if f.allocation["base"] != x["data_ptr"])
    y = dict(x, name="next", data_ptr=other["base"], nbytes=other["size"])
    for f in rep.findings:
        tool_says = dict(f.allocation)
        sz.locate(f, [x, y])
        assert f.inside is False
        assert f.distance == tool_says["distance"]
        assert f.region == {"after": "beyond", "before": "before"}[tool_says["relation"]]
        assert f.buffer == ("x" if tool_says["base"] == x["data_ptr"] else "next")


def test_locate_inside_gives_element_and_region() -> None:
    text = recorded("initcheck-uninitialized-read.txt")
    buf = script_buffer(text)
    buf.update(shape=[10, 100], real_rows=8, real_cols=96, row_region="m_pad", col_region="k_tail")
    for f in sz.parse_text(text, "initcheck").findings:
        sz.locate(f, [buf])
        elem = (f.address - buf["data_ptr"]) // 4
        assert f.inside and f.buffer == "x" and f.distance == 0
        assert (f.row, f.col) == divmod(elem, 100)
        assert f.region == ("k_tail" if f.col >= 96 else "real")
    grouped = sz.group_findings(sz.parse_text(text, "initcheck").findings)
    assert len(grouped) == 1 and grouped[0].count == 5


@pytest.mark.parametrize("layout", list(ScaleLayout))
@pytest.mark.parametrize("role", list(OperandRole))
def test_scale_regions_refine_the_padding_map(layout: ScaleLayout, role: OperandRole) -> None:
    """Every byte of a scale buffer: the sanitizer's region agrees with layouts.padding_map, split
    further into what lies inside the allocated rows/K (n_pad, k_tail) and beyond it (layout_pad)."""
    rows, kblocks = (5, 3) if role is OperandRole.ACTIVATION else (40, 3)
    data_rows = rows if role is OperandRole.ACTIVATION else 48
    data_kb = 5
    pm = padding_map(layout, role, rows, kblocks, data_rows, data_kb)
    buf = torch.empty(pm.regions.shape, dtype=torch.uint8)
    entry = sz.scales_entry("s", buf, layout=layout.value, role=role.value, rows=rows, kblocks=kblocks,
                            data_rows=data_rows, data_kblocks=data_kb)
    seen = set()
    for off in range(buf.numel()):
        region, r, kb = sz.region_at(entry, off)
        seen.add(region)
        base = Region(int(pm.regions.reshape(-1)[off]))
        allocated = r < data_rows and kb < data_kb
        want = {Region.REAL: "real", Region.K_TAIL: "k_tail" if allocated else "layout_pad",
                Region.M_PAD: "m_pad", Region.N_PAD: "n_pad" if allocated else "layout_pad"}[base]
        assert region == want, (off, r, kb)
    assert {"real", "k_tail"} <= seen
    if layout is not ScaleLayout.LINEAR or role is OperandRole.WEIGHT:  # a linear activation has no row padding
        assert "m_pad" in seen or "n_pad" in seen


# ----------------------------------------------------------------------------------------------
# The unwritten-padding pipeline mode
# ----------------------------------------------------------------------------------------------
SENTINEL = 0xA5


@pytest.mark.parametrize("layout", list(ScaleLayout))
def test_fill_read_padding_leaves_only_unreadable_padding_unwritten(layout: ScaleLayout) -> None:
    n, n_alloc, k, k_alloc = 40, 48, 48, 80
    w = GemmProblem(m=1, n=n, k=k, seed=3).weights("cpu")
    gs = torch.tensor([100.0])
    pr, pk = padded_shape(layout, n_alloc, k_alloc // 16)
    scales = torch.full((pr, pk), SENTINEL, dtype=torch.uint8)
    quantize_into(w, gs, layout, data_rows=n_alloc, data_k=k_alloc, row_fill=LEAVE, ktail_fill=LEAVE,
                  data_fill=0, scales=scales)
    fill_read_padding(scales, layout, rows=n, kblocks=k // 16, data_rows=n_alloc, data_kblocks=k_alloc // 16,
                      row_byte=0x11, ktail_byte=0x22)
    _, normal = quantize_into(w, gs, layout, data_rows=n_alloc, data_k=k_alloc, row_fill=0x11, ktail_fill=0x22)
    entry = sz.scales_entry("w.scales", scales, layout=layout.value, role="weight", rows=n, kblocks=k // 16,
                            data_rows=n_alloc, data_kblocks=k_alloc // 16)
    flat, want = scales.reshape(-1), normal.reshape(-1)
    counts: dict[str, int] = {}
    for off in range(flat.numel()):
        region, _, _ = sz.region_at(entry, off)
        counts[region] = counts.get(region, 0) + 1
        if region in sz.UNWRITTEN_REGIONS:
            assert flat[off] == SENTINEL, (off, region)
        else:
            assert flat[off] == want[off], (off, region)
    assert counts["n_pad"] and counts["k_tail"] and counts["real"]
    assert counts.get("layout_pad", 0) == (pr * pk - n_alloc * (k_alloc // 16))


def test_unwritten_padding_operands_match_the_pipeline_where_written() -> None:
    prob = GemmProblem(m=5, n=40, k=48, seed=2)
    pois = Poison(m_pad=0x7F, n_pad=0x33, k_tail=0, data=0x44)
    kw = dict(a_layout=ScaleLayout.SWIZZLED_8x4, w_layout=ScaleLayout.SWIZZLED_128x4, n_align=16, k_align=64,
              poison=pois)
    normal = build_gemm_operands(prob, **kw)
    left = build_gemm_operands(prob, unwritten_padding=True, **kw)
    assert torch.equal(normal.a.packed, left.a.packed) and torch.equal(normal.w.packed, left.w.packed)
    assert torch.equal(normal.alpha, left.alpha)
    for side in ("a", "w"):
        q, ref = getattr(left, side), getattr(normal, side)
        entry = sz.scales_entry("s", q.scales, layout=q.layout.value, role=q.role.value, rows=q.rows,
                                kblocks=q.k // 16, data_rows=q.rows_alloc, data_kblocks=q.k_alloc // 16)
        for off in range(q.scales.numel()):
            if sz.region_at(entry, off)[0] not in sz.UNWRITTEN_REGIONS:
                assert q.scales.reshape(-1)[off] == ref.scales.reshape(-1)[off], (side, off)


# ----------------------------------------------------------------------------------------------
# The child process (run here without the sanitizer: the operand map it writes)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend,prop", [("triton-emu-8x4", "reference_agreement"),
                                          ("quant-triton-128x4", "quantizer_agreement"),
                                          ("linear-vllm[triton-emu-128x4]", "reference_agreement")])
def test_child_writes_the_operand_map(tmp_path: Path, backend: str, prop: str) -> None:
    trial = Trial(backend, prop, GemmProblem(m=5, n=40, k=96, seed=1))
    (tmp_path / "spec.json").write_text(json.dumps({"trial": trial.to_dict()}))
    assert run_child(tmp_path / "spec.json", tmp_path / "map.json") == 0
    doc = json.loads((tmp_path / "map.json").read_text())
    assert doc["schema"] == sz.MAP_SCHEMA and doc["status"] == "done" and doc["error"] is None
    bufs = {b["name"]: b for b in doc["buffers"]}
    for b in bufs.values():
        assert b["nbytes"] == b["shape"][0] * b["shape"][1] * b["elem_bytes"], b["name"]
    spans = sorted((b["data_ptr"], b["data_ptr"] + b["nbytes"]) for b in bufs.values())
    assert all(e0 <= s1 for (_, e0), (s1, _) in zip(spans, spans[1:])), "buffers overlap"
    if backend.startswith("triton-emu"):
        a = bufs["a.scales"]
        assert (a["layout"], a["rows"], a["data_rows"]) == ("8x4", 5, 5)
        off = int(offset_grid(ScaleLayout.SWIZZLED_8x4, 8, a["shape"][1])[6, 0])  # row 6: M padding
        f = sz.locate(sz.Finding("initcheck", "uninitialized", address=a["data_ptr"] + off), doc["buffers"])
        assert (f.buffer, f.region, f.row, f.col) == ("a.scales", "m_pad", 6, 0)
        out = bufs["out"]
        past = sz.locate(sz.Finding("memcheck", "out of bounds", access="write",
                                    address=out["data_ptr"] + out["nbytes"]), doc["buffers"])
        # the byte right after the output can be nearer another buffer; where it is the output's, it is row m
        if past.buffer == "out":
            assert (past.region, past.row, past.distance) == ("beyond", 5, 1)
    elif backend.startswith("quant"):
        assert {"x", "packed", "scales"} <= set(bufs)
    else:
        assert {"x", "weight.packed", "weight.scales", "bias", "out"} <= set(bufs)


def test_classify_recorded_runs_with_an_operand_map() -> None:
    text = recorded("memcheck-write-past-xml-run.txt")
    amap = {"status": "raised", "error": "AcceleratorError: CUDA error: unspecified launch failure",
            "buffers": [script_buffer(text)]}
    res = sr.classify("memcheck", text, recorded("memcheck-write-past.xml"), amap)
    assert res.status == "fail" and res.error_count == 3
    (f,) = res.findings
    assert (f.buffer, f.region, f.inside, f.distance, f.kernel) == ("out", "beyond", False, 1, "write_past")
    assert "write_past" in res.reason and "out" in res.reason
    # the same run with the child's map lost still fails on the finding: a finding is never a pass
    assert sr.classify("memcheck", text, None, None).status == "fail"


def test_classify_never_passes_without_a_complete_clean_run() -> None:
    clean = "========= COMPUTE-SANITIZER\n========= ERROR SUMMARY: 0 errors\n"
    assert sr.classify("memcheck", clean, None, {"status": "done", "buffers": []}).status == "pass"
    assert sr.classify("memcheck", clean, None, {"status": "raised", "error": "boom", "buffers": []}).status == "crash"
    assert sr.classify("memcheck", clean, None, None).status == "crash"
    assert sr.classify("memcheck", "", None, {"status": "done", "buffers": []}).status == "crash"
    assert sr.classify("memcheck", clean, None, {"status": "unsupported", "error": "no", "buffers": []}).status == "skip"
    # the tool refusing to run: its own line is the skip reason (this line is constructed, not recorded)
    refused = "========= COMPUTE-SANITIZER\n========= Error: the tool could not attach\n"
    res = sr.classify("initcheck", refused, None, None)
    assert res.status == "skip" and "the tool could not attach" in res.reason
    # a child that never started because Python failed is a crash, not a refusal
    broken = "Traceback (most recent call last):\nModuleNotFoundError: No module named 'harness'\n"
    assert sr.classify("memcheck", broken, None, None).status == "crash"


# ----------------------------------------------------------------------------------------------
# Case files, records, report, command line
# ----------------------------------------------------------------------------------------------
def test_finding_case_replays_with_sanitize_and_shows_in_the_report(tmp_path: Path) -> None:
    from harness import results as records
    from harness.cases import load_case
    from harness.cli import build_parser
    from harness.report import render_report

    text = recorded("memcheck-write-past-xml-run.txt")
    res = sr.classify("memcheck", text, recorded("memcheck-write-past.xml"),
                      {"status": "raised", "buffers": [script_buffer(text)]})
    res.trial = Trial("triton-emu-128x4", "reference_agreement", GemmProblem(m=5, n=40, k=96, seed=1))
    ref = sr.save_finding_case(tmp_path, res, "gemm")
    case = load_case(tmp_path / ref)
    assert case.observed["sanitizer"]["findings"][0]["buffer"] == "out"
    argv = case.replay.split()
    args = build_parser().parse_args(argv[1:])
    assert args.command == "replay" and args.sanitize and args.tool == "memcheck"
    assert Path(args.case).resolve() == (tmp_path / ref).resolve()
    stream = records.ResultStream(tmp_path, "sanitizer")
    stream.write(sr.record_of(res, level="gemm", case_file=ref, test="sanitize test"))
    stream.close()
    records.finalize(tmp_path)
    html = render_report(tmp_path, tmp_path / "index.html").read_text()
    assert "sanitizer:memcheck" in html
    assert "write_past" in html and "bytes after the end of out" in html


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run ``nvfp4-harness ARGS`` in this process: (exit status, stdout, stderr)."""
    from harness.cli import main

    try:
        rc = main(list(args))
    except SystemExit as exc:
        rc = exc.code
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU's refusal (this machine has a GPU)")
@pytest.mark.parametrize("args", [("sanitize", "regressions/cases"),
                                  ("sanitize", "--sanitizer", "/bin/true", "regressions/cases"),
                                  ("replay", "--sanitize", "regressions/cases/trtllm-8x4-nan-padding-rows-m1.json")])
def test_cli_cannot_sanitize_here_is_one_line_and_exit_4(capsys, monkeypatch, tmp_path, args) -> None:
    monkeypatch.chdir(REPO)
    rc, out, err = _cli(capsys, *args, *(["--results", str(tmp_path)] if args[0] == "sanitize" else []))
    assert rc == sr.EXIT_CANNOT_RUN, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("nvfp4-harness: cannot sanitize:"), err
    assert not out.strip() and not any(tmp_path.iterdir()), "nothing ran, nothing is recorded"
    if "/bin/true" in args:
        assert "CUDA GPU" in lines[0]


@pytest.mark.parametrize("args,field", [(("sanitize", "no/such/case.json"), "no/such/case.json"),
                                        (("sanitize",), "nothing to sanitize"),
                                        (("sanitize", "--sample", "1", "--backends", "no-such-backend"),
                                         "no-such-backend")])
def test_cli_bad_input_is_one_line_and_exit_2(capsys, monkeypatch, args, field: str) -> None:
    monkeypatch.chdir(REPO)
    rc, _, err = _cli(capsys, *args)
    assert rc == 2, (rc, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and field in lines[0] and lines[0].startswith("nvfp4-harness: error:")


def test_sample_is_reproducible_per_seed() -> None:
    a = sr.sample_trials(["triton-emu-128x4", "quant-triton-8x4"], 2, seed=7)
    b = sr.sample_trials(["triton-emu-128x4", "quant-triton-8x4"], 2, seed=7)
    assert a == b and len(a) == 4
    assert [t.backend for t in a] == ["triton-emu-128x4"] * 2 + ["quant-triton-8x4"] * 2


# ----------------------------------------------------------------------------------------------
# The sanitizer-only mutants' kernels, under the interpreter (they run on a GPU only; here each is
# called directly on buffers where its stray access stays inside host memory the test owns)
# ----------------------------------------------------------------------------------------------
def test_sanitizer_mutants_compute_their_parents_results() -> None:
    """The planted bugs change no result the properties look at, and the stray access is real.

    Runs where the harness's kernels run: under the interpreter on a CPU, compiled on a GPU."""
    from harness.backends import registry
    from harness.pipeline import operands_for

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    prob = GemmProblem(m=5, n=40, k=96, seed=1)
    parent = registry.get("triton-emu-128x4")
    ops = operands_for(parent, prob, Poison(m_pad=0x7F), device=dev)  # NaN scales in the M padding the mutant reads
    ref = parent.run(ops)
    assert torch.equal(registry.get("mutant-reads-unwritten-pad-scales").run(ops), ref)
    sentinel = 7.0
    big = torch.full((ops.m + 2, ops.w.rows_alloc), sentinel, dtype=ops.out_dtype, device=dev)
    out = registry.get("mutant-writes-row-past-output").run(ops, out=big[:ops.m])
    assert torch.equal(out, ref)
    assert not torch.all(big[ops.m] == sentinel), "the mutant writes row m, past the output"
    assert torch.all(big[ops.m + 1] == sentinel)

    gs = torch.tensor([50.0], device=dev)
    rows = GemmProblem(m=16, n=16, k=96, seed=2).activations(dev)
    x = rows[:5]  # the mutant's 16-row tile reads rows 5..15, which exist in this storage
    got = registry.get("mutant-quantizer-reads-past-rows").quantize(x, gs)
    want = registry.get("quant-triton-128x4").quantize(x.clone(), gs)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("backend,prop,problem", [
    ("linear-vllm[triton-emu-128x4]", "partition_isolation", GemmProblem(m=3, n=40, k=48, seed=1, partitions=(24, 16))),
    ("quant-triton-128x4", "empty_batch", GemmProblem(m=0, n=16, k=48, seed=1)),
], ids=["merged-partitions", "empty-batch"])
def test_child_maps_merged_layers_and_empty_batches(tmp_path: Path, backend: str, prop: str, problem) -> None:
    """A merged-partition layer's operands are its shards and scale slots; an empty batch quantizes (the
    sanitizer sweep of the corpus met both)."""
    (tmp_path / "spec.json").write_text(json.dumps({"trial": Trial(backend, prop, problem).to_dict()}))
    assert run_child(tmp_path / "spec.json", tmp_path / "map.json") == 0
    doc = json.loads((tmp_path / "map.json").read_text())
    assert doc["status"] == "done" and doc["error"] is None, doc["error"]
    names = {b["name"] for b in doc["buffers"]}
    if problem.partitions:
        assert {"weight.shards[0].packed", "weight.shards[1].scales", "weight.weight_scale_2 slots"} <= names, names
    else:
        assert {"x", "packed", "scales"} <= names, names


HARNESS_RUNS = DATA / "harness-runs"


@pytest.mark.parametrize("name,tool,want", [
    # the sanitizer-only mutants: the right kernel, buffer and padding region
    ("initcheck-reads-unwritten-pad-scales", "initcheck", ("_gemm_masked_late_kernel", "a.scales", "m_pad", True, "read")),
    ("memcheck-writes-row-past-output", "memcheck", ("_gemm_masked_late_kernel", "out", "beyond", False, "write")),
    ("memcheck-quantizer-reads-past-rows", "memcheck", ("_quantize_full_row_tiles_kernel", "x", "beyond", False, "read")),
    # clean runs of the harness's own GEMM kernel under each tool
    ("initcheck-clean-triton-emu-128x4", "initcheck", None),
    ("racecheck-triton-emu-128x4", "racecheck", None),
])
def test_classify_recorded_harness_runs(name: str, tool: str, want) -> None:
    """Runs of the harness's child under compute-sanitizer on the H200 (bench/sanitizer_capture.sh):
    the text, the XML and the operand map each run wrote, classified as the sweep classifies them."""
    res = sr.classify(tool, (HARNESS_RUNS / f"{name}.txt").read_text(), (HARNESS_RUNS / f"{name}.xml").read_text(),
                      json.loads((HARNESS_RUNS / f"{name}.map.json").read_text()))
    if want is None:
        assert res.status == "pass" and res.error_count == 0 and not res.findings, res.reason
        return
    assert res.status == "fail" and res.error_count and res.error_count > 0
    first = res.findings[0]
    assert (first.kernel, first.buffer, first.region, first.inside, first.access) == want, res.reason
