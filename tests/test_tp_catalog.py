"""The TP catalog: real model shapes, their per-rank shards, and the splits NVFP4 cannot run."""

from __future__ import annotations

import re

import pytest

from harness.format import BLOCK_SIZE
from harness.tp_catalog import (CATALOG, EVIDENCE, UNVERIFIED, LayerShape, ShardError, TPShard, layers, lookup,
                                origin_label, shard, tp_cases)

NANO = "Nemotron-3-Nano-30B-A3B"

# NVFP4-NOTES.md, "TP splits that break alignment": per-rank split dimension at TP2/TP4/TP8.
NOTES_TABLE = {
    (NANO, "moe down"): (928, 464, 232),
    (NANO, "shared down"): (1856, 928, 464),
    ("Nemotron-3-Super-120B-A12B", "moe down"): (1344, 672, 336),
    ("Qwen2.5-72B", "dense down"): (14784, 7392, 3696),
    ("Qwen3-30B-A3B", "moe down"): (384, 192, 96),
    ("GLM-4.5-Air", "dense down"): (5472, 2736, 1368),
    ("GLM-4.5-Air", "moe down"): (704, 352, 176),
    ("gpt-oss-120b", "moe down"): (1440, 720, 360),
    ("DeepSeek-V3", "dense down"): (9216, 4608, 2304),
    ("DeepSeek-V3", "moe down"): (1024, 512, 256),
    ("Llama-3-8B", "dense down"): (7168, 3584, 1792),
    ("Llama-3-70B", "dense down"): (14336, 7168, 3584),
    ("Llama-3.1-405B", "dense down"): (26624, 13312, 6656),
}


def _cases() -> dict[tuple[str, str, int], TPShard | str]:
    return {(layer.model, layer.layer, tp): result for layer, tp, result in tp_cases()}


def test_catalog_covers_the_notes_table_and_matches_its_numbers():
    for (model, name), per_rank in NOTES_TABLE.items():
        entry = lookup(model, name)
        assert entry.parallel == "row"
        assert tuple(entry.k_full // tp for tp in (2, 4, 8)) == per_rank, (model, name)


def test_every_entry_is_well_formed_and_cites_its_config():
    seen = set()
    for entry in CATALOG:
        assert (entry.model, entry.layer) not in seen, f"duplicate {entry.model} {entry.layer}"
        seen.add((entry.model, entry.layer))
        assert entry.k_full % BLOCK_SIZE == 0, entry       # full-size K is always NVFP4-able
        assert entry.verified and entry.model in EVIDENCE, entry
        assert re.search(r"\S+/\S+ config\.json: \w+=\d+", entry.source), entry.source


def test_mlp_pairs_are_consistent():
    """gate_up is [2*I or I, H] column-parallel and down is [H, I] row-parallel, for every MLP."""
    for entry in CATALOG:
        if entry.parallel != "row":
            continue
        prefix = entry.layer.rsplit(" ", 1)[0]
        up = [e for e in layers(entry.model) if e.layer in (f"{prefix} gate_up", f"{prefix} up")]
        assert len(up) == 1, entry
        up = up[0]
        assert up.parallel == "column" and up.k_full == entry.n_full
        gated = up.layer.endswith("gate_up")
        assert up.n_full == (2 if gated else 1) * entry.k_full
    # Nemotron-H MLPs are non-gated relu2; the others are SwiGLU.
    assert lookup(NANO, "moe up").n_full == 1856
    assert lookup("Qwen3-30B-A3B", "moe gate_up").n_full == 2 * 768


def test_per_rank_shapes_include_the_awkward_ones():
    cases = _cases()
    assert cases[(NANO, "moe down", 4)] == TPShard(n=2688, k=464, tp=4, parallel="row")    # 29 k-blocks
    assert cases[(NANO, "moe up", 8)] == TPShard(n=232, k=2688, tp=8, parallel="column")   # N = 8 mod 16
    assert cases[("Qwen2.5-72B", "dense down", 8)] == TPShard(n=8192, k=3696, tp=8, parallel="row")
    assert cases[("gpt-oss-120b", "moe down", 4)] == TPShard(n=2880, k=720, tp=4, parallel="row")
    per_rank = {v for r in cases.values() if isinstance(r, TPShard) for v in (r.n, r.k)}
    assert {464, 232, 3696, 720} <= per_rank


def test_tp_cases_yields_every_layer_at_every_degree():
    results = list(tp_cases((1, 2, 4, 8)))
    assert len(results) == 4 * len(CATALOG)
    for layer, tp, result in results:
        if tp == 1:
            assert result == TPShard(n=layer.n_full, k=layer.k_full, tp=1, parallel=layer.parallel)
    assert [tp for _, tp, _ in tp_cases((2,))] == [2] * len(CATALOG)


def test_unsplittable_row_shards_are_reported_with_k_and_tp():
    """Per-rank K not a multiple of 16 at TP8: Nano MoE 1856/8=232, GLM-4.5-Air dense 10944/8=1368,
    gpt-oss 2880/8=360.  A block cannot straddle ranks, so these are ShardError, not padded."""
    errors = {(m, name, tp): r for (m, name, tp), r in _cases().items() if isinstance(r, str)}
    assert set(errors) == {(NANO, "moe down", 8), ("GLM-4.5-Air", "dense down", 8),
                           ("gpt-oss-120b", "moe down", 8)}
    for (model, name, tp), message in errors.items():
        entry = lookup(model, name)
        per_rank = entry.k_full // tp
        assert f"k={per_rank}" in message and f"tp={tp}" in message and "multiple of 16" in message
        with pytest.raises(ShardError, match=f"k={per_rank} .*tp={tp}"):
            entry.shard(tp)


def test_shard_errors_for_uneven_splits_name_the_dimension():
    with pytest.raises(ShardError, match=r"n=1000 does not split evenly over tp=3"):
        shard(1000, 64, 3, "column")
    with pytest.raises(ShardError, match=r"k=1856 does not split evenly over tp=3"):
        lookup(NANO, "moe down").shard(3)


def test_origin_label():
    assert origin_label(lookup(NANO, "moe down"), 4) == "Nemotron-3-Nano-30B-A3B moe down 1856 / TP4 (row)"
    assert origin_label(lookup(NANO, "moe up"), 8) == "Nemotron-3-Nano-30B-A3B moe up 1856 / TP8 (column)"
    assert origin_label(lookup("Qwen3-30B-A3B", "moe gate_up"), 2) == "Qwen3-30B-A3B moe gate_up 1536 / TP2 (column)"


def test_layer_shape_validation_and_unverified_marker():
    with pytest.raises(ValueError, match="parallel"):
        LayerShape("m", "x", 16, 16, "diagonal", "src")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k_full"):
        LayerShape("m", "x", 16, 0, "row", "src")
    assert not LayerShape("m", "x", 16, 16, "row", UNVERIFIED).verified
    with pytest.raises(KeyError, match="no catalogued model"):
        layers("no-such-model")
    with pytest.raises(KeyError, match="no catalogued layer"):
        lookup(NANO, "attention qkv")
