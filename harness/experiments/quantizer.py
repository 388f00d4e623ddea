"""Quantizer-level experiment: a quantizer's bytes against the reference quantizer's.

:func:`bytes_against_reference` is shared with the checkpoint level (a loaded weight's bytes are
judged the same way).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch

from harness import checks, guard
from harness.backends.protocol import BackendContractError, QuantizerBackend
from harness.backends.protocol import Unsupported
from harness.experiments import NotApplicable, check_guards, refusal, sync
from harness.format import BLOCK_SIZE, block_scale_and_inverse, reference_quantize
from harness.input_layout import CONTIGUOUS, snapshot, storage_changed, strided_view
from harness.layouts import OperandRole, ScaleLayout, padded_shape, padding_map, unswizzle
from harness.trial import PropertyResult, Trial


def bytes_against_reference(x: torch.Tensor, gs: torch.Tensor, packed: torch.Tensor, logical: torch.Tensor,
                            declared: tuple[str, ...], prop: str) -> PropertyResult:
    """:func:`checks.quantizer_agreement` of (packed, linear scale bytes) against the reference
    quantizer run on x [rows, k] with encode divisor gs."""
    rows, k = x.shape
    codes, sf = reference_quantize(x.cpu(), gs.cpu())
    if packed.shape[0] < rows or packed.shape[1] < k // 2:
        raise BackendContractError(f"packed output {tuple(packed.shape)} smaller than ({rows}, {k // 2})")
    xf = x.cpu().float().reshape(rows, k // 16, 16)
    _, inv = block_scale_and_inverse(xf.abs().amax(-1), gs.cpu())
    scaled = (xf * inv.unsqueeze(-1)).reshape(rows, k)
    prerounding = (gs.cpu() * xf.abs().amax(-1)) / 6.0
    return checks.quantizer_agreement(packed.view(torch.uint8).cpu(), logical, codes, sf, scaled, declared,
                                      prerounding, prop=prop)


def input_digest(*tensors: torch.Tensor) -> Callable[[], str]:
    """A function computing the sha256 digest of ``tensors``' bytes (taken only when needed)."""
    def digest() -> str:
        h = hashlib.sha256()
        for t in tensors:
            h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()
    return digest


def _logical_scales(backend: QuantizerBackend, scales: torch.Tensor) -> torch.Tensor:
    """The scale buffer's bytes as logical [padded rows, padded k-blocks] (linear order), on the CPU."""
    if backend.layout is ScaleLayout.LINEAR:
        return scales.view(torch.uint8).cpu()
    return unswizzle(scales.reshape(scales.shape[0], -1).view(torch.uint8).cpu(), backend.layout)


