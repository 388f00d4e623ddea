"""Case files: round trip, atomic no-clobber saving, stable ids, and a clear error for every bad field."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.backends import registry
from harness.backends.protocol import GemmBackend
from harness.cases import (SCHEMA, Case, CaseFileError, case_id, load_case, replay_command,
                           save_case)
from harness.layouts import ScaleLayout
from harness.problem import GemmProblem, Poison
from harness.trial import PROPERTIES, Trial

FAKE_BACKEND = "fake-gemm-for-case-tests"


class _FakeGemm(GemmBackend):
    name = FAKE_BACKEND
    description = "registered only while test_cases runs"

    def run(self, ops, out=None):  # pragma: no cover - never called
        raise NotImplementedError


@pytest.fixture(autouse=True)
def fake_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register a GEMM backend for the duration of one test (removed afterwards by monkeypatch)."""
    registry.all_backends()  # load the built-ins first so they cannot replace the fake later
    monkeypatch.setitem(registry._REGISTRY, FAKE_BACKEND, _FakeGemm())


def make_case(**kw) -> Case:
    args = dict(
        backend=FAKE_BACKEND, level="gemm", property="row_isolation",
        problem=GemmProblem(m=7, n=48, k=464, seed=3, origin="Nemotron-3-Nano moe 1856 / TP4 row"),
        poison=Poison(m_pad=0x7F),
        observed={"summary": "rows 0-6 NaN with NaN m-padding scales", "max_err_units": math.inf,
                  "nan_rows": [0, 1, 2, 3, 4, 5, 6], "changed_rows": [], "changed_cols": [], "region": "m_pad"},
        a_layout="8x4",
        environment={"device": "cuda", "gpu_name": "NVIDIA B200", "compute_capability": 100, "driver": "580.1",
                     "cuda": "13.0", "torch": "2.11.0", "triton": "3.6.0", "flashinfer": "0.7.2"},
        digest="ab" * 32, note="found by the fuzzer", expect="xfail", tracks="vLLM #37563")
    args.update(kw)
    return Case.create(**args)


def valid_doc() -> dict:
    doc = make_case().to_dict()
    doc["replay"] = "nvfp4-harness replay results/cases/x.json"
    return doc


def write_doc(tmp_path: Path, doc, name: str = "case.json") -> Path:
    p = tmp_path / name
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc, indent=2))
    return p


# ----------------------------------------------------------------------------------------------
# Round trip, ids, saving
# ----------------------------------------------------------------------------------------------

def test_round_trip_through_a_file(tmp_path: Path) -> None:
    case = make_case()
    path = save_case(case, tmp_path / "cases" / f"{case.id}.json")
    assert path == tmp_path / "cases" / f"{case.id}.json"
    loaded = load_case(path)
    assert loaded.to_dict() == case.to_dict()
    assert loaded.problem == case.problem and loaded.poison == case.poison
    assert loaded.a_layout is ScaleLayout.SWIZZLED_8x4
    assert loaded.observed["max_err_units"] == math.inf
    raw = json.loads(path.read_text())
    assert raw["schema"] == SCHEMA
    assert raw["observed"]["max_err_units"] == "Infinity"  # the file stays standard JSON
    assert raw["replay"] == replay_command(path) == case.replay
    assert raw["replay"].startswith("nvfp4-harness replay ")


def test_optional_keys_may_be_left_out(tmp_path: Path) -> None:
    doc = valid_doc()
    for key in ("a_layout", "digest", "note", "tracks"):
        del doc[key]
    del doc["problem"]["origin"], doc["problem"]["batch"]
    doc["observed"] = {"summary": "wrong sums"}
    case = load_case(write_doc(tmp_path, doc))
    assert (case.a_layout, case.digest, case.note, case.tracks) == (None, None, None, None)
    assert case.problem.origin is None and case.observed == {"summary": "wrong sums"}


@pytest.mark.parametrize("spelling, value", [("Infinity", math.inf), ("inf", math.inf), ("-inf", -math.inf),
                                             ("NaN", math.nan), ("nan", math.nan), (2.5, 2.5), (None, None)])
def test_max_err_units_spellings(tmp_path: Path, spelling, value) -> None:
    doc = valid_doc()
    doc["observed"]["max_err_units"] = spelling
    got = load_case(write_doc(tmp_path, doc)).observed["max_err_units"]
    assert got == value or (value is not None and math.isnan(value) and math.isnan(got))


