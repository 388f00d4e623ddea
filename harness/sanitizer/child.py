"""The child process: run one trial with unwritten padding and write the operand map.

``python -m harness.sanitizer child SPEC.json MAP.json`` runs under compute-sanitizer
(:func:`harness.sanitizer.run.sanitize_trial` starts it); it runs the backend once on the trial's
problem and poison, every buffer a fresh allocation, and keeps MAP.json up to date with every buffer
(written before the backend is called and again after, so a fault mid-call leaves the map behind).
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


def _write_json(path: Path, doc: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_child(spec_path: Path, map_path: Path) -> int:
    """Run the trial of ``spec_path`` once on the GPU with unwritten padding; keep ``map_path``
    up to date with every buffer (written before the backend is called, and again after)."""
    import torch

    from harness.backends import registry
    from harness.backends.protocol import Unsupported
    from harness.layouts import ScaleLayout
    from harness.pipeline import MergedCheckpoint, operands_for
    from harness.experiments.linear import linear_inputs
    from harness.trial import Trial

    spec = json.loads(spec_path.read_text())
    for plugin in spec.get("plugins", []):
        registry.load_plugin(plugin)
    trial = Trial.from_dict(spec["trial"])
    problem, poison = trial.problem, trial.poison
    backend = registry.get(trial.backend)
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
        if backend.level == "gemm":
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
            raise Unsupported(f"{backend.name}: the sanitizer runs gemm, linear and quantizer backends; "
                              f"level {backend.level!r} is not covered")
        publish("running")
        _sync()
    except Unsupported as exc:
        publish("unsupported", str(exc))
        return 0
    except Exception as exc:  # noqa: BLE001 - the parent reads the status; the sanitizer's report is the result
        publish("raised", f"{type(exc).__name__}: {exc}"[:2000])
        return 3
    publish("done")
    return 0
