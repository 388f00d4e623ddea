"""Checkpoint-level experiment: a library's NVFP4 checkpoint writer with a serving engine's loader.

:func:`checkpoint_convention` exports the problem's weight with its activations' amax as the
calibrated input amax, loads it as the engine would and hands the loaded layer to
:func:`evaluate_checkpoint`: its bytes against the reference quantizer
(:func:`harness.experiments.quantizer.bytes_against_reference`) and its global scales against the
exact conventions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from harness import checks
from harness.backends.protocol import BackendContractError, CheckpointBackend, LoadedLinear
from harness.experiments import sync
from harness.experiments.quantizer import bytes_against_reference, input_digest
from harness.format import (BLOCK_SIZE, FP4_AMAX_PRODUCT, global_scale_encode_divisor, reference_dequantize,
                            reference_quantize, unpack_e2m1)
from harness.trial import PropertyResult, Trial


def evaluate_checkpoint(w: torch.Tensor, x_amax: torch.Tensor, loaded: LoadedLinear,
                        declared: tuple[str, ...] = ()) -> PropertyResult:
    """:func:`checks.checkpoint_convention` of a loaded layer against the reference NVFP4 form of the
    dense weight ``w`` [n, k] and the exact global scales of ``w`` and of activations calibrated to
    ``x_amax`` (the static input scale).  Raises :class:`BackendContractError` on wrong shapes."""
    n, k = w.shape
    packed = loaded.packed.view(torch.uint8)
    scales = loaded.scales.view(torch.uint8)
    if tuple(packed.shape) != (n, k // 2) or scales.numel() != n * (k // BLOCK_SIZE):
        raise BackendContractError(f"loaded weight {tuple(packed.shape)} / scales {tuple(loaded.scales.shape)}, "
                                 f"expected ({n}, {k // 2}) / ({n}, {k // BLOCK_SIZE})")
    scales = scales.reshape(n, k // BLOCK_SIZE).cpu()
    w_amax = w.float().abs().amax()
    gs_w = global_scale_encode_divisor(w_amax).reshape(1).to(w.device)
    bytes_check = bytes_against_reference(w, gs_w, packed, scales, declared, "checkpoint_convention")
    # exact conventions, in fp64: weight decode amax_w/2688, activation encode 2688/amax_x, alpha their
    # quotient (an all-zero tensor's global scale is 1, as format.global_scale_encode_divisor says)
    wa, xa = float(w_amax), float(x_amax)
    w_decode = wa / FP4_AMAX_PRODUCT if wa > 0 else 1.0
    x_encode = FP4_AMAX_PRODUCT / xa if xa > 0 else 1.0
    exact = {"weight_decode": w_decode, "input_encode": x_encode, "alpha": w_decode / x_encode}
    got = {"weight_decode": float(loaded.weight_decode.reshape(-1)[0]),
           "input_encode": float(loaded.input_encode.reshape(-1)[0]),
           "alpha": float(loaded.alpha.reshape(-1)[0])}
    deq = loaded.dequantize().cpu()
    codes, sf = reference_quantize(w.cpu(), gs_w.cpu())
    ref = reference_dequantize(codes, sf) * w_decode
    same = (unpack_e2m1(packed.cpu()) == codes) & (scales == sf).repeat_interleave(BLOCK_SIZE, dim=1)
    rel = ((deq - ref).abs() / ref.abs().clamp_min(torch.finfo(torch.float64).tiny))[same & (ref != 0)]
    rel_err = float(rel.max()) if rel.numel() else 0.0
    return checks.checkpoint_convention(bytes_check, {name: (got[name], exact[name]) for name in exact}, rel_err)


def checkpoint_convention(backend: CheckpointBackend, trial: Trial, device) -> tuple[PropertyResult, Callable[[], str]]:
    """Export the problem's weight [n, k] with its activations' amax as the calibrated input amax,
    load it as the engine would, compare with the reference quantizer and exact global scales."""
    p = trial.problem
    w = p.weights(device)
    x_amax = p.activations(device).float().abs().amax()
    loaded = backend.load(backend.export(w, x_amax.reshape(())))
    sync()
    declared = tuple(getattr(backend, "known_differences", ()))
    return evaluate_checkpoint(w, x_amax, loaded, declared), input_digest(w)
