"""Experiments: how each property of a backend is put to the test, one module per level.

An experiment builds a trial's inputs (the problem's data; for GEMMs the pipeline's operands in
the layouts the backend declared, with the trial's poison), calls the backend, checks that the
result honours the protocol (shape, dtype: :class:`~harness.backends.protocol.BackendContractError`
otherwise) and hands the outputs to the verdicts of :mod:`harness.checks`.  One method per property,
named as the property (:data:`harness.trial.PROPERTIES`):

* :mod:`harness.experiments.gemm`: :class:`~harness.experiments.gemm.GemmExperiment`;
* :mod:`harness.experiments.linear`: :class:`~harness.experiments.linear.LinearExperiment`;
* :mod:`harness.experiments.quantizer`: :func:`~harness.experiments.quantizer.quantizer_agreement`.

The engine that runs them and classifies what happened is :mod:`harness.runner`.  What the
experiments share is here: the classification of a backend's exception (:func:`classify_exception`,
sticky CUDA errors), :class:`NotApplicable`, :func:`sync` and :func:`poison_allocator`.
"""

from __future__ import annotations

import torch

from harness import guard
from harness.backends.protocol import BackendContractError, Unsupported

STICKY_CUDA_ERRORS = ("illegal memory access", "illegal instruction", "misaligned address",
                      "unspecified launch failure", "device-side assert", "an illegal address",
                      "cuda error: unknown error", "context is destroyed")


class NotApplicable(Exception):
    """The property cannot be put to the test on this backend (e.g. it declares no limit to probe)."""


def classify_exception(exc: BaseException) -> tuple[str, str]:
    """(status, message) for an exception raised by a backend call."""
    msg = f"{type(exc).__name__}: {exc}".strip()
    if isinstance(exc, Unsupported):
        return "skip", f"unsupported: {exc}"
    low = msg.lower()
    if any(s in low for s in STICKY_CUDA_ERRORS):
        return "crash", msg
    return "fail", msg


def refusal(exc: BaseException) -> str:
    """What a backend raised on a call it may refuse (a non-contiguous view, an empty batch), as
    ``"Type: message"``; re-raises a broken contract and a sticky CUDA error (a failure and a crash,
    never a refusal)."""
    if isinstance(exc, BackendContractError) or classify_exception(exc)[0] == "crash":
        raise exc
    return f"{type(exc).__name__}: {exc}".strip()


def sync() -> None:
    """Wait for the GPU (a no-op without CUDA), so errors surface inside the call that caused them."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def check_guards(handed: dict[str, torch.Tensor]) -> None:
    """Raise :class:`BackendContractError` when the backend wrote outside a buffer it was handed
    (the guard bytes of :mod:`harness.guard` around it changed)."""
    bad = guard.check(handed)
    if bad:
        raise BackendContractError("wrote outside the buffers it was handed (guard bytes changed): " + "; ".join(bad))


def poison_allocator(device: torch.device, byte: int = 0x7F, sizes: tuple[int, ...] = ()) -> None:
    """Fill and free memory with ``byte`` so the next ``torch.empty`` of a similar size starts dirty
    (the stale-buffer bug class: vLLM #27439, #45741).  Deterministic under the CUDA caching
    allocator; best effort on the CPU allocator."""
    sizes = sizes or tuple(1 << s for s in range(6, 22, 2))
    bufs = [torch.full((s,), byte, dtype=torch.uint8, device=device) for s in sizes]
    del bufs
