"""The properties: pure functions over a backend's inputs and outputs.

Each returns a :class:`PropertyResult` that says what was measured, not only pass/fail.  The same
functions serve the pytest property suite (properties/), replay and the self-test.
"""

from __future__ import annotations

import torch

from harness.oracle import Agreement, Reference, compare
from harness.trial import ACCEPTED, CHANGED, NONFINITE, OK, PADDING, PropertyResult

DESIGN_DIFFERENCES = {
    "subnormal_scale_floor": "block scales below 2^-6 raised to 2^-6 (torchao nvfp4_quantize, E4M3_EPS clamp)",
    "zero_scale_eps": "a block scale that rounds to 0 replaced by 0.125 (compressed-tensors calculate_qparams, "
                      "_get_dtype_eps(float8_e4m3fn))",
    "zero_block_scale_one": "an all-zero block gets block scale 1.0 (ModelOpt NVFP4QTensor."
                            "get_weights_scaling_factor: per_block_scale[per_block_scale == 0] = 1.0)",
    "min_subnormal_scale_floor": "block scales clamped to >= 2^-9 before the e4m3 cast (ModelOpt "
                                 "_cast_per_block_scale_to_fp8)",
}
"""Documented design differences a quantizer may declare (``known_differences``): the library's own,
deliberate choice for a block scale, named and counted by :func:`quantizer_agreement`, never failed.
Codes of a block whose scale differs follow that scale and are not compared."""

GRID_MAX = 64


def _rows_list(mask_rows: torch.Tensor, limit: int = 64) -> list[int]:
    return torch.nonzero(mask_rows).reshape(-1)[:limit].tolist()


