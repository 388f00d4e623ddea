"""Merged-partition linear layers (QKV, gate/up): the problem dimension and its case files, the
checkpoint shards and the engine's per-partition scale slots, the engine's merge, the
partition_isolation property (sound on the correct layers, catching SGLang PR #29151's class), the
strategies and the report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness import env
from harness.backends import registry
from harness.cases import Case, CaseFileError, load_case, save_case
from harness.experiments.linear import linear_inputs
from harness.format import e4m3_decode, global_scale_decode_multiplier
from harness.oracle import reference_merged_weight
from harness.pipeline import MergedCheckpoint, merged_checkpoint, requantize_block_scales
from harness.problem import GemmProblem, Poison, slot_poison_kind
from harness.runner import execute
from harness.trial import Trial

ROOT = Path(__file__).resolve().parents[1]
LAYER = "linear-vllm[triton-emu-128x4]"
MUTANT = "mutant-fused-scale-one-slot"
QKV = GemmProblem(m=5, n=48 + 16 + 8, k=48, seed=3, partitions=(48, 16, 8))
"""Three unequal partitions (q, k, v), one of them not a multiple of 16."""


# ----------------------------------------------------------------------------------------------
# The problem dimension
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw,field", [
    (dict(n=32, partitions=(16, 8)), "problem.partitions"),          # sums to 24, not n
    (dict(n=32, partitions=(32,)), "problem.partitions"),            # one partition is no merge
    (dict(n=32, partitions=(0, 32)), "problem.partitions"),
    (dict(n=32, partitions=[16, 16]), "problem.partitions"),         # a list, not a tuple
    (dict(n=32, fused_on_disk=True), "problem.fused_on_disk"),       # fused needs partitions
])
def test_bad_partitions_name_the_field(kw, field) -> None:
    with pytest.raises(ValueError) as err:
        GemmProblem(m=1, k=16, **kw)
    assert str(err.value).startswith(field + "=")


def test_partition_bounds_and_serialisation() -> None:
    assert QKV.partition_bounds == [(0, 48), (48, 64), (64, 72)]
    assert GemmProblem(m=1, n=40, k=16).partition_bounds == [(0, 40)]
    d = QKV.with_(fused_on_disk=True).to_dict()
    assert d["partitions"] == [48, 16, 8] and d["fused_on_disk"] is True
    assert Trial.from_dict({"backend": LAYER, "property": "partition_isolation", "problem": d}).problem == \
        QKV.with_(fused_on_disk=True)


def _doc(trial: Trial) -> dict:
    doc = Case.from_trial(trial, level="linear", observed={"summary": "x"}, environment={}).to_dict()
    doc["replay"] = "nvfp4-harness replay c.json"
    return doc


def test_case_files_without_partitions_still_load(tmp_path) -> None:
    doc = _doc(Trial(LAYER, "reference_agreement", GemmProblem(m=2, n=32, k=32)))
    for key in ("partitions", "fused_on_disk", "calibration"):
        doc["problem"].pop(key)
    doc["poison"].pop("partition_slots")
    (tmp_path / "c.json").write_text(json.dumps(doc))
    case = load_case(tmp_path / "c.json")
    assert case.problem.partitions is None and case.poison.partition_slots == 0


@pytest.mark.parametrize("path,bad", [
    ("problem.partitions", "16,16"), ("problem.partitions[1]", -3), ("problem.partitions", [16, 8]),
    ("problem.fused_on_disk", 1), ("poison.partition_slots", 256),
])
def test_a_bad_merged_case_file_names_the_field(tmp_path, path, bad) -> None:
    doc = _doc(Trial(LAYER, "partition_isolation", GemmProblem(m=1, n=32, k=16, partitions=(16, 16)),
                     Poison(partition_slots=0x7F)))
    section, key = path.split(".")
    if key.endswith("]"):
        key, i = key[:-1].split("[")
        doc[section][key][int(i)] = bad
    else:
        doc[section][key] = bad
    (tmp_path / "c.json").write_text(json.dumps(doc))
    with pytest.raises(CaseFileError) as err:
        load_case(tmp_path / "c.json")
    assert err.value.field == path


# ----------------------------------------------------------------------------------------------
# Checkpoint shards, slots and the merge
# ----------------------------------------------------------------------------------------------
def test_split_shards_carry_their_own_global_scale_and_the_slots_hold_the_poison() -> None:
    w = QKV.weights("cpu")
    ck = merged_checkpoint(w, QKV.partitions, slot_byte=0xFF, input_scale=torch.tensor([0.01]))
    assert [sh.n for sh in ck.shards] == [48, 16, 8] and ck.n == 72 and ck.k == 48
    for sh, (s, e) in zip(ck.shards, QKV.partition_bounds):
        assert torch.equal(sh.weight_scale_2, global_scale_decode_multiplier(w[s:e].float().abs().amax()).reshape(1))
        assert torch.equal(sh.input_scale, torch.tensor([0.01]))
    assert ck.weight_scale_2.shape == (3,) and torch.isnan(ck.weight_scale_2).all()
    assert ck.input_scale is not None and torch.isnan(ck.input_scale).all()
    fused = merged_checkpoint(w, QKV.partitions, fused_on_disk=True, slot_byte=0x7F)
    assert fused.fused_on_disk and len(fused.shards) == 1 and fused.shards[0].n == 72
    assert fused.weight_scale_2.tolist() == [pytest.approx(3.3961514e38)] * 3 and fused.input_scale is None


def test_slot_poison_kinds_name_the_fp32_value() -> None:
    assert [slot_poison_kind(b) for b in (0xFF, 0x7F, 0x00, 0x38)] == ["nan", "max", "zero", "finite"]


def test_requantizing_block_scales() -> None:
    raw = torch.arange(0, 0x7F, dtype=torch.uint8).reshape(1, -1)  # every finite non-negative e4m3 byte
    assert torch.equal(requantize_block_scales(raw, torch.tensor(1.0)), raw)  # ratio 1: unchanged
    halved = requantize_block_scales(raw, torch.tensor(0.5))
    normal = e4m3_decode(raw) >= 2.0 ** -5  # halving stays normal: exact
    assert torch.equal(e4m3_decode(halved)[normal], e4m3_decode(raw)[normal] / 2)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("byte", [0x7F, 0xFF, 0x00])
def test_the_engine_merges_to_the_max_over_the_loaded_partitions_only(fused, byte) -> None:
    w = QKV.weights("cpu")
    ck = merged_checkpoint(w, QKV.partitions, fused_on_disk=fused, slot_byte=byte, input_scale=torch.tensor([0.02]))
    layer = registry.get(LAYER)
    merged = layer.merge_partitions(ck)
    want = reference_merged_weight(ck)
    shard_max = max(float(sh.weight_scale_2) for sh in ck.shards)
    assert float(merged.weight_scale_2) == shard_max == float(want.weight_scale_2)
    assert torch.equal(merged.input_scale, torch.tensor([0.02])) and torch.equal(want.input_scale, merged.input_scale)
    assert torch.equal(merged.scales, want.scales) and torch.equal(merged.packed, want.packed)
    # the slot buffers the harness handed over are the engine's to read, not to keep
    assert ck.weight_scale_2.view(torch.uint8).eq(byte).all()
    bad = registry.get(MUTANT).merge_partitions(ck)
    if fused and byte != 0x00:
        assert not float(bad.weight_scale_2) == shard_max  # the stale slot won the max
    elif not fused:
        assert float(bad.weight_scale_2) == shard_max  # split on disk: every slot loaded


def test_unequal_partition_scales_are_requantized_to_the_merged_scale() -> None:
    w = QKV.weights("cpu").clone()
    w[48:64] *= 0.25  # k_proj with a quarter of q_proj's amax: its own weight_scale_2 is a quarter
    ck = merged_checkpoint(w, QKV.partitions)
    ratios = [float(sh.weight_scale_2) / float(ck.shards[0].weight_scale_2) for sh in ck.shards]
    assert ratios[1] == pytest.approx(0.25, rel=0.05)
    merged = registry.get(LAYER).merge_partitions(ck)
    # dequantized with the merged scale, each partition's weights stay within the rescaling's rounding
    for sh, (s, e) in zip(ck.shards, QKV.partition_bounds):
        own = e4m3_decode(sh.scales).double() * float(sh.weight_scale_2)
        now = e4m3_decode(merged.scales[s:e]).double() * float(merged.weight_scale_2)
        assert torch.allclose(now, own, rtol=2.0 ** -4, atol=2.0 ** -9 * float(merged.weight_scale_2))


# ----------------------------------------------------------------------------------------------
# partition_isolation: sound on the correct layers, catches the mutant
# ----------------------------------------------------------------------------------------------
def test_the_verdict_fails_on_a_wrong_or_nonfinite_merged_scale_alone() -> None:
    from harness import checks
    from harness.trial import PropertyResult

    ok = [PropertyResult("reference_agreement", True, "", {"max_err_units": 0.5})] * 2
    one, nan = torch.tensor([1e-3]), torch.tensor([float("nan")])
    assert checks.partition_isolation([("weight_scale_2", one, one)], ok, (16, 16), True, 0xFF, "nan").ok
    for got, want in ((one * 2, one), (nan, nan), (None, one)):
        res = checks.partition_isolation([("weight_scale_2", got, want)], ok, (16, 16), True, 0xFF, "nan")
        assert not res.ok and res.measure["region"] == "partition_slots"
    bad = [ok[0], PropertyResult("reference_agreement", False, "x", {"max_err_units": 9.0, "nan_rows": [1]})]
    res = checks.partition_isolation([("weight_scale_2", one, one)], bad, (16, 16), False, 0, "zero")
    assert not res.ok and res.measure["failed_partitions"] == [1] and res.measure["max_err_units"] == 9.0


ENGINE_LAYERS = [LAYER, "linear-sglang[triton-emu-128x4]", "linear-sglang-trtllm[triton-emu-128x4+triton-emu-8x4]",
                 "linear-vllm[torch-emu]", "linear-vllm[triton-w4a16]"]


@pytest.mark.parametrize("name", ENGINE_LAYERS)
@pytest.mark.parametrize("fused,byte,calibration", [(False, 0x7F, None), (True, 0xFF, 2.0), (True, 0x7F, None)])
def test_partition_isolation_holds_on_every_engine_layer(name, fused, byte, calibration) -> None:
    p = QKV.with_(fused_on_disk=fused, calibration=calibration, batch=(5, 1))
    out = execute(Trial(name, "partition_isolation", p, Poison(partition_slots=byte)))
    assert out.status == "pass", out.reason
    m = out.result.measure
    assert m["region"] == "partition_slots" and m["partitions"] == [48, 16, 8]
    assert len(m["partition_max_err_units"]) == 3 and m["merged_weight_scale_2"] == m["expected_weight_scale_2"]


@pytest.mark.parametrize("byte,kind", [(0x7F, "max"), (0xFF, "nan"), (0x00, "zero")])
def test_the_mutant_fails_on_fused_checkpoints_and_only_there(byte, kind) -> None:
    fused = QKV.with_(fused_on_disk=True)
    out = execute(Trial(MUTANT, "partition_isolation", fused, Poison(partition_slots=byte)))
    assert out.status == "fail" and out.result.measure["poison_kind"] == kind
    assert out.result.measure["failed_partitions"]
    assert execute(Trial(MUTANT, "partition_isolation", QKV, Poison(partition_slots=byte))).status == "pass"
    assert execute(Trial(LAYER, "partition_isolation", fused, Poison(partition_slots=byte))).status == "pass"


def test_merged_layers_under_the_other_linear_properties() -> None:
    p = QKV.with_(fused_on_disk=True, calibration=1.0)
    for prop in ("reference_agreement", "determinism", "batch_invariance", "input_isolation"):
        assert execute(Trial(LAYER, prop, p)).status == "pass", prop
    # the mutant's stale slot also breaks the whole layer's reference agreement
    assert execute(Trial(MUTANT, "reference_agreement", p, Poison(partition_slots=0xFF))).status == "fail"


def test_layers_without_a_merged_loader_are_not_run_on_merged_problems() -> None:
    name = "linear-torchao-weight-only"
    if not registry.get(name).support(env.current()):
        pytest.skip(f"{name} does not run here")
    out = execute(Trial(name, "reference_agreement", QKV))
    assert out.status == "skip" and "merged-partition" in out.reason
    assert execute(Trial(LAYER, "partition_isolation", GemmProblem(m=1, n=16, k=16))).status == "skip"


def test_linear_inputs_of_a_merged_problem_depend_on_the_poison_only_in_the_slots() -> None:
    _, a, _ = linear_inputs(QKV, "cpu", Poison(partition_slots=0x7F))
    _, b, _ = linear_inputs(QKV, "cpu", Poison())
    assert isinstance(a, MergedCheckpoint) and isinstance(b, MergedCheckpoint)
    assert all(torch.equal(x.packed, y.packed) and torch.equal(x.scales, y.scales) for x, y in zip(a.shards, b.shards))
    assert not torch.equal(a.weight_scale_2.view(torch.uint8), b.weight_scale_2.view(torch.uint8))


# ----------------------------------------------------------------------------------------------
# Strategies, report, case files
# ----------------------------------------------------------------------------------------------
def test_the_suite_draws_merged_layers() -> None:
    from hypothesis import HealthCheck, Phase, given, settings

    from harness import suite

    drawn: dict[str, list[Trial]] = {"partition_isolation": [], "reference_agreement": []}
    layer = registry.get(LAYER)
    for prop, out in drawn.items():
        @settings(max_examples=120, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(suite.trials(layer, prop, suite.CPU_SIZES))
        def collect(t: Trial) -> None:
            out.append(t)

        collect()
    iso = drawn["partition_isolation"]
    assert all(t.problem.partitions for t in iso) and all(t.poison.partition_slots for t in iso)
    assert {len(t.problem.partitions) for t in iso} == {2, 3}
    assert {t.problem.fused_on_disk for t in iso} == {True, False}
    assert any(len(set(t.problem.partitions)) > 1 for t in iso)  # unequal widths
    assert any(w % 16 for t in iso for w in t.problem.partitions)  # ragged widths
    assert any(t.problem.origin and "gate_up" in t.problem.origin for t in iso)  # a real TP shard's gate_up
    ref = drawn["reference_agreement"]
    share = sum(t.problem.partitions is not None for t in ref) / len(ref)
    assert 0.05 < share < 0.6
    # layers without a merged loader never draw them
    torchao: list[Trial] = []

    @settings(max_examples=40, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(suite.trials(registry.get("linear-torchao-weight-only"), "reference_agreement", suite.CPU_SIZES))
    def collect_torchao(t: Trial) -> None:
        torchao.append(t)

    collect_torchao()
    assert torchao and not any(t.problem.partitions for t in torchao)


def test_the_report_names_partitions_and_the_slot_poison() -> None:
    from harness.report.view import _isolation_key, _poison_text, _problem_text

    p = QKV.with_(fused_on_disk=True).to_dict()
    assert "merged partitions [48, 16, 8] (fused on disk)" in _problem_text(p)
    assert "partitions" not in _problem_text(GemmProblem(m=1, n=16, k=16).to_dict())
    poison = Poison(partition_slots=0xFF).to_dict()
    assert "partition_slots=0xFF (nan" in _poison_text(poison)
    assert _isolation_key({"property": "partition_isolation", "poison": poison}) == ("partition_slots", "nan")


REGRESSION = ROOT / "regressions" / "cases" / "merged-qkv-fused-scale-stale-slots.json"


def test_the_regression_case_replays_bit_for_bit_and_catches_the_mutant() -> None:
    case = load_case(REGRESSION)
    assert case.problem.partitions and case.problem.fused_on_disk and case.poison.partition_slots
    first = execute(case.trial(), digest=True)
    assert first.status == "pass" and first.digest == case.digest
    bad = execute(case.trial(MUTANT), digest=True)
    assert bad.status == "fail" and bad.digest == case.digest
    proc = subprocess.run([sys.executable, "-m", "harness", "replay", str(REGRESSION)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "partitions=[" in proc.stdout


def test_a_merged_case_round_trips(tmp_path) -> None:
    trial = Trial(MUTANT, "partition_isolation", QKV.with_(fused_on_disk=True), Poison(partition_slots=0xFF))
    first = execute(trial, digest=True)
    assert first.status == "fail" and first.digest
    case = Case.from_trial(trial, level="linear", observed={"summary": first.reason}, environment={},
                           digest=first.digest)
    again = load_case(save_case(case, tmp_path / "c.json")).trial()
    assert again == trial
    second = execute(again, digest=True)
    assert second.digest == first.digest and second.reason == first.reason


def test_a_merged_layer_under_the_graph_replay_orchestration() -> None:
    """The layer merges at load time (LinearBackend.load), so the captured per-call part multiplies
    with the merged weight; graph_replay's orchestration (CUDA graph factored out, as in
    tests/test_graph_replay.py) passes on a merged layer with poisoned slots."""
    from harness.experiments.linear import LinearExperiment
    def host_replay(call, refill):  # capture_and_replay's call sequence without the graph
        call()
        call()
        refill()
        return call()

    p = QKV.with_(fused_on_disk=True)
    exp = LinearExperiment(registry.get(LAYER), Trial(LAYER, "graph_replay", p, Poison(partition_slots=0xFF)), "cuda" if torch.cuda.is_available() else "cpu")
    res = exp.graph_replay(replay=host_replay)
    assert res.ok, res.summary