def test_case_id_is_stable_and_content_addressed() -> None:
    p, q = GemmProblem(m=7, n=48, k=464), Poison(m_pad=0x7F)
    a = case_id("triton-emu-8x4", "row_isolation", p, q, "8x4")
    assert a == case_id("triton-emu-8x4", "row_isolation", GemmProblem(m=7, n=48, k=464), Poison(m_pad=0x7F),
                        ScaleLayout.SWIZZLED_8x4)
    assert a.startswith("row_isolation-triton-emu-8x4-") and len(a.rsplit("-", 1)[1]) == 8
    assert a != case_id("triton-emu-8x4", "row_isolation", p, Poison(m_pad=0x7E), "8x4")
    assert a != case_id("triton-emu-8x4", "row_isolation", p.with_(seed=1), q, "8x4")
    odd = case_id("vendor:kernel/v2 fast", "k_tail", p, q)
    assert "/" not in odd and ":" not in odd and " " not in odd


def test_save_is_idempotent_and_never_clobbers_a_different_file(tmp_path: Path) -> None:
    target = tmp_path / "cases" / "c.json"
    first = save_case(make_case(), target)
    assert save_case(_same_as(first), target) == first  # same bytes: left as it is

    other = make_case(note="a different failure that got the same file name")
    second = save_case(other, target)
    assert second == tmp_path / "cases" / "c-2.json"
    assert load_case(first).note == "found by the fuzzer"
    assert load_case(second).note == other.note
    assert load_case(second).replay == replay_command(second)  # the replay names the file it is in

    third = save_case(make_case(note="and another"), target)
    assert third.name == "c-3.json"
    assert sorted(p.name for p in target.parent.iterdir()) == ["c-2.json", "c-3.json", "c.json"]  # no temp files


def _same_as(path: Path) -> Case:
    """The case stored at ``path``, with the replay cleared so save_case recomputes the same one."""
    case = load_case(path)
    case.replay = ""
    return case


def test_overwrite_replaces(tmp_path: Path) -> None:
    target = tmp_path / "c.json"
    save_case(make_case(), target)
    assert save_case(make_case(note="updated"), target, overwrite=True) == target
    assert load_case(target).note == "updated"


def test_save_refuses_an_invalid_case(tmp_path: Path) -> None:
    case = make_case()
    case.expect = "maybe"  # type: ignore[assignment]
    with pytest.raises(CaseFileError, match="expect"):
        save_case(case, tmp_path / "c.json")
    assert not list(tmp_path.iterdir())


def test_properties_lists_the_known_properties() -> None:
    assert {"reference_agreement", "row_isolation", "column_isolation", "k_tail", "output_coverage",
            "determinism", "clean_rejection", "tp_consistency", "quantizer_agreement",
            "batch_invariance"} <= set(PROPERTIES)


# ----------------------------------------------------------------------------------------------
# Malformed case files: each error names the file, the field and the bad value
# ----------------------------------------------------------------------------------------------

def _set(path: str, value) -> Callable[[dict], None]:
    def mutate(doc: dict) -> None:
        *parents, last = path.split(".")
        node = doc
        for p in parents:
            node = node[p]
        node[last] = value
    return mutate


def _del(path: str) -> Callable[[dict], None]:
    def mutate(doc: dict) -> None:
        *parents, last = path.split(".")
        node = doc
        for p in parents:
            node = node[p]
        del node[last]
    return mutate


