"""The grouped (MoE) level: problem model and case round trip, the grouped buffer and its padding
map, the reference, and the emulation backends on hand-picked split patterns (CPU, small)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from harness.format import pack_e2m1, reference_dequantize, reference_quantize
from harness.grouped import registry
from harness.grouped.cases import GroupedCaseError, load_case, save_case
from harness.grouped.checks import execute
from harness.grouped.pipeline import GroupedRegion, build_grouped_operands
from harness.grouped.problem import GroupedPoison, GroupedProblem, GroupedTrial, MoeProblem
from harness.grouped.reference import grouped_error_bound, reference_grouped
from harness.oracle import Precision

# where the harness's kernels run: compiled on a GPU node, under the Triton interpreter on a CPU
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

SPLITS = {
    "zero first": [0, 2, 3, 1],
    "zero middle": [2, 0, 3, 1],
    "zero last": [2, 3, 1, 0],
    "uneven": [1, 5, 2, 4],
}


def _problem(splits, top_k=2, **kw):
    kw.setdefault("n", 40)
    kw.setdefault("k", 48)
    kw.setdefault("row_align", (1, 8, 64, 128))
    return GroupedProblem.from_splits(splits, top_k, seed=5, **kw)


def test_from_splits_routes_every_token_to_distinct_experts():
    p = _problem([2, 0, 3, 1])
    assert p.splits == (2, 0, 3, 1) and p.tokens == 3 and p.top_k == 2
    assert p.zero_token_experts == (1,)
    assert all(len(set(r)) == 2 for r in p.topk_ids)
    assert all(0 < w < 1 for r in p.topk_weights for w in r)


@pytest.mark.parametrize("field,value", [("k", 40), ("row_align", (1, 2, 8, 8)), ("topk_weights", None),
                                         ("topk_ids", None)])
def test_problem_rejects_bad_fields_naming_them(field, value):
    d = _problem([2, 0, 3, 1]).to_dict()
    if field == "topk_weights":
        d[field] = [[0.1, 0.5]] + d[field][1:]  # 0.1 is not an fp32 value
    elif field == "topk_ids":
        d[field] = [[0, 0]] + d[field][1:]
    else:
        d[field] = value
    with pytest.raises(ValueError, match=f"problem.{field}"):
        GroupedProblem.from_dict(d)


def test_problem_json_keeps_the_case_file_key_order():
    """Grouped and fused-MoE problems share their routing fields (RoutedProblem); their JSON objects
    keep the order case files have (a case file is rewritten only when its bytes differ)."""
    g = _problem([2, 0, 3, 1], input_scales="static", origin="a model")
    assert list(g.to_dict()) == ["tokens", "experts", "n", "k", "topk_ids", "topk_weights", "row_align",
                                 "input_scales", "out_dtype", "in_dtype", "distribution", "seed", "origin"]
    m = MoeProblem.from_splits([2, 0, 3, 1], 2, hidden=32, intermediate=64, seed=5, fc1_input_scale="shared")
    assert list(m.to_dict()) == ["tokens", "experts", "hidden", "intermediate", "topk_ids", "topk_weights",
                                 "row_align", "input_scales", "fc1_input_scale", "out_dtype", "in_dtype",
                                 "distribution", "seed", "origin"]
    for p in (g, m, m.fc1(), m.fc2()):
        assert sorted(p.KEY_ORDER) == sorted(f.name for f in dataclasses.fields(p))
        assert type(p).from_dict(json.loads(json.dumps(p.to_dict()))) == p
    assert m.fc1().to_dict() == {**{k: v for k, v in m.to_dict().items() if k not in ("hidden", "intermediate",
                                                                                       "fc1_input_scale")},
                                 "n": 128, "k": 32}


def test_case_file_round_trip_replays_bit_for_bit(tmp_path):
    trial = GroupedTrial("grouped-triton-emu", "token_isolation", _problem(SPLITS["zero middle"], input_scales="static"),
                         GroupedPoison(group_row_pad=0x7F, n_pad=0x7E, victim=2, victim_byte=0x08))
    ops = build_grouped_operands(trial.problem, trial.poison, device=DEVICE)
    path = save_case(tmp_path / "c.json", trial, ops.digest())
    again, digest = load_case(path)
    assert again == trial and json.loads(path.read_text())["level"] == "grouped"
    ops2 = build_grouped_operands(again.problem, again.poison, device=DEVICE)
    assert ops2.digest() == digest
    b = registry.get("grouped-triton-emu")
    assert torch.equal(b.run(ops).view(torch.int16), b.run(ops2).view(torch.int16))


def test_case_file_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "nvfp4-harness/grouped-case/1", "backend": "x", "property": "grouped_bytes",
                               "problem": {**_problem([1, 1], row_align=(1, 8)).to_dict(), "k": 40}}))
    with pytest.raises(GroupedCaseError, match="problem.k=40") as e:
        load_case(bad)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", list(SPLITS))
def test_grouped_buffer_equals_per_group_reference_bytes_and_names_padding(name):
    p = _problem(SPLITS[name])
    ops = build_grouped_operands(p, GroupedPoison(group_row_pad=0x7F, k_tail=0x7E), k_align=64)
    a = ops.a
    regions = a.padding_map()
    assert a.k_alloc == 64 and a.scales.shape[1] == 4
    for e, sec in enumerate(p.sections()):
        rows = a.row_offsets[e + 1] - a.row_offsets[e]
        if not sec:
            assert rows == 0 and a.sf_row_offsets[e + 1] == a.sf_row_offsets[e], "a zero-token group occupies nothing"
            continue
        assert rows == -(-len(sec) // p.row_align[e]) * p.row_align[e]
        assert (a.sf_row_offsets[e + 1] - a.sf_row_offsets[e]) % 128 == 0  # whole 128x4 tiles per expert
        codes, sf = reference_quantize(ops.hidden[[t for t, _ in sec]], ops.input_scales[e])
        q = a.group(e)
        assert torch.equal(q.packed[:len(sec), :p.k // 2], pack_e2m1(codes))
        assert torch.equal(q.dequantize(), reference_dequantize(codes, sf).float())
        reg = regions[a.sf_row_offsets[e]:a.sf_row_offsets[e + 1]]
        assert int((reg == GroupedRegion.REAL).sum()) == len(sec) * (p.k // 16)
        assert bool((q.scales[reg == GroupedRegion.GROUP_ROW_PAD] == 0x7F).all())
        assert bool((q.scales[reg == GroupedRegion.K_TAIL] == 0x7E).all())
        assert int((reg == GroupedRegion.K_TAIL).sum()) == len(sec) * (4 - p.k // 16)


def test_128_aligned_splits_have_no_group_row_padding():
    p = GroupedProblem.from_splits([128, 0, 128], 1, n=16, k=16, row_align=128)
    ops = build_grouped_operands(p, device=DEVICE)
    assert ops.a.row_offsets == (0, 128, 128, 256) and ops.a.sf_row_offsets == ops.a.row_offsets
    assert not bool((ops.a.padding_map() == GroupedRegion.GROUP_ROW_PAD).any())
    assert execute(GroupedTrial("grouped-triton-emu", "reference_agreement", p)).status == "pass"


def test_reference_applies_routing_weights_and_bound_is_tight():
    p = _problem([1, 2, 1], top_k=2, n=16, k=32, row_align=(1, 1, 1))
    ops = build_grouped_operands(p, device=DEVICE)
    ref = reference_grouped(ops)
    t = 0
    want = sum(w * ref.per_expert[e].value[[tt for tt, _ in p.sections()[e]].index(t)]
               for e, w in zip(p.topk_ids[t], p.topk_weights[t]))
    assert torch.equal(ref.value[t], want)
    bound = grouped_error_bound(ops, ref, Precision(24), torch.float32)
    rel = (bound / ref.value.abs().clamp_min(1e-30)).median()
    assert 0 < float(rel) < 2 ** -6, "the bound is of the order of the bf16 rounding, not loose"


@pytest.mark.parametrize("backend", ["grouped-triton-emu", "grouped-triton-emu-fused"])
@pytest.mark.parametrize("prop", ["reference_agreement", "zero_token_groups", "token_isolation"])
def test_emulation_backends_pass_with_zero_token_groups_first_middle_last(backend, prop):
    poison = GroupedPoison(group_row_pad=0x7F, n_pad=0x7F, victim=0, victim_byte=0x7F) \
        if prop == "token_isolation" else GroupedPoison(group_row_pad=0x7F, n_pad=0x7F)
    for splits in ([0, 1, 2, 1], [1, 0, 0, 1], [2, 1, 0]):
        p = GroupedProblem.from_splits(splits, 1, n=40, k=32, seed=1, row_align=(8,) * len(splits))
        out = execute(GroupedTrial(backend, prop, p, poison))
        assert out.status == ("skip" if prop == "token_isolation" and p.splits[0] == sum(p.splits) else "pass"), \
            (splits, out.reason)


def test_per_expert_view_names_the_expert_a_bug_touches():
    """The routed-twice mutant scales every term; a stride bug leaves expert 0 correct."""
    from harness.grouped.checks import reference_agreement

    p = GroupedProblem.from_splits([2, 0, 3], 1, n=40, k=32, seed=2, row_align=(1, 1, 1))
    ops = build_grouped_operands(p, device=DEVICE)
    good = reference_agreement(registry.get("grouped-triton-emu"), ops).measure["per_expert"]
    assert [v["tokens"] for v in good] == [2, 0, 3] and good[1]["max_err_units"] is None
    assert all(v["max_err_units"] <= 1 for v in good if v["tokens"])
    bad = reference_agreement(registry.get("mutant-grouped-expert-scale-stride"), ops)
    view = {v["expert"]: v["max_err_units"] for v in bad.measure["per_expert"]}
    assert not bad.ok and view[0] <= 1 < view[2] and "out of bound [2]" in bad.summary
