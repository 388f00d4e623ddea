"""The operand map and where an address falls: operand, padding region, or how far outside.

The child process (:mod:`harness.sanitizer.child`) writes one JSON entry per buffer
(:func:`dense_entry`, :func:`scales_entry`): name, ``data_ptr``, ``nbytes``, shape and the
geometry of its regions; :func:`locate` maps a :class:`~harness.sanitizer.findings.Finding`'s
address back to it.  Scale buffers are mapped through the layout's byte offsets
(:mod:`harness.layouts`), so a byte of a swizzled buffer gets its logical row and k-block.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

from harness.sanitizer.findings import Finding

MAP_SCHEMA = "nvfp4-harness/sanitizer-map/1"
UNWRITTEN_REGIONS = ("m_pad", "layout_pad", "group_row_pad")
"""Scale regions the ``unwritten_padding`` pipeline modes leave unwritten (no backend may read them):
the dense pipeline's M padding, the grouped pipeline's group row padding (scale rows past an
expert's tokens), and the layout's own rounding past the allocated rows and K."""


def dense_entry(name: str, t, *, real_rows: int | None = None, real_cols: int | None = None,
                row_region: str | None = None, col_region: str | None = None) -> dict:
    """Map entry of a 2-D (or 1-D) tensor: elements [rows, cols]; rows >= real_rows are
    ``row_region``, columns >= real_cols ``col_region``."""
    shape = list(t.shape) if t.dim() >= 2 else [1, int(t.numel())]
    if t.dim() > 2:
        shape = [int(t.numel() // t.shape[-1]), int(t.shape[-1])]
    return {"name": name, "kind": "dense", "data_ptr": int(t.data_ptr()), "nbytes": int(t.numel() * t.element_size()),
            "elem_bytes": int(t.element_size()), "shape": shape,
            "real_rows": shape[0] if real_rows is None else real_rows,
            "real_cols": shape[1] if real_cols is None else real_cols,
            "row_region": row_region, "col_region": col_region}


def scales_entry(name: str, t, *, layout: str, role: str, rows: int, kblocks: int, data_rows: int,
                 data_kblocks: int, row_region: str | None = None) -> dict:
    """Map entry of a scale buffer in ``layout`` (storage order) for ``rows`` x ``kblocks`` real
    scales allocated for ``data_rows`` x ``data_kblocks``.  ``row_region`` renames the region of
    rows >= ``rows`` (``m_pad`` / ``n_pad`` by default; ``group_row_pad`` for an expert's section of
    a grouped buffer)."""
    return {"name": name, "kind": "scales", "data_ptr": int(t.data_ptr()), "nbytes": int(t.numel() * t.element_size()),
            "elem_bytes": 1, "shape": [int(t.shape[0]), int(t.numel() // t.shape[0]) if t.shape[0] else int(t.shape[-1])],
            "layout": str(layout),
            "role": str(role), "rows": rows, "kblocks": kblocks, "data_rows": data_rows, "data_kblocks": data_kblocks,
            "row_region": row_region}


def scale_region(role: str, r: int, kb: int, rows: int, kblocks: int, data_rows: int, data_kblocks: int) -> str:
    """Region of logical scale (r, kb): ``m_pad`` (activation rows >= m), ``layout_pad`` (beyond the
    allocated rows or K: the layout's own rounding), ``n_pad`` (weight rows [n, n_alloc)),
    ``k_tail`` (k-blocks [k/16, k_alloc/16) of real rows) or ``real``."""
    if r >= rows and role == "activation":
        return "m_pad"
    if r >= data_rows or kb >= data_kblocks:
        return "layout_pad"
    if r >= rows:
        return "n_pad" if role == "weight" else "m_pad"
    if kb >= kblocks:
        return "k_tail"
    return "real"


_INVERSE_CACHE: dict[tuple, Any] = {}


def _scale_position(entry: dict, offset: int) -> tuple[int, int]:
    """Logical (row, k-block) of byte ``offset`` of a scale buffer."""
    from harness.layouts import ScaleLayout, offset_grid

    pr, pk = entry["shape"]
    key = (entry["layout"], pr, pk)
    inv = _INVERSE_CACHE.get(key)
    if inv is None:
        import torch

        grid = offset_grid(ScaleLayout.parse(entry["layout"]), pr, pk).reshape(-1)
        inv = torch.empty(pr * pk, dtype=torch.int64)
        inv[grid] = torch.arange(pr * pk)
        _INVERSE_CACHE.clear() if len(_INVERSE_CACHE) > 64 else None
        _INVERSE_CACHE[key] = inv
    logical = int(inv[offset])
    return logical // pk, logical % pk


def region_at(entry: dict, offset: int) -> tuple[str, int | None, int | None]:
    """(region, row, col) of byte ``offset`` inside a mapped buffer."""
    if entry["kind"] == "scales":
        r, kb = _scale_position(entry, offset)
        region = scale_region(entry["role"], r, kb, entry["rows"], entry["kblocks"], entry["data_rows"],
                              entry["data_kblocks"])
        if region in ("m_pad", "n_pad") and entry.get("row_region"):
            region = entry["row_region"]
        return region, r, kb
    rows, cols = entry["shape"]
    elem = offset // entry["elem_bytes"]
    r, c = divmod(elem, cols) if cols else (0, elem)
    if r >= entry["real_rows"]:
        return entry.get("row_region") or "pad", r, c
    if c >= entry["real_cols"]:
        return entry.get("col_region") or "pad", r, c
    return "real", r, c


def locate(f: Finding, buffers: Iterable[dict]) -> Finding:
    """Fill ``f``'s buffer, region, inside, distance, row and col from the operand map.

    An address inside a buffer gets its region; one outside every buffer is attributed to the
    nearest buffer (``region`` ``beyond`` after its end, ``before`` ahead of its start), with the
    distance counted as compute-sanitizer counts it and, after the end, the row it would be.
    """
    if f.address is None:
        return f
    best = None
    for b in buffers:
        start, end = b["data_ptr"], b["data_ptr"] + b["nbytes"]
        if start <= f.address < end:
            f.buffer, f.inside, f.distance = b["name"], True, 0
            f.region, f.row, f.col = region_at(b, f.address - start)
            return f
        dist = f.address - end + 1 if f.address >= end else start - f.address
        if best is None or dist < best[0]:
            best = (dist, b)
    if best is None:
        return f
    dist, b = best
    f.buffer, f.inside, f.distance = b["name"], False, dist
    if f.address >= b["data_ptr"] + b["nbytes"]:
        f.region = "beyond"
        row_bytes = b["shape"][1] * b["elem_bytes"] if b["kind"] == "dense" else None
        f.row = (f.address - b["data_ptr"]) // row_bytes if row_bytes else None
    else:
        f.region = "before"
    return f


def group_findings(findings: list[Finding]) -> list[Finding]:
    """One record per (tool, error, kernel, access, buffer, region, inside), with a count and the
    first and last address; the first record's details are kept."""
    out: dict[tuple, Finding] = {}
    for f in findings:
        key = (f.tool, f.error, f.kernel, f.access, f.buffer, f.region, f.inside)
        g = out.get(key)
        if g is None:
            out[key] = dataclasses.replace(f, last_address=f.address)
            continue
        g.count += f.count
        if f.address is not None:
            g.last_address = f.address if g.last_address is None else max(g.last_address, f.address)
        if f.distance is not None and (g.distance is None or (not f.inside and f.distance > g.distance)):
            g.distance = f.distance if not f.inside else g.distance
    return list(out.values())