MALFORMED = [
    # (id, mutation, field path in the error, fragments the message must contain)
    ("missing-top", _del("problem"), "problem", ["missing field 'problem'"]),
    ("missing-nested", _del("problem.k"), "problem.k", ["missing field 'problem.k'"]),
    ("missing-poison-field", _del("poison.k_tail"), "poison.k_tail", ["missing field"]),
    ("missing-summary", _del("observed.summary"), "observed.summary", ["missing field"]),
    ("unknown-top", _set("expcet", "pass"), "expcet", ["unknown field 'expcet'", "'expect'"]),
    ("unknown-problem", _set("problem.kk", 16), "problem.kk", ["unknown field"]),
    ("schema-version", _set("schema", "nvfp4-harness/case/2"), "schema",
     ["'nvfp4-harness/case/2'", "unknown case schema version", SCHEMA]),
    ("schema-foreign", _set("schema", "something/else"), "schema", ["not an nvfp4-harness case file"]),
    ("k-not-16", _set("problem.k", 100), "problem.k", ["problem.k=100", "multiple of 16"]),
    ("m-negative", _set("problem.m", -1), "problem.m", ["problem.m=-1", "integer >= 0"]),
    ("input-layout", _set("problem.input_layout", "sliced"), "problem.input_layout",
     ["problem.input_layout='sliced'", "'column_slice'"]),
    ("n-string", _set("problem.n", "48"), "problem.n", ["problem.n='48'", "positive integer"]),
    ("k-bool", _set("problem.k", True), "problem.k", ["problem.k=True"]),
    ("dtype", _set("problem.out_dtype", "fp8"), "problem.out_dtype", ["'fp8'", "bfloat16"]),
    ("distribution", _set("problem.distribution", "uniform"), "problem.distribution", ["'uniform'", "normal"]),
    ("seed", _set("problem.seed", 1.5), "problem.seed", ["problem.seed=1.5", "integer >= 0"]),
    ("batch-product", _set("problem.batch", [2, 3]), "problem.batch", ["multiply to 6", "m=7"]),
    ("batch-element", _set("problem.batch", [7, "x"]), "problem.batch[1]", ["problem.batch[1]='x'"]),
    ("poison-range", _set("poison.m_pad", 256), "poison.m_pad", ["poison.m_pad=256", "byte"]),
    ("poison-negative", _set("poison.n_pad", -1), "poison.n_pad", ["poison.n_pad=-1", "0..255"]),
    ("poison-hex-string", _set("poison.data", "0x7F"), "poison.data", ["poison.data='0x7F'", "byte"]),
    ("poison-stale", _set("poison.stale_memory", 1), "poison.stale_memory", ["stale_memory=1", "true or false"]),
    ("layout", _set("a_layout", "16x4"), "a_layout", ["a_layout='16x4'", "'128x4'", "'8x4'", "'linear'"]),
    ("layout-type", _set("a_layout", 8), "a_layout", ["a_layout=8"]),
    ("level", _set("level", "kernel"), "level", ["level='kernel'", "'gemm'"]),
    ("property", _set("property", "speed"), "property", ["property='speed'", "'row_isolation'"]),
    ("expect", _set("expect", "fail"), "expect", ["expect='fail'", "'xfail'"]),
    ("digest", _set("digest", "abc"), "digest", ["digest='abc'", "sha256"]),
    ("created", _set("created", "yesterday"), "created", ["created='yesterday'", "ISO 8601"]),
    ("id-path", _set("id", "../evil"), "id", ["id='../evil'", "names a file"]),
    ("id-type", _set("id", 12), "id", ["id=12", "non-empty string"]),
    ("backend-empty", _set("backend", ""), "backend", ["backend=''", "non-empty string"]),
    ("replay-empty", _set("replay", " "), "replay", ["replay=' '"]),
    ("replay-multiline", _set("replay", "a\nb"), "replay", ["one-line"]),
    ("tracks-type", _set("tracks", 37563), "tracks", ["tracks=37563"]),
    ("max-err", _set("observed.max_err_units", "big"), "observed.max_err_units", ["'big'", "a number"]),
    ("nan-rows", _set("observed.nan_rows", [0, -1]), "observed.nan_rows[1]", ["nan_rows[1]=-1"]),
    ("changed-cols", _set("observed.changed_cols", "0,1"), "observed.changed_cols", ["'0,1'", "list"]),
    ("region", _set("observed.region", 3), "observed.region", ["observed.region=3"]),
    ("env-type", _set("environment", ["cuda"]), "environment", ["environment is a list", "JSON object"]),
    ("env-cc", _set("environment.compute_capability", "90"), "environment.compute_capability",
     ["compute_capability='90'", "integer"]),
    ("observed-type", _set("observed", "NaN rows"), "observed", ["observed is a string"]),
]


