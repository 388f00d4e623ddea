"""Quantizer-level experiment: a quantizer's bytes against the reference quantizer's."""

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


def quantizer_agreement(backend: QuantizerBackend, trial: Trial, device) -> tuple[PropertyResult, "Callable[[], str]"]:
    """The verdict, and a function computing the input's sha256 digest (taken only when needed)."""
    p = trial.problem
    x = p.activations(device)
    gs = global_scale_encode_divisor(x.float().abs().amax()).reshape(1).to(device)
    packed, scales = backend.quantize(x, gs)
    sync()
    codes, sf = reference_quantize(x.cpu(), gs.cpu())
    if packed.shape[0] < p.m or packed.shape[1] < p.k // 2:
        raise BackendContractError(f"packed output {tuple(packed.shape)} smaller than ({p.m}, {p.k // 2})")
    logical = unswizzle(scales.reshape(scales.shape[0], -1).view(torch.uint8).cpu(), backend.layout) \
        if backend.layout is not ScaleLayout.LINEAR else scales.view(torch.uint8).cpu()
    xf = x.cpu().float().reshape(p.m, p.k // 16, 16)
    _, inv = block_scale_and_inverse(xf.abs().amax(-1), gs.cpu())
    scaled = (xf * inv.unsqueeze(-1)).reshape(p.m, p.k)
    declared = tuple(getattr(backend, "known_differences", ()))
    prerounding = (gs.cpu() * xf.abs().amax(-1)) / 6.0
    return checks.quantizer_agreement(packed.view(torch.uint8).cpu(), logical, codes, sf, scaled, declared,
                                      prerounding), \
        (lambda: hashlib.sha256(x.cpu().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest())
