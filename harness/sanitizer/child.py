"""The child process: run one trial with unwritten padding and write the operand map.

``python -m harness.sanitizer child SPEC.json MAP.json`` runs under compute-sanitizer
(:func:`harness.sanitizer.run.sanitize_trial` starts it); it runs the backend once on the trial's
problem and poison, every buffer a fresh allocation, and keeps MAP.json up to date with every buffer
(written before the backend is called and again after, so a fault mid-call leaves the map behind).
GEMM-level, linear and quantizer trials build their operands with the dense pipeline's
``unwritten_padding`` mode; grouped and fused-MoE trials (:mod:`harness.grouped`) with the grouped
pipeline's, and map every expert's section and weight as its own buffer (:func:`grouped_entries`,
:func:`moe_entries`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from harness.sanitizer.operands import MAP_SCHEMA, dense_entry, scales_entry


def _operand_entries(ops) -> list[dict]:
    from harness.format import BLOCK_SIZE

    out = []
    for side, q in (("a", ops.a), ("w", ops.w)):
        row_region = "m_pad" if side == "a" else "n_pad"
        out.append(dense_entry(f"{side}.packed", q.packed, real_rows=q.rows, real_cols=q.k // 2,
                               row_region=row_region, col_region="k_tail"))
        out.append(scales_entry(f"{side}.scales", q.scales, layout=q.layout.value, role=q.role.value, rows=q.rows,
                                kblocks=q.k // BLOCK_SIZE, data_rows=q.rows_alloc, data_kblocks=q.k_alloc // BLOCK_SIZE))
        out.append(dense_entry(f"{side}.global_scale", q.global_scale))
    out.append(dense_entry("alpha", ops.alpha))
    if ops.a_dense is not None:
        out.append(dense_entry("a.dense", ops.a_dense, real_cols=ops.k, col_region="k_tail"))
    return out


def _sections(name: str, g) -> list[dict]:
    """One entry per expert section of a grouped activation buffer
    (:class:`~harness.grouped.pipeline.GroupedTensor`): ``NAME.expert[e].packed`` (rows past the
    expert's tokens: ``group_row_pad``; packed columns past K: ``k_tail``) and ``NAME.expert[e].scales``
    (scale rows past its tokens, up to the layout's row tile: ``group_row_pad``).  A zero-token
    expert occupies no bytes and has no entry."""
    from harness.format import BLOCK_SIZE

    out = []
    for e, c in enumerate(g.splits):
        r0, r1 = g.row_offsets[e], g.row_offsets[e + 1]
        s0, s1 = g.sf_row_offsets[e], g.sf_row_offsets[e + 1]
        if r1 == r0:
            continue
        out.append(dense_entry(f"{name}.expert[{e}].packed", g.packed[r0:r1], real_rows=c, real_cols=g.k // 2,
                               row_region="group_row_pad", col_region="k_tail"))
        out.append(scales_entry(f"{name}.expert[{e}].scales", g.scales[s0:s1], layout=g.layout.value, role="activation",
                                rows=c, kblocks=g.k // BLOCK_SIZE, data_rows=r1 - r0,
                                data_kblocks=g.k_alloc // BLOCK_SIZE, row_region="group_row_pad"))
    return out


def _experts(name: str, w) -> list[dict]:
    """One entry per expert of stacked expert weights (:class:`~harness.grouped.pipeline.ExpertWeights`):
    ``NAME.expert[e].packed`` / ``.scales`` (weight rows past N: ``n_pad``; past K: ``k_tail``;
    the 128x4 tile's own rounding: ``layout_pad``), and ``NAME.global_scales`` [E]."""
    from harness.format import BLOCK_SIZE

    out = []
    for e in range(w.packed.shape[0]):
        out.append(dense_entry(f"{name}.expert[{e}].packed", w.packed[e], real_rows=w.n, real_cols=w.k // 2,
                               row_region="n_pad", col_region="k_tail"))
        out.append(scales_entry(f"{name}.expert[{e}].scales", w.scales[e], layout=w.layout.value, role="weight",
                                rows=w.n, kblocks=w.k // BLOCK_SIZE, data_rows=w.n_alloc,
                                data_kblocks=w.packed.shape[2] * 2 // BLOCK_SIZE))
    out.append(dense_entry(f"{name}.global_scales", w.global_scales))
    return out


def grouped_entries(ops) -> list[dict]:
    """Map entries of every buffer a grouped backend receives
    (:class:`~harness.grouped.pipeline.GroupedOperands`): the hidden states, the grouped activation
    buffer expert by expert (``a.expert[e].*``), each expert's weight (``w.expert[e].*``), the
    routing tensors and the per-expert scales.  A tensor sharing storage with one mapped before
    (the grouped buffer's global scales are the input scales) is mapped once, under the first name."""
    entries = [dense_entry("hidden", ops.hidden), dense_entry("input_scales", ops.input_scales), *_sections("a", ops.a),
               dense_entry("a.global_scales", ops.a.global_scales), *_experts("w", ops.w),
               dense_entry("order", ops.order), dense_entry("slot", ops.slot), dense_entry("topk_ids", ops.topk_ids),
               dense_entry("topk_weights", ops.topk_weights), dense_entry("alpha", ops.alpha)]
    return _distinct(entries)


def moe_entries(ops) -> list[dict]:
    """Map entries of every buffer a fused-MoE backend receives (:class:`~harness.grouped.moe.MoeOperands`):
    the hidden states, the grouped FC1 input buffer expert by expert (``a1.expert[e].*``), both
    weights expert by expert (``w13.expert[e].*``, ``w2.expert[e].*``), the routing tensors and the
    per-expert scales (mapped once where they share storage, as in :func:`grouped_entries`)."""
    entries = [dense_entry("hidden", ops.hidden), dense_entry("fc1_input_scales", ops.fc1_input_scales),
               *_sections("a1", ops.a1), dense_entry("a1.global_scales", ops.a1.global_scales),
               *_experts("w13", ops.w13), *_experts("w2", ops.w2), dense_entry("order", ops.order),
               dense_entry("slot", ops.slot), dense_entry("topk_ids", ops.topk_ids),
               dense_entry("topk_weights", ops.topk_weights), dense_entry("fc2_input_scales", ops.fc2_input_scales),
               dense_entry("alpha1", ops.alpha1), dense_entry("alpha2", ops.alpha2)]
    return _distinct(entries)


def _distinct(entries: list[dict], mapped: list[dict] = ()) -> list[dict]:
    """``entries`` without empty buffers and without one overlapping the bytes of an earlier entry
    or of one already ``mapped``."""
    out: list[dict] = []
    for b in entries:
        start, end = b["data_ptr"], b["data_ptr"] + b["nbytes"]
        if b["nbytes"] and not any(start < o["data_ptr"] + o["nbytes"] and o["data_ptr"] < end
                                   for o in (*mapped, *out)):
            out.append(b)
    return out


def _write_json(path: Path, doc: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _run_grouped(backend, trial, dev, add, publish, mapped: list[dict]) -> None:
    """Run a grouped or fused-MoE trial's backend once, as :func:`harness.grouped.checks.run_property`
    calls it, on operands built with the trial's poison and the padding no backend may read left
    unwritten; ``add`` maps every buffer (the result too; none twice: ``mapped`` are the entries
    so far), ``publish`` marks the run started.

    Raises :class:`~harness.grouped.checks.NotApplicable` or ``Unsupported`` as the grouped runner
    does (a fused-MoE backend on a grouped-GEMM trial, an FC1 input-scale granularity it does not
    take, ``grouped_bytes`` of a backend that quantizes nothing).  A token-isolation trial runs once
    on its padded operands (its K tail clean, as the property builds them), without the victim."""
    from dataclasses import replace

    import torch

    from harness.grouped.checks import _moe_check_scales, check_kind, check_quantizes
    from harness.grouped.moe import build_moe_operands
    from harness.grouped.pipeline import build_grouped_operands
    from harness.grouped.problem import MoeProblem

    p = trial.problem
    real_out = p.hidden if isinstance(p, MoeProblem) else p.n  # output columns past it: N padding
    check_kind(backend, p)
    if isinstance(p, MoeProblem):
        ops = build_moe_operands(p, trial.poison, device=dev, unwritten_padding=True)
        add(moe_entries(ops), ops)
        _moe_check_scales(backend, ops)
        call = backend.run
    else:
        poison = replace(trial.poison, k_tail=0) if trial.property == "token_isolation" else trial.poison
        ops = build_grouped_operands(p, poison, device=dev, unwritten_padding=True)
        add(grouped_entries(ops), ops)
        if trial.property == "grouped_bytes":
            check_quantizes(backend)
        call = backend.quantize if trial.property == "grouped_bytes" else backend.run
    _sync()
    publish("running")
    res = call(ops)
    if isinstance(res, torch.Tensor):
        add(_distinct([dense_entry("out", res, real_cols=min(real_out, res.shape[-1]), col_region="n_pad")], mapped), res)
    elif res is not None and hasattr(res, "splits"):  # the grouped buffer a quantizing backend built
        add(_distinct(_sections("result", res) + [dense_entry("result.global_scales", res.global_scales)], mapped), res)


def run_child(spec_path: Path, map_path: Path) -> int:
    """Run the trial of ``spec_path`` once on the GPU with unwritten padding; keep ``map_path``
    up to date with every buffer (written before the backend is called, and again after)."""
    import torch

    from harness.backends import registry
    from harness.backends.protocol import Unsupported
    from harness.grouped.checks import NotApplicable
    from harness.layouts import ScaleLayout
    from harness.pipeline import MergedCheckpoint, operands_for
    from harness.experiments.linear import linear_inputs
    from harness.trial import Trial

    spec = json.loads(spec_path.read_text())
    for plugin in spec.get("plugins", []):
        registry.load_plugin(plugin)
    grouped = spec["trial"].get("level") == "grouped"
    if grouped:
        from harness.grouped import registry as grouped_registry
        from harness.grouped.problem import GroupedTrial

        trial = GroupedTrial.from_dict(spec["trial"])
        backend = grouped_registry.get(trial.backend)
    else:
        trial = Trial.from_dict(spec["trial"])
        backend = registry.get(trial.backend)
    problem, poison = trial.problem, trial.poison
    from harness import env

    dev = env.current().torch_device  # the GPU under the sanitizer (the CPU only in the harness's own tests)
    doc: dict[str, Any] = {"schema": MAP_SCHEMA, "status": "building", "buffers": [], "error": None}
    keep: list = []  # every mapped tensor stays alive (its address is never reused) until the end

    def publish(status: str, error: str | None = None) -> None:
        doc["status"], doc["error"] = status, error
        _write_json(map_path, doc)

    def add(entries: list[dict], *tensors) -> None:
        doc["buffers"].extend(entries)
        keep.extend(tensors)

    try:
        if grouped:
            _run_grouped(backend, trial, dev, add, publish, doc["buffers"])
        elif backend.level == "gemm":
            lay = ScaleLayout.parse(trial.a_layout) if trial.a_layout else None
            ops = operands_for(backend, problem, poison, device=dev, a_layout=lay, unwritten_padding=True)
            out = torch.empty((ops.m, ops.w.rows_alloc), dtype=ops.out_dtype, device=dev)
            add(_operand_entries(ops) + [dense_entry("out", out, real_cols=ops.n, col_region="n_pad")], ops, out)
            _sync()
            publish("running")
            res = backend.run(ops, out=out)
            if isinstance(res, torch.Tensor) and res.data_ptr() != out.data_ptr():
                add([dense_entry("result", res, real_cols=ops.n, col_region="n_pad")], res)
        elif backend.level == "linear":
            x, weight, bias = linear_inputs(problem, dev)
            if isinstance(weight, MergedCheckpoint):  # one checkpoint shard per partition, plus the scale slots
                entries = [e for i, sh in enumerate(weight.shards) for e in (
                    dense_entry(f"weight.shards[{i}].packed", sh.packed), dense_entry(f"weight.shards[{i}].scales", sh.scales),
                    dense_entry(f"weight.shards[{i}].weight_scale_2", sh.weight_scale_2))]
                entries.append(dense_entry("weight.weight_scale_2 slots", weight.weight_scale_2))
                if weight.input_scale is not None:
                    entries.append(dense_entry("weight.input_scale slots", weight.input_scale))
            else:
                entries = [dense_entry("weight.packed", weight.packed), dense_entry("weight.scales", weight.scales),
                           dense_entry("weight.weight_scale_2", weight.weight_scale_2)]
            add([dense_entry("x", x), *entries, dense_entry("bias", bias)], x, weight, bias)
            _sync()
            publish("running")
            res = backend.run(x, weight, bias)
            if isinstance(res, torch.Tensor):
                add([dense_entry("out", res)], res)
        elif backend.level == "quantizer":
            from harness.format import global_scale_encode_divisor

            x = problem.activations(dev)
            amax = x.float().abs().amax() if x.numel() else torch.zeros((), device=dev)  # an empty batch: as all-zero
            gs = global_scale_encode_divisor(amax).reshape(1).to(dev)
            add([dense_entry("x", x), dense_entry("global_scale", gs)], x, gs)
            _sync()
            publish("running")
            packed, scales = backend.quantize(x, gs)
            layout = getattr(backend, "layout", ScaleLayout.SWIZZLED_128x4)
            add([dense_entry("packed", packed, real_rows=problem.m, real_cols=problem.k // 2),
                 scales_entry("scales", scales, layout=ScaleLayout.parse(layout).value, role="activation",
                              rows=problem.m, kblocks=problem.k // 16, data_rows=problem.m,
                              data_kblocks=problem.k // 16)], packed, scales)
        else:  # e.g. the checkpoint level: export and load, no kernel of its own to sanitize yet
            raise Unsupported(f"{backend.name}: the sanitizer runs gemm, linear, quantizer and grouped backends; "
                              f"level {backend.level!r} is not covered")
        publish("running")
        _sync()
    except (Unsupported, NotApplicable) as exc:
        publish("unsupported", str(exc))
        return 0
    except Exception as exc:  # noqa: BLE001 - the parent reads the status; the sanitizer's report is the result
        publish("raised", f"{type(exc).__name__}: {exc}"[:2000])
        return 3
    publish("done")
    return 0
