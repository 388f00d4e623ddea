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
from harness.experiments import check_guards, sync
from harness.format import BLOCK_SIZE, block_scale_and_inverse, reference_quantize
from harness.layouts import OperandRole, ScaleLayout, padding_map, unswizzle
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


def quantizer_agreement(backend: QuantizerBackend, trial: Trial, device) -> tuple[PropertyResult, Callable[[], str]]:
    """The verdict, and a function computing the input's sha256 digest."""
    p = trial.problem
    x = p.activations(device)
    gs = p.activation_global_scale(x)
    handed = {"x": guard.guarded(x), "global_scale": guard.guarded(gs)}
    packed, scales = backend.quantize(handed["x"], handed["global_scale"])
    sync()
    check_guards(handed)
    logical = unswizzle(scales.reshape(scales.shape[0], -1).view(torch.uint8).cpu(), backend.layout) \
        if backend.layout is not ScaleLayout.LINEAR else scales.view(torch.uint8).cpu()
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
    # the global scale is a function of x unless it is calibrated: then it is part of the inputs
    return result, (input_digest(x) if p.calibration is None else input_digest(x, gs))