def _quantize(backend: QuantizerBackend, x: torch.Tensor, gs: torch.Tensor,
              layout: str = CONTIGUOUS, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """``backend.quantize`` on ``x`` handed in ``layout`` (:mod:`harness.input_layout`: a view over
    NaN-poisoned memory; contiguous: a dense copy) and ``gs``, each inside guard bytes; checks the
    guards and that the input's storage was left as it was.  (packed, scales, the view's geometry)."""
    handed = {"global_scale": guard.guarded(gs)}
    strided = strided_view(x, layout, seed) if layout != CONTIGUOUS else None
    if strided is None:
        handed["x"] = guard.guarded(x)
        xin, geometry = handed["x"], {"input_layout": CONTIGUOUS}
    else:
        handed["x (storage)"] = strided.storage
        xin, geometry, before = strided.view, strided.describe(), snapshot(strided)
    packed, scales = backend.quantize(xin, handed["global_scale"])
    sync()
    check_guards(handed)
    if strided is not None and (changed := storage_changed(strided, before)):
        raise BackendContractError(f"wrote into its input: {changed}")
    return packed, scales, geometry


def run(backend: QuantizerBackend, trial: Trial, device) -> tuple[PropertyResult, Callable[[], str]]:
    """The verdict of ``trial.property`` (:data:`harness.trial.QUANTIZER_PROPERTIES`), and a function
    computing the input's sha256 digest."""
    return {"quantizer_agreement": quantizer_agreement, "layout_invariance": layout_invariance,
            "empty_batch": empty_batch}[trial.property](backend, trial, device)


def _inputs(trial: Trial, device) -> tuple[torch.Tensor, torch.Tensor, Callable[[], str]]:
    p = trial.problem
    x = p.activations(device)
    gs = p.activation_global_scale(x)
    # the global scale is a function of x unless it is calibrated: then it is part of the inputs
    return x, gs, (input_digest(x) if p.calibration is None else input_digest(x, gs))


def quantizer_agreement(backend: QuantizerBackend, trial: Trial, device) -> tuple[PropertyResult, Callable[[], str]]:
    """The verdict, and a function computing the input's sha256 digest.  The activations are handed
    in the problem's ``input_layout``."""
    p = trial.problem
    x, gs, digest = _inputs(trial, device)
    if p.m == 0:
        raise NotApplicable("an empty batch (m=0) has no bytes to compare: the empty_batch property checks it")
    try:
        packed, scales, geometry = _quantize(backend, x, gs, p.input_layout, p.seed)
    except Exception as exc:
        if p.input_layout == CONTIGUOUS or isinstance(exc, Unsupported):
            raise
        # refusing a view is allowed (layout_invariance reports it): nothing to compare here
        raise Unsupported(f"refused the {p.input_layout} view: {refusal(exc)}") from exc
    logical = _logical_scales(backend, scales)
    declared = tuple(getattr(backend, "known_differences", ()))
    result = bytes_against_reference(x, gs, packed, logical, declared, "quantizer_agreement")
    # the padding contract: padding bytes per region, zero unless the backend declares it leaves them
    pm = padding_map(backend.layout, OperandRole.ACTIVATION, p.m, p.k // BLOCK_SIZE)
    if scales.numel() != pm.regions.numel():
        raise BackendContractError(f"scale buffer has {scales.numel()} bytes; layout {backend.layout.value!r} for "
                                   f"{p.m} x {p.k // BLOCK_SIZE} scales needs {tuple(pm.regions.shape)}")
    pad = checks.quantizer_padding(scales.view(torch.uint8), pm.regions, packed.view(torch.uint8), p.m, p.k,
                                   tuple(getattr(backend, "leaves_padding", ())))
    result.measure.update(pad.measure)
    if not pad.ok:
        result.summary = pad.summary if result.ok else f"{result.summary}; {pad.summary}"
        result.ok = False
    elif "padding_unsafe_for" in pad.measure:
        result.summary = f"{result.summary}; {pad.summary}"
    # the saturating path: real block scales at 448 (e4m3 satfinite), under a static scale
    result.measure["saturated_scales"] = int((logical[:p.m, :p.k // BLOCK_SIZE] == 0x7E).sum())
    if p.calibration is not None:
        result.measure["calibration"] = p.calibration
    if p.input_layout != CONTIGUOUS:
        result.measure.update(geometry)
    return result, digest


def layout_invariance(backend: QuantizerBackend, trial: Trial, device) -> tuple[PropertyResult, Callable[[], str]]:
    """The packed codes and real scale bytes on the problem's ``input_layout`` view equal those on
    the contiguous copy, or the backend refuses the view (:func:`harness.checks.layout_invariance`)."""
    p = trial.problem
    x, gs, digest = _inputs(trial, device)
    packed, scales, _ = _quantize(backend, x, gs)
    try:
        v_packed, v_scales, geometry = _quantize(backend, x, gs, p.input_layout, p.seed)
    except Exception as exc:  # noqa: BLE001 - a refusal is an allowed answer to a view
        return checks.layout_invariance({}, strided_view(x, p.input_layout, p.seed).describe(),
                                        refusal(exc)), digest
    kb = p.k // BLOCK_SIZE

    def real(t: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return t.view(torch.uint8).cpu()[:p.m, :p.k // 2], _logical_scales(backend, s)[:p.m, :kb]

    (a_codes, a_sf), (b_codes, b_sf) = real(packed, scales), real(v_packed, v_scales)
    return checks.layout_invariance({"packed codes": (a_codes, b_codes), "block scales": (a_sf, b_sf)},
                                    geometry), digest


def empty_batch(backend: QuantizerBackend, trial: Trial, device) -> tuple[PropertyResult, Callable[[], str]]:
    """Quantizing an empty batch ``[0, k]`` gives packed codes ``[0, k/2]`` and the layout's scale
    buffer for 0 rows, or a refusal; guard bytes intact (:func:`harness.checks.empty_batch`)."""
    p = trial.problem
    if p.m != 0:
        raise NotApplicable(f"problem.m={p.m}: the empty_batch property needs an empty batch (m=0)")
    x, gs, digest = _inputs(trial, device)
    try:
        packed, scales, _ = _quantize(backend, x, gs, p.input_layout, p.seed)
    except Unsupported:
        raise  # the backend declares it does not run this here: a skip, as for every property
    except Exception as exc:  # noqa: BLE001 - a refusal is an allowed answer to an empty batch
        return checks.empty_batch({}, {}, refusal(exc)), digest
    want_sf = padded_shape(backend.layout, 0, p.k // BLOCK_SIZE)
    got_sf = tuple(scales.shape) if scales.numel() else want_sf  # an empty buffer of any 2-D shape is empty
    return checks.empty_batch({"packed codes": (tuple(packed.shape), (0, p.k // 2)), "block scales": (got_sf, want_sf)},
                              {"packed codes": (f"{packed.element_size()} byte(s) per element", "1 byte(s) per element")}), digest