def status_grid(status: torch.Tensor, real_rows: int, real_cols: int) -> dict:
    """Downsample a per-element status matrix (codes OK/CHANGED/NONFINITE/PADDING/ACCEPTED) to at
    most GRID_MAX x GRID_MAX cells, keeping the worst code of each bin (the report draws it).  Pooled
    on the tensor's device; only the small grid comes back."""
    rows, cols = status.shape
    rs = max(1, -(-rows // GRID_MAX))
    cs = max(1, -(-cols // GRID_MAX))
    dev = status.device
    # severity order: NONFINITE > CHANGED > ACCEPTED > OK > PADDING (a bin with any real element is
    # real; an accepted overflow stays visible among passing elements)
    sev = torch.tensor([1, 3, 4, 0, 2], device=dev, dtype=torch.int8)[status.long()]
    gr, gc = -(-rows // rs), -(-cols // cs)
    padded = torch.zeros((gr * rs, gc * cs), dtype=torch.int8, device=dev)
    padded[:rows, :cols] = sev
    pooled = padded.reshape(gr, rs, gc, cs).amax(dim=(1, 3))
    back = torch.tensor([PADDING, OK, ACCEPTED, CHANGED, NONFINITE], device=dev)[pooled.long()]
    return {"rows": rows, "cols": cols, "real_rows": real_rows, "real_cols": real_cols,
            "row_step": rs, "col_step": cs, "cells": back.cpu().tolist()}


def _grid_from(bad: torch.Tensor, nonfinite: torch.Tensor, rows: int, cols: int,
               real_rows: int, real_cols: int, accepted: torch.Tensor | None = None) -> dict:
    """The status grid of a judged output: ``bad`` elements are CHANGED, ``nonfinite`` ones (a subset
    of ``bad``: NaN/Inf judged wrong) NONFINITE, ``accepted`` ones (infinities within the bound) ACCEPTED."""
    dev = bad.device
    status = torch.full((rows, cols), PADDING, dtype=torch.int8, device=dev)
    real = torch.zeros((real_rows, real_cols), dtype=torch.int8, device=dev)
    if accepted is not None:
        real[accepted[:real_rows, :real_cols].to(dev)] = ACCEPTED
    real[bad[:real_rows, :real_cols].to(dev)] = CHANGED
    real[nonfinite[:real_rows, :real_cols].to(dev)] = NONFINITE
    status[:real_rows, :real_cols] = real
    return status_grid(status, real_rows, real_cols)


# ----------------------------------------------------------------------------------------------
def reference_agreement(out: torch.Tensor, ref: Reference, bound: torch.Tensor,
                        out_dtype: torch.dtype, padded_shape: tuple[int, int] | None = None,
                        bias_in_out_dtype: bool = False) -> PropertyResult:
    """1. The real region of ``out`` agrees with the reference within the error bound.

    Infinities a correct round-to-nearest cast can produce (:func:`harness.oracle.compare`) pass and
    are counted in ``measure["accepted_overflow"]`` and the summary ("accepted overflow").
    """
    m, n = ref.value.shape
    real = out[..., :m, :n] if out.ndim == 2 else out.reshape(-1, out.shape[-1])[:m, :n]
    agr: Agreement = compare(real, ref, bound, out_dtype, bias_in_out_dtype)
    overflow = (f"; {agr.accepted_overflow} accepted overflow (±inf where reference ± bound reaches "
                f"{str(out_dtype).replace('torch.', '')}'s overflow threshold)") if agr.accepted_overflow else ""
    if agr.ok:
        return PropertyResult("reference_agreement", True, f"max error {agr.max_err_units:.3g} x bound{overflow}",
                              {"max_err_units": agr.max_err_units, "violations": 0,
                               "accepted_overflow": agr.accepted_overflow})
    rows, cols = padded_shape or (m, n)
    wrong_nonfinite = agr.bad & ~torch.isfinite(real).to(agr.bad.device)
    n_nonfinite = int(wrong_nonfinite.sum())
    measure = {
        "max_err_units": agr.max_err_units, "max_err_abs": agr.max_err_abs,
        "argmax": list(agr.argmax) if agr.argmax else None, "violations": agr.violations,
        "nonfinite_violations": n_nonfinite, "accepted_overflow": agr.accepted_overflow,
        "nan_rows": agr.nan_rows[:64],
        "changed_rows": _rows_list(agr.bad.any(dim=1)),
        "changed_cols": _rows_list(agr.bad.any(dim=0)),
        "grid": _grid_from(agr.bad, wrong_nonfinite, rows, cols, m, n, agr.accepted),
    }
    where = f" at {agr.argmax}" if agr.argmax else ""
    summary = (f"{agr.violations} of {m * n} outputs outside the bound ({n_nonfinite} of them NaN/Inf); "
               f"max error {agr.max_err_units:.3g} x bound{where}; {len(agr.nan_rows)} rows with a wrong NaN/Inf"
               f"{overflow}")
    return PropertyResult("reference_agreement", False, summary, measure)


def _isolation(prop: str, axis_name: str, clean: torch.Tensor, poisoned: torch.Tensor, m: int, n: int,
               region: str, poison_kind: str) -> PropertyResult:
    c = clean[:m, :n]
    p = poisoned[:m, :n]
    bits = torch.int16 if c.element_size() == 2 else torch.int32
    if torch.equal(c.contiguous().view(bits), p.contiguous().view(bits)):  # the passing path: one op
        return PropertyResult(prop, True, f"real {axis_name} bit-identical with {region} poisoned ({poison_kind})",
                              {"region": region, "poison_kind": poison_kind, "changed_rows": [],
                               "changed_cols": [], "nan_rows": [], "max_change": 0.0, "changed_elements": 0})
    changed = c.view(torch.int16 if c.element_size() == 2 else torch.int32) != \
        p.view(torch.int16 if p.element_size() == 2 else torch.int32)
    # NaN/Inf the poison introduced (a clean output that overflows to inf is legitimate and is
    # compared bit for bit like any other value)
    nonfinite = ~torch.isfinite(p) & torch.isfinite(c)
    bad = changed | nonfinite
    if not bool(bad.any()):  # one host sync on the common, passing path
        return PropertyResult(prop, True, f"real {axis_name} bit-identical with {region} poisoned ({poison_kind})",
                              {"region": region, "poison_kind": poison_kind, "changed_rows": [],
                               "changed_cols": [], "nan_rows": [], "max_change": 0.0, "changed_elements": 0})
    rows_changed = _rows_list(bad.any(dim=1))
    cols_changed = _rows_list(bad.any(dim=0))
    diff = (p.double() - c.double()).abs()
    max_change = float(torch.nan_to_num(diff, nan=float("inf")).max()) if diff.numel() else 0.0
    measure = {
        "region": region, "poison_kind": poison_kind,
        "changed_rows": rows_changed, "changed_cols": cols_changed,
        "nan_rows": _rows_list(nonfinite.any(dim=1)), "max_change": max_change,
        "changed_elements": int(bad.sum()),
        "grid": _grid_from(bad, nonfinite, poisoned.shape[0], poisoned.shape[1], m, n),
    }
    ok = not bool(bad.any())
    if ok:
        summary = f"real {axis_name} bit-identical with {region} poisoned ({poison_kind})"
    else:
        which = rows_changed if axis_name == "rows" else cols_changed
        summary = (f"{len(which)} real {axis_name} changed when {region} was poisoned ({poison_kind}); "
                   f"{len(measure['nan_rows'])} rows NaN/Inf; max change {max_change:.3g}")
    return PropertyResult(prop, ok, summary, measure)


def row_isolation(clean: torch.Tensor, poisoned: torch.Tensor, m: int, n: int, region: str = "m_pad",
                  poison_kind: str = "nan") -> PropertyResult:
    """2. Real rows are bit-identical whatever the M padding holds, and finite."""
    return _isolation("row_isolation", "rows", clean, poisoned, m, n, region, poison_kind)


def column_isolation(clean: torch.Tensor, poisoned: torch.Tensor, m: int, n: int, region: str = "n_pad",
                     poison_kind: str = "nan") -> PropertyResult:
    """3. Real columns are bit-identical whatever the N padding holds, and finite."""
    return _isolation("column_isolation", "columns", clean, poisoned, m, n, region, poison_kind)


def k_tail(clean: torch.Tensor, poisoned: torch.Tensor, m: int, n: int, poison_kind: str,
           has_tail: bool) -> PropertyResult:
    """4. Classify a backend by what a poisoned K tail does: ``masks_tail`` or ``needs_zeroed_tail``.

    This is a classification, reported, not a failure: hardware GEMMs read the K tail and rely on
    the pipeline zeroing it (checked by :func:`pipeline_zeroes_k_tail`).
    """
    c, p = clean[:m, :n], poisoned[:m, :n]
    same = torch.equal(c.view(torch.uint8), p.view(torch.uint8))
    if not has_tail:
        cls = "no_tail"
    else:
        cls = "masks_tail" if same else "needs_zeroed_tail"
    changed = ~(c.view(torch.uint8).reshape(m, -1) == p.view(torch.uint8).reshape(m, -1)).all(dim=1)
    return PropertyResult("k_tail", True, f"{cls} ({poison_kind} K-tail scales)",
                          {"region": "k_tail", "poison_kind": poison_kind, "classification": cls,
                           "changed_rows": _rows_list(changed)})


def pipeline_zeroes_k_tail(scales: torch.Tensor, regions: torch.Tensor) -> PropertyResult:
    """4b. A pipeline's scale buffer has every K-tail byte zero (``regions`` from a PaddingMap)."""
    from harness.layouts import Region

    tail = regions.to(scales.device) == int(Region.K_TAIL)
    nonzero = int((scales[tail] != 0).sum())
    return PropertyResult("k_tail", nonzero == 0,
                          "pipeline zeroes the K tail" if nonzero == 0 else
                          f"{nonzero} K-tail scale bytes are not zero",
                          {"region": "k_tail", "nonzero_tail_bytes": nonzero})


def output_coverage(out: torch.Tensor, m: int, n: int, ref_finite: torch.Tensor) -> PropertyResult:
    """5. An output buffer prefilled with NaN is fully written in the real region."""
    real = out[:m, :n]
    unwritten = torch.isnan(real) & ref_finite.to(real.device)
    ok = not bool(unwritten.any())
    return PropertyResult(
        "output_coverage", ok,
        "every real output element written" if ok else
        f"{int(unwritten.sum())} real outputs left unwritten (still NaN) in {len(_rows_list(unwritten.any(1)))} rows",
        {"nan_rows": _rows_list(unwritten.any(dim=1)), "changed_rows": _rows_list(unwritten.any(dim=1)),
         "grid": _grid_from(unwritten, unwritten, out.shape[0], out.shape[1], m, n)})


def determinism(first: torch.Tensor, second: torch.Tensor) -> PropertyResult:
    """6. The same call twice gives the same bits."""
    a = first.contiguous().view(torch.uint8)
    b = second.contiguous().view(torch.uint8)
    same = torch.equal(a, b)
    if same:
        return PropertyResult("determinism", True, "bit-identical across two calls", {})
    rows = first.reshape(-1, first.shape[-1])
    diff = (rows.view(torch.int16 if rows.element_size() == 2 else torch.int32) !=
            second.reshape(-1, first.shape[-1]).view(torch.int16 if rows.element_size() == 2 else torch.int32))
    return PropertyResult("determinism", False,
                          f"{int(diff.sum())} outputs differ between two identical calls",
                          {"changed_rows": _rows_list(diff.any(dim=1)), "changed_elements": int(diff.sum())})


def clean_rejection(raised: BaseException | None, agreement: PropertyResult | None, why_outside: str) -> PropertyResult:
    """7. Outside its declared support a backend raises a clear error, or returns a correct result.

    ``raised`` is what the call raised (None if it returned); ``agreement`` the reference check of
    what it returned.  Returning garbage is the failure.
    """
    if raised is not None:
        msg = f"{type(raised).__name__}: {raised}".strip()
        clear = len(str(raised).strip()) > 0
        return PropertyResult("clean_rejection", clear,
                              f"rejected ({why_outside}): {msg[:200]}" if clear else
                              f"rejected with an empty message ({type(raised).__name__})",
                              {"raised": msg[:500], "outside": why_outside})
    assert agreement is not None
    if agreement.ok:
        return PropertyResult("clean_rejection", True, f"accepted ({why_outside}) and the result is correct",
                              {"outside": why_outside, **agreement.measure})
    return PropertyResult("clean_rejection", False,
                          f"returned garbage instead of rejecting ({why_outside}): {agreement.summary}",
                          {"outside": why_outside, **agreement.measure})


def tp_column_consistency(full: torch.Tensor, shards: list[torch.Tensor], m: int,
                          bitwise: bool = True, agreement: PropertyResult | None = None,
                          accepted_overflow: int = 0) -> PropertyResult:
    """8a. Column-parallel shard outputs, concatenated, equal the unsplit product bit for bit (for
    a backend that declares ``column_bitwise``); otherwise each shard must agree with the
    reference (``agreement``: the worst shard's, or the first failing one's) and bit differences
    are reported, not failed.  ``accepted_overflow`` counts the infinities the shards' reference
    checks accepted (:func:`reference_agreement`), over all shards checked."""
    cat = torch.cat([s[:m] for s in shards], dim=1)
    f = full[:m, :cat.shape[1]]
    same = torch.equal(cat.contiguous().view(torch.uint8), f.contiguous().view(torch.uint8))
    if same and bitwise:
        return PropertyResult("tp_consistency", True, f"{len(shards)} column shards == unsplit, bitwise",
                              {"shards": len(shards)})
    diff = cat.contiguous().view(torch.uint8).reshape(m, cat.shape[1], -1) != \
        f.contiguous().view(torch.uint8).reshape(m, cat.shape[1], -1)
    diff = diff.any(dim=-1)
    if not bitwise:
        assert agreement is not None
        note = f"{int(diff.sum())} outputs differ in bits from the unsplit GEMM (not declared column_bitwise)"
        over = f"; {accepted_overflow} accepted overflow over the shards checked" if accepted_overflow else ""
        vs = (f"worst max error {agreement.measure.get('max_err_units', float('nan')):.3g} x bound" if agreement.ok
              else f"a shard fails: {agreement.summary}")
        return PropertyResult("tp_consistency", agreement.ok, f"{note}; shards vs reference: {vs}{over}",
                              {"shards": len(shards), "bit_differences": int(diff.sum()), **agreement.measure,
                               "accepted_overflow": accepted_overflow})
    return PropertyResult("tp_consistency", False,
                          f"{int(diff.sum())} outputs differ between the {len(shards)} column shards and the unsplit GEMM",
                          {"shards": len(shards), "changed_cols": _rows_list(diff.any(dim=0)),
                           "changed_rows": _rows_list(diff.any(dim=1))})


def tp_row_consistency(shard_outs: list[torch.Tensor], refs: list[Reference], bounds: list[torch.Tensor],
                       out_dtype: torch.dtype) -> PropertyResult:
    """8b. Row-parallel shard outputs summed (as an all-reduce would) agree with the summed
    references within the summed bounds.

    A shard's infinity is judged against that shard's own reference and bound
    (:func:`harness.oracle.overflow_accepted`): where one is accepted the all-reduced value is
    infinite (or NaN for +inf + -inf) and cannot be compared, so the element is left out of the sum
    and counted as accepted overflow; any other NaN/Inf of a shard makes the element fail.
    """
    from harness.oracle import overflow_accepted

    dev = shard_outs[0].device
    total = sum(o.double() for o in shard_outs)
    ref = Reference(sum(r.value for r in refs), sum(r.abs_sum for r in refs), max(r.k for r in refs))
    bound = sum(bounds)
    accepted = torch.zeros(total.shape, dtype=torch.bool, device=dev)
    wrong = torch.zeros_like(accepted)
    for o, r, b in zip(shard_outs, refs, bounds):
        acc = overflow_accepted(o, r.value, b, out_dtype)
        accepted |= acc
        wrong |= ~torch.isfinite(o) & ~acc
    skip = accepted & ~wrong
    r_dev = ref.value.to(dev)
    # skipped elements compare the reference with itself; a wrong NaN/Inf is compared as NaN, which
    # is never accepted
    total = torch.where(skip, r_dev, total)
    total = torch.where(wrong, torch.full_like(total, float("nan")), total)
    agr = compare(total, ref, bound, out_dtype)
    n_acc = int(skip.sum())
    m, n = total.shape
    summary = (f"{len(shard_outs)} row shards summed: max error {agr.max_err_units:.3g} x bound"
               + ("" if agr.ok else f"; {agr.violations} of {m * n} outside ({int(wrong.sum())} with a wrong NaN/Inf "
                                    f"in a shard)")
               + (f"; {n_acc} accepted overflow (a shard's ±inf within its bound; left out of the sum)" if n_acc else ""))
    measure = {"shards": len(shard_outs), "max_err_units": agr.max_err_units, "nan_rows": agr.nan_rows,
               "violations": agr.violations, "accepted_overflow": n_acc}
    if not agr.ok:
        measure["changed_rows"] = _rows_list(agr.bad.any(dim=1))
        measure["changed_cols"] = _rows_list(agr.bad.any(dim=0))
        measure["grid"] = _grid_from(agr.bad, wrong.to(agr.bad.device) & agr.bad, m, n, m, n, skip)
    return PropertyResult("tp_consistency", agr.ok, summary, measure)


def _declared_scale_masks(sf: torch.Tensor, ref_sf: torch.Tensor, zero_block: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per design difference (:data:`DESIGN_DIFFERENCES`), the scale bytes it explains."""
    return {
        "subnormal_scale_floor": (ref_sf < 0x08) & (sf == 0x08),
        "zero_scale_eps": (ref_sf == 0x00) & (sf == 0x20),  # 0x20 = 0.125
        "zero_block_scale_one": zero_block & (sf == 0x38),
        "min_subnormal_scale_floor": (ref_sf == 0x00) & (sf == 0x01),
    }


def quantizer_agreement(packed: torch.Tensor, scales_logical: torch.Tensor, ref_codes: torch.Tensor,
                        ref_scales: torch.Tensor, scaled_input: torch.Tensor,
                        declared: tuple[str, ...] = (), scale_prerounding: torch.Tensor | None = None,
                        prop: str = "quantizer_agreement") -> PropertyResult:
    """9. A quantizer's bytes equal the reference quantizer's.

    Differences that are legitimate rounding choices are counted and named, not failed: a code one
    step away where the scaled value lies within 4 fp32 ulps of an e2m1 tie (approximate reciprocals
    or another operation order move it across), the same for a block scale one e4m3 step away whose
    unrounded value ``scale_prerounding`` (gs*amax/6) lies within 4 fp32 ulps of an e4m3 rounding
    midpoint, and the sign of a zero.  A backend may also *declare* documented design differences in
    ``declared``, names from :data:`DESIGN_DIFFERENCES` (e.g. ``"subnormal_scale_floor"``, torchao's
    E4M3_EPS clamp); codes of such blocks follow their scale.  Everything else fails.

    ``scales_logical`` is the backend's scale buffer unswizzled to [rows, kblocks] (real region);
    ``scaled_input`` is x times the reference per-element inverse scale, in fp32.  ``prop`` names
    the property the result is recorded under (the checkpoint property reuses this check).
    """
    from harness.format import e4m3_encode, unpack_e2m1

    unknown = [d for d in declared if d not in DESIGN_DIFFERENCES]
    if unknown:
        raise ValueError(f"known_differences={list(declared)}: {unknown} not in {sorted(DESIGN_DIFFERENCES)}")
    rows, k = ref_codes.shape
    codes = unpack_e2m1(packed[:rows, :k // 2]).cpu()
    sf = scales_logical[:rows, :k // 16].cpu()
    ref_sf = ref_scales.cpu()
    ref_c = ref_codes.cpu()
    sf_diff = sf != ref_sf
    zero_block = (scale_prerounding.cpu() == 0) if scale_prerounding is not None else torch.zeros_like(sf_diff)
    explained = torch.zeros_like(sf_diff)
    counts: dict[str, int] = {}
    for name, mask in _declared_scale_masks(sf, ref_sf, zero_block).items():
        if name in declared:
            hit = sf_diff & mask & ~explained
            counts[name] = int(hit.sum())
            explained |= hit
    scale_tie = torch.zeros_like(sf_diff)
    if scale_prerounding is not None:
        v = scale_prerounding.float().cpu()
        near_mid = e4m3_encode(v * (1 + 2.0 ** -21)) != e4m3_encode(v * (1 - 2.0 ** -21))
        scale_tie = sf_diff & near_mid & ((sf.int() - ref_sf.int()).abs() == 1) & ~explained
    bad_sf = sf_diff & ~explained & ~scale_tie
    code_diff = (codes != ref_c) & ~sf_diff.repeat_interleave(16, dim=1)  # differing scales own their codes
    a = scaled_input.abs().cpu()
    near_tie = torch.zeros_like(a, dtype=torch.bool)
    for t in (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0):
        near_tie |= (a - t).abs() <= t * 2.0 ** -21
    one_step = ((codes.long() & 7) - (ref_c.long() & 7)).abs() <= 1
    same_sign = (codes >> 3) == (ref_c >> 3)
    neg_zero = code_diff & ((codes | 8) == 8) & ((ref_c | 8) == 8)
    tie_diffs = code_diff & near_tie & one_step & same_sign
    real_diffs = code_diff & ~tie_diffs & ~neg_zero
    n_sf, n_stie = int(bad_sf.sum()), int(scale_tie.sum())
    n_tie, n_real, n_nz = int(tie_diffs.sum()), int(real_diffs.sum()), int(neg_zero.sum())
    ok = n_sf == 0 and n_real == 0
    named = f"{n_tie} codes one step apart at e2m1 ties, {n_stie} scales at e4m3 ties, {n_nz} in the sign of zero" + \
        "".join(f", {c} block scales by declared {name}" for name, c in counts.items())
    summary = (f"bytes match the reference ({named})" if ok else
               f"{n_sf} scale bytes and {n_real} codes differ from the reference ({named})")
    return PropertyResult(prop, ok, summary,
                          {"scale_mismatches": n_sf, "code_mismatches": n_real, "tie_differences": n_tie,
                           "scale_tie_differences": n_stie,
                           "negative_zero_differences": n_nz,
                           "declared_scale_floor": counts.get("subnormal_scale_floor", 0),
                           "declared_differences": counts,
                           "changed_rows": _rows_list(bad_sf.any(1) | real_diffs.any(1))})


def input_isolation(clean: torch.Tensor, dirty: torch.Tensor, bad_row: int, kind: str,
                    static_scale: bool) -> PropertyResult:
    """11. One real input row holding NaN/Inf (``kind``) leaves every other row bit-identical.

    ``clean``/``dirty``: outputs [rows, n] without and with the bad row.  With a static activation
    scale (``static_scale``: a checkpoint's input_scale) the scale does not depend on the data, so a
    bad row must stay in its row: any other row that changes fails.  With a dynamic per-tensor scale
    the bad value sets the tensor's amax and so every row's scale: the spread is a property of the
    design, reported (``classification`` ``per_tensor_spread``), not failed.
    """
    bits = torch.int16 if clean.element_size() == 2 else torch.int32
    c, d = clean.contiguous().view(bits), dirty.contiguous().view(bits)
    others = torch.ones(clean.shape[0], dtype=torch.bool, device=clean.device)
    others[bad_row] = False
    changed = (c != d).any(dim=1) & others
    changed_rows = _rows_list(changed)
    n_changed = int(changed.sum())
    nan_rows = _rows_list((~torch.isfinite(dirty)).any(dim=1) & others)
    scale = "static" if static_scale else "dynamic"
    measure = {"bad_row": bad_row, "bad_value": kind, "scale": scale, "changed_rows": changed_rows,
               "nan_rows": nan_rows, "rows_affected": n_changed}
    if n_changed == 0:
        measure["classification"] = "isolated"
        return PropertyResult("input_isolation", True,
                              f"{kind} in row {bad_row} stays in its row ({scale} activation scale)", measure)
    if not static_scale:
        measure["classification"] = "per_tensor_spread"
        return PropertyResult("input_isolation", True,
                              f"{kind} in row {bad_row} reaches {n_changed} other rows through the dynamic "
                              f"per-tensor scale (a property of the design, reported)", measure)
    measure["classification"] = "spread"
    return PropertyResult("input_isolation", False,
                          f"{kind} in row {bad_row} changed {n_changed} other rows ({len(nan_rows)} NaN/Inf) "
                          f"although the activation scale is static", measure)


def partition_isolation(scales: list[tuple[str, torch.Tensor | None, torch.Tensor]],
                        partitions: list[PropertyResult], widths: tuple[int, ...], fused_on_disk: bool,
                        slot_byte: int, slot_kind: str) -> PropertyResult:
    """12. A merged-partition layer (QKV, gate/up): each partition's output columns agree with that
    partition's own unfused layer within the bound, and the layer merged its per-partition global
    scales to the max over the loaded partitions only.

    ``scales``: ``(name, merged, expected)`` per global scale (``weight_scale_2``, ``input_scale``):
    fp32 [1] as the layer merged it (None: it kept none) and as the loaded partitions give it;
    they must be equal bit for bit and finite.  ``partitions``: the reference-agreement verdict of
    each partition's columns (:func:`reference_agreement`, in partition order), ``widths`` their
    output widths.  ``slot_byte`` / ``slot_kind``: what the engine's unwritten scale slots held
    (``measure.region`` is ``partition_slots``)."""
    bad_scales = []
    measure: dict = {"region": "partition_slots", "poison_kind": slot_kind, "slot_byte": slot_byte,
                     "partitions": list(widths), "fused_on_disk": fused_on_disk}
    for name, got, want in scales:
        measure[f"merged_{name}"] = None if got is None else got.tolist()
        measure[f"expected_{name}"] = want.tolist()
        same = got is not None and got.shape == want.shape and bool(
            (got.contiguous().view(torch.int32) == want.contiguous().view(torch.int32)).all())
        if not same or not bool(torch.isfinite(got).all()):  # type: ignore[arg-type]
            bad_scales.append(f"merged {name} {measure[f'merged_{name}']}, expected {measure[f'expected_{name}']} "
                              f"(the max over the loaded partitions)")
    errs = [r.measure.get("max_err_units") for r in partitions]
    measure["partition_max_err_units"] = errs
    measure["max_err_units"] = max((e for e in errs if e is not None), default=None)
    failed = [i for i, r in enumerate(partitions) if not r.ok]
    if failed:
        first = partitions[failed[0]]
        for key in ("nan_rows", "changed_rows", "violations", "nonfinite_violations"):
            if key in first.measure:
                measure[key] = first.measure[key]
        measure["failed_partitions"] = failed
    layout = "fused on disk" if fused_on_disk else "split on disk"
    where = f"{len(widths)} partitions {list(widths)} ({layout}), unwritten slots 0x{slot_byte:02X} ({slot_kind})"
    if not failed and not bad_scales:
        return PropertyResult("partition_isolation", True,
                              f"{where}: every partition within the bound (max error "
                              f"{measure['max_err_units']:.3g} x bound); merged scales = max of the loaded ones",
                              measure)
    parts = [f"partition {i} (width {widths[i]}): {partitions[i].summary}" for i in failed]
    return PropertyResult("partition_isolation", False, f"{where}: " + "; ".join(bad_scales + parts), measure)


PADDING_CONSUMERS: dict[str, tuple[str, ...]] = {
    "m_pad": ("flashinfer-trtllm-8x4 / linear-sglang-trtllm for m <= 32 (TRT-LLM's 8x4 path reads padding-row "
              "scales into real rows: vLLM #37563, FlashInfer #2861)",),
    "k_tail": ("every GEMM classified needs_zeroed_tail by the k_tail property (hardware block-scaled GEMMs "
               "read the K tail: vLLM PR #31099)",),
    "data": ("GEMMs that read whole packed tiles past K (the K-tail codes multiply the K-tail scales)",),
}
"""Consumer kernels for which a quantizer's non-zero padding in a region is unsafe (report text)."""

QUANTIZER_PADDING_REGIONS: tuple[str, ...] = ("m_pad", "k_tail", "data")
"""Padding regions of a quantizer's output: scale rows past the real rows, scale k-blocks past K of
the real rows, packed bytes past [rows, k/2]."""


def quantizer_padding(scales: torch.Tensor, regions: torch.Tensor, packed: torch.Tensor, rows: int, k: int,
                      declared: tuple[str, ...] = ()) -> PropertyResult:
    """9b. The padding contract of a quantizer: every padding byte it returns is zero.

    ``scales`` is the scale buffer in storage order, ``regions`` its :class:`~harness.layouts.PaddingMap`
    regions (same number of bytes); ``packed`` the packed codes, real region [rows, k/2].  Counts
    the padding bytes and the non-zero ones per region (:data:`QUANTIZER_PADDING_REGIONS`).  Non-zero
    bytes fail, except in a region the backend ``declared`` it leaves (``leaves_padding``): those
    pass and the measure names the consumer kernels for which that is unsafe (:data:`PADDING_CONSUMERS`).
    """
    from harness.layouts import Region

    flat = scales.reshape(-1).cpu()
    reg = regions.reshape(-1).cpu()
    total: dict[str, int] = {}
    nonzero: dict[str, int] = {}
    for name, code in (("m_pad", int(Region.M_PAD)), ("k_tail", int(Region.K_TAIL))):
        sel = reg == code
        total[name] = int(sel.sum())
        nonzero[name] = int((flat[sel] != 0).sum())
    pk = packed.cpu()
    data_mask = torch.ones(pk.shape, dtype=torch.bool)
    data_mask[:rows, :k // 2] = False
    total["data"] = int(data_mask.sum())
    nonzero["data"] = int((pk[data_mask] != 0).sum())
    bad = [r for r in QUANTIZER_PADDING_REGIONS if nonzero[r] and r not in declared]
    left = [r for r in QUANTIZER_PADDING_REGIONS if nonzero[r] and r in declared]
    measure = {"padding_bytes": total, "padding_nonzero": nonzero, "padding_declared_left": list(declared)}
    if left:
        measure["padding_unsafe_for"] = [c for r in left for c in PADDING_CONSUMERS[r]]
    counts = ", ".join(f"{r} {nonzero[r]}/{total[r]}" for r in QUANTIZER_PADDING_REGIONS)
    if bad:
        return PropertyResult("quantizer_agreement", False,
                              f"non-zero padding bytes the quantizer does not declare ({counts} non-zero); "
                              f"unsafe for {'; '.join(c for r in bad for c in PADDING_CONSUMERS[r])}", measure)
    summary = "padding zero" if not left else \
        f"padding left as declared ({counts} non-zero; unsafe for {'; '.join(measure['padding_unsafe_for'])})"
    return PropertyResult("quantizer_agreement", True, summary, measure)


def graph_replay(eager: torch.Tensor, replayed: torch.Tensor, m: int, n: int,
                 poisoned: tuple[str, ...] = ()) -> PropertyResult:
    """12. A call captured once in a CUDA graph, replayed after its inputs changed in place (new real
    data; ``poisoned``: the padding regions then filled with poison), gives bit for bit what the same
    backend computes eagerly on the new inputs.  Serving engines run decode this way: buffers are
    captured once and whatever the capture call wrote or cached is not written again (vLLM #45741,
    stale padding of a swizzled scale buffer; FlashInfer PR #3740 review: "the graph records the scale
    tensor's address").

    ``eager``, ``replayed``: outputs [rows >= m, cols >= n]; the real region [m, n] is compared.  A NaN
    or Inf the replay has where eager execution is finite counts as changed, whatever the bits."""
    bits = torch.int16 if eager.element_size() == 2 else torch.int32
    e = eager[:m, :n].contiguous()
    r = replayed[:m, :n].contiguous()
    where = f" (padding poisoned after capture: {', '.join(poisoned)})" if poisoned else ""
    measure = {"poisoned_after_capture": list(poisoned), "changed_rows": [], "changed_cols": [], "nan_rows": [],
               "changed_elements": 0, "max_change": 0.0}
    if torch.equal(e.view(bits), r.view(bits)):
        return PropertyResult("graph_replay", True, f"replay bit-identical with eager execution on the new inputs{where}",
                              measure)
    nonfinite = ~torch.isfinite(r) & torch.isfinite(e)
    bad = (e.view(bits) != r.view(bits)) | nonfinite
    diff = (r.double() - e.double()).abs()
    measure.update(
        changed_rows=_rows_list(bad.any(dim=1)), changed_cols=_rows_list(bad.any(dim=0)),
        nan_rows=_rows_list(nonfinite.any(dim=1)), changed_elements=int(bad.sum()),
        max_change=float(torch.nan_to_num(diff, nan=float("inf")).max()) if diff.numel() else 0.0,
        grid=_grid_from(bad, nonfinite, replayed.shape[0], replayed.shape[1], m, n))
    summary = (f"{measure['changed_elements']} of {m * n} real outputs of the CUDA graph replay differ from eager "
               f"execution on the same inputs, in {int(bad.any(dim=1).sum())} rows "
               f"({int(nonfinite.any(dim=1).sum())} rows with a NaN/Inf eager execution does not have); max change "
               f"{measure['max_change']:.3g}{where}")
    return PropertyResult("graph_replay", False, summary, measure)


def batch_invariance(small: torch.Tensor, large: torch.Tensor, m: int) -> PropertyResult:
    """10. (reported, not required) Row r's output is the same with m rows as with more rows."""
    a = small[:m].contiguous()
    b = large[:m].contiguous()
    same = torch.equal(a.view(torch.uint8), b.view(torch.uint8))
    diff_rows = _rows_list((a.double() != b.double()).any(dim=1))
    return PropertyResult("batch_invariance", True,
                          "batch invariant" if same else f"{len(diff_rows)} rows differ with a larger batch (reported)",
                          {"invariant": same, "changed_rows": diff_rows})


CHECKPOINT_SCALE_RTOL = 2.0 ** -21
"""Relative tolerance on a loaded global scale or alpha against its exact (fp64) value.

Derived, not tuned: a checkpoint stores amax/2688 or 2688/amax rounded once to fp32 (relative
error <= u = 2^-24); a loader inverts it at most once (one more rounding) and forms alpha as a
product of two such values (one more).  The worst case, alpha, is within (1+u)^5 - 1 < 8u = 2^-21.
A convention mix-up (encode divisor read as decode multiplier) is off by a factor gs^2, a
bf16-rounded scale by up to 2^-9: both far outside."""


def checkpoint_convention(bytes_check: PropertyResult, scales: dict[str, tuple[float, float]],
                          dequant_max_rel_err: float | None = None) -> PropertyResult:
    """11. A checkpoint exported in a library's convention and loaded the way a serving engine
    interprets that convention gives the reference's NVFP4 weight and scales.

    ``bytes_check``: :func:`quantizer_agreement` of the loaded codes and block scales against the
    reference quantizer (ties and declared design differences counted, not failed).
    ``scales``: name -> (loaded, exact) for the weight's decode multiplier (amax_w/2688), the
    activation quantizer's encode divisor (2688/amax_x, from the static input scale) and the GEMM's
    alpha; each must agree within :data:`CHECKPOINT_SCALE_RTOL`.  ``dequant_max_rel_err`` (reported)
    is the largest relative difference of the loaded, dequantized weight from the reference's, over
    the elements whose bytes agree.
    """
    bad = []
    ratios = {}
    for name, (got, want) in scales.items():
        rel = abs(got - want) / abs(want) if want else (0.0 if got == want else float("inf"))
        ratios[name] = {"loaded": got, "expected": want, "rel_err": rel}
        if not (rel <= CHECKPOINT_SCALE_RTOL):  # NaN fails too
            ratio = got / want if want else float("nan")
            bad.append(f"{name} = {got:.6g}, expected {want:.6g} (x{ratio:.4g})")
    ok = bytes_check.ok and not bad
    measure = dict(bytes_check.measure)
    measure["scales"] = ratios
    if dequant_max_rel_err is not None:
        measure["dequant_max_rel_err"] = dequant_max_rel_err
    parts = []
    if bad:
        parts.append("scales off: " + "; ".join(bad))
    parts.append(("codes and block scales: " if bytes_check.ok else "codes and block scales differ: ")
                 + bytes_check.summary)
    summary = ("checkpoint loads to the reference weight and scales; " if ok else "") + "; ".join(parts)
    return PropertyResult("checkpoint_convention", ok, summary, measure)


def _byte_rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` [rows, ...] as bytes [rows, row_bytes] (bit-for-bit comparison, NaN payloads included)."""
    t = t.detach().contiguous()
    rows = t.shape[0] if t.ndim else 1
    return t.view(torch.uint8).reshape(rows, -1)


def layout_invariance(pairs: dict[str, tuple[torch.Tensor, torch.Tensor]], geometry: dict,
                      refused: str | None = None, agreement: PropertyResult | None = None) -> PropertyResult:
    """12. The backend's bytes on a non-contiguous view of the input equal those on the contiguous
    copy (:mod:`harness.input_layout`), or the backend refuses the view.

    ``pairs``: name -> (on the contiguous copy, on the view), each ``[rows, ...]`` (quantizer: the
    packed codes and the real scale bytes; linear layer: the outputs), compared bit for bit;
    ``geometry``: the view's layout, strides and storage offset (:meth:`StridedInput.describe`);
    ``refused``: what the backend raised on the view (a refusal passes; it is reported).
    ``agreement``: (linear level) :func:`reference_agreement` of the outputs on the view, given
    when the bits may differ legitimately: a dense bf16 GEMM may pick another kernel or
    accumulation order for a strided operand and round differently, so differing bits within the
    reference's bound pass and are reported (``bitwise`` false); a quantizer's bytes have no such
    freedom and are compared without it.
    Silent garbage (vLLM PR #49092: a column slice quantized as if dense) is the failure."""
    layout = geometry.get("input_layout", "?")
    measure = dict(geometry)
    if refused is not None:
        measure["refused"] = refused[:500]
        return PropertyResult("layout_invariance", True, f"refused the {layout} view: {refused[:200]}", measure)
    differ: dict[str, list[int]] = {}
    rows = 0
    for name, (dense, view) in pairs.items():
        a, b = _byte_rows(dense), _byte_rows(view)
        rows = max(rows, a.shape[0])
        if a.shape != b.shape:
            measure["shapes"] = {name: [list(dense.shape), list(view.shape)]}
            return PropertyResult("layout_invariance", False,
                                  f"{layout} view: {name} has shape {tuple(view.shape)}, {tuple(dense.shape)} "
                                  f"on the contiguous copy", measure)
        bad = (a != b).any(dim=1)
        if bool(bad.any()):
            differ[name] = _rows_list(bad)
            measure[f"{name}_changed_rows_total"] = int(bad.sum())
    measure["bitwise"] = not differ
    if not differ:
        return PropertyResult("layout_invariance", True,
                              f"{layout} view {tuple(next(iter(pairs.values()))[1].shape) if pairs else ()} "
                              f"gives the contiguous copy's bytes", measure)
    all_rows = sorted({r for v in differ.values() for r in v})
    measure["changed_rows"] = all_rows[:64]
    what = ", ".join(f"{name} ({measure[f'{name}_changed_rows_total']} of {rows} rows)" for name in differ)
    summary = (f"{layout} view (strides {geometry.get('strides')}): {what} differ from the contiguous "
               f"copy's, first at row {all_rows[0]}")
    if agreement is None:
        return PropertyResult("layout_invariance", False, summary, measure)
    for key in ("max_err_units", "violations", "nonfinite_violations", "nan_rows", "grid"):
        if key in agreement.measure:
            measure[key] = agreement.measure[key]
    if agreement.ok:
        return PropertyResult("layout_invariance", True,
                              f"{summary}, within the reference's bound ({agreement.summary}; reported)", measure)
    return PropertyResult("layout_invariance", False, f"{summary}; against the reference: {agreement.summary}",
                          measure)


def empty_batch(shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]], dtypes: dict[str, tuple[str, str]],
                refused: str | None = None) -> PropertyResult:
    """13. An empty batch (m = 0) gives empty outputs of the right shape and dtype, or a refusal.

    ``shapes``: name -> (returned, expected); ``dtypes``: name -> (returned, expected); ``refused``:
    what the backend raised (a refusal passes; it is reported).  Writes outside the buffers (guard
    bytes) and sticky CUDA errors are caught by the experiment before this verdict."""
    if refused is not None:
        return PropertyResult("empty_batch", True, f"refused the empty batch: {refused[:200]}",
                              {"refused": refused[:500]})
    measure = {"shapes": {k: [list(v[0]), list(v[1])] for k, v in shapes.items()},
               "dtypes": {k: list(v) for k, v in dtypes.items()}}
    bad = [f"{k} has shape {tuple(got)}, expected {tuple(want)}" for k, (got, want) in shapes.items()
           if tuple(got) != tuple(want)]
    bad += [f"{k} has dtype {got}, expected {want}" for k, (got, want) in dtypes.items() if got != want]
    if bad:
        return PropertyResult("empty_batch", False, "empty batch: " + "; ".join(bad), measure)
    return PropertyResult("empty_batch", True,
                          "empty batch: " + ", ".join(f"{k} {tuple(v[0])}" for k, v in shapes.items()), measure)
