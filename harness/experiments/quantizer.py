"""Quantizer-level experiment: a quantizer's bytes against the reference quantizer's.

:func:`bytes_against_reference` is shared with the checkpoint level (a loaded weight's bytes are
judged the same way).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch

from harness import checks
from harness.backends.protocol import BackendContractError, QuantizerBackend
from harness.experiments import sync
from harness.format import block_scale_and_inverse, global_scale_encode_divisor, reference_quantize
from harness.layouts import ScaleLayout, unswizzle
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
    gs = global_scale_encode_divisor(x.float().abs().amax()).reshape(1).to(device)
    packed, scales = backend.quantize(x, gs)
    sync()
    logical = unswizzle(scales.reshape(scales.shape[0], -1).view(torch.uint8).cpu(), backend.layout) \
        if backend.layout is not ScaleLayout.LINEAR else scales.view(torch.uint8).cpu()
    declared = tuple(getattr(backend, "known_differences", ()))
    return bytes_against_reference(x, gs, packed, logical, declared, "quantizer_agreement"), input_digest(x)