@pytest.mark.parametrize("mutate, field, fragments", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_case_names_the_field(tmp_path: Path, mutate, field: str, fragments: list[str]) -> None:
    doc = valid_doc()
    mutate(doc)
    path = write_doc(tmp_path, doc, "bad-case.json")
    with pytest.raises(CaseFileError) as info:
        load_case(path)
    err = info.value
    msg = str(err)
    assert err.field == field, msg
    assert msg.startswith(f"{path}: "), msg
    assert field in msg, msg
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"
    assert isinstance(err, ValueError)


def test_from_dict_names_its_source() -> None:
    doc = valid_doc()
    doc["problem"]["k"] = 40
    with pytest.raises(CaseFileError, match=r"^regressions/x\.json: problem\.k=40: expected a multiple of 16"):
        Case.from_dict(doc, source="regressions/x.json")


def test_not_an_object(tmp_path: Path) -> None:
    with pytest.raises(CaseFileError, match=r"case\.json: the case file is a list: expected a JSON object"):
        load_case(write_doc(tmp_path, [1, 2]))


def test_bad_json_names_line_and_column(tmp_path: Path) -> None:
    text = json.dumps(valid_doc(), indent=2)
    lines = text.splitlines()
    lines[2] = lines[2].rstrip(",")  # drop the comma ending line 3: the error is on line 4
    path = write_doc(tmp_path, "\n".join(lines))
    with pytest.raises(CaseFileError, match=r"case\.json: invalid JSON at line 4, column 3") as info:
        load_case(path)
    assert info.value.field is None


def test_truncated_json(tmp_path: Path) -> None:
    text = json.dumps(valid_doc(), indent=2)
    with pytest.raises(CaseFileError, match=r"invalid JSON at line \d+, column \d+"):
        load_case(write_doc(tmp_path, text[: len(text) // 2]))


def test_duplicate_key(tmp_path: Path) -> None:
    text = json.dumps(valid_doc()).replace('"expect": "xfail"', '"expect": "xfail", "expect": "pass"')
    with pytest.raises(CaseFileError, match="key 'expect' appears twice") as info:
        load_case(write_doc(tmp_path, text))
    assert info.value.field == "expect"


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(CaseFileError, match=r"nope\.json: no such case file"):
        load_case(tmp_path / "nope.json")
    bad = tmp_path / "binary.json"
    bad.write_bytes(b"\xff\xfe{}")
    with pytest.raises(CaseFileError, match=r"binary\.json: not UTF-8"):
        load_case(bad)


def test_unknown_backend_lists_the_known_ones(tmp_path: Path) -> None:
    doc = valid_doc()
    doc["backend"] = "no-such-backend"
    path = write_doc(tmp_path, doc)
    with pytest.raises(CaseFileError) as info:
        load_case(path)
    msg = str(info.value)
    assert info.value.field == "backend"
    assert msg.startswith(f"{path}: backend='no-such-backend': unknown backend")
    assert FAKE_BACKEND in msg  # the known names are listed
    assert "--plugin FILE_OR_MODULE" in msg
    # where plugins are not loaded the caller can skip the registry check
    assert load_case(path, check_backend=False).backend == "no-such-backend"


def test_backend_level_must_match(tmp_path: Path) -> None:
    doc = valid_doc()
    doc["level"] = "linear"
    with pytest.raises(CaseFileError, match=r"level='linear': expected 'gemm', the level of backend") as info:
        load_case(write_doc(tmp_path, doc))
    assert info.value.field == "level"


def test_every_required_field_is_required(tmp_path: Path) -> None:
    base = valid_doc()
    required = [k for k in base if k not in ("a_layout", "tp", "parallel", "digest", "note", "tracks")]
    for key in required:
        doc = copy.deepcopy(base)
        del doc[key]
        with pytest.raises(CaseFileError) as info:
            load_case(write_doc(tmp_path, doc))
        assert info.value.field == key and f"missing field '{key}'" in str(info.value)


# ----------------------------------------------------------------------------------------------
# The trial inside a case
# ----------------------------------------------------------------------------------------------

def test_the_trial_round_trips_through_a_case_file(tmp_path: Path) -> None:
    trial = Trial(FAKE_BACKEND, "tp_consistency", GemmProblem(m=3, n=32, k=464, seed=2), Poison(), "8x4", 4, "row")
    case = Case.from_trial(trial, level="gemm", observed={"summary": "x"}, environment={})
    path = save_case(case, tmp_path / "c.json")
    doc = json.loads(path.read_text())
    assert {k: doc[k] for k in trial.to_dict()} == trial.to_dict()  # the one serialisation of a trial
    assert load_case(path, check_backend=False).trial() == trial
    assert load_case(path, check_backend=False).trial("other").backend == "other"


def test_a_case_written_before_tp_was_a_top_level_key_reads_it_from_observed(tmp_path: Path) -> None:
    doc = valid_doc()
    del doc["tp"], doc["parallel"]
    doc["observed"].update(tp=4, parallel="row")
    case = load_case(write_doc(tmp_path, doc), check_backend=False)
    assert (case.tp, case.parallel) == (4, "row")
    del doc["observed"]["tp"], doc["observed"]["parallel"]
    assert (load_case(write_doc(tmp_path, doc), check_backend=False).trial().tp) == 1


@pytest.mark.parametrize("key, value, expected", [("tp", 0, "integer >= 1"), ("tp", "4", "integer >= 1"),
                                                  ("parallel", "diagonal", "'column', 'row'")])
def test_a_bad_tp_split_names_the_field(tmp_path: Path, key: str, value, expected: str) -> None:
    doc = valid_doc()
    doc[key] = value
    with pytest.raises(CaseFileError, match=expected) as info:
        load_case(write_doc(tmp_path, doc), check_backend=False)
    assert info.value.field == key
