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
sticky CUDA errors), :class:`NotApplicable`, :func:`sync`, :func:`poison_allocator` and the CUDA
graph capture of the ``graph_replay`` property (:func:`capture_and_replay`).
"""

from __future__ import annotations

import torch

from collections.abc import Callable

from harness import guard
from harness.backends.protocol import BackendContractError, Unsupported

# Errors after which the CUDA context is unusable (a crash).  Matched on the error itself: every torch CUDA
# error message ends with "Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.", so a
# bare "device-side assert" would make every CUDA error (an invalid launch argument too) a crash.
STICKY_CUDA_ERRORS = ("illegal memory access", "illegal instruction", "misaligned address",
                      "unspecified launch failure", "device-side assert triggered", "an illegal address",
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


GRAPH_WARMUP_CALLS = 2
"""Eager calls on the side stream before capture (Triton compiles, libraries pick and cache their
kernels and workspaces then, not during capture: torch's CUDA graphs documentation, whole-network
capture)."""


class GraphCaptureError(Exception):
    """The backend call raised while being captured in a CUDA graph: a failure of that backend (a call
    that synchronises with the host, copies from pageable host memory or allocates outside PyTorch
    cannot be captured), reported with the message."""


def graphs_unavailable(device: torch.device) -> str | None:
    """Why the ``graph_replay`` property cannot run on ``device`` (None when it can)."""
    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return "CUDA graphs need a CUDA GPU; this machine has none (graph_replay is checked on GPU nodes)"
    return None


def graph_replayer(requirements, device, replay, what: str):
    """The capture-and-replay function a ``graph_replay`` property uses: ``replay`` when given (tests
    of the orchestration without a GPU), else :func:`capture_and_replay`.  Raises
    :class:`NotApplicable` where ``what`` (the backend or layer) declares ``cuda_graphs=False`` or
    CUDA graphs cannot run on ``device`` (:func:`graphs_unavailable`)."""
    if not requirements.cuda_graphs:
        raise NotApplicable(f"{what} declares it cannot be captured in a CUDA graph (Requirements.cuda_graphs=False)")
    if replay is not None:
        return replay
    why = graphs_unavailable(device)
    if why:
        raise NotApplicable(why)
    return capture_and_replay


def capture_and_replay(call: Callable[[], torch.Tensor], refill: Callable[[], None], *,
                       warmup: int = GRAPH_WARMUP_CALLS) -> torch.Tensor:
    """Capture ``call`` in a ``torch.cuda.CUDAGraph``, run ``refill`` (which changes the captured
    call's input buffers in place) and replay.

    As torch's CUDA graphs documentation prescribes: ``warmup`` eager calls on a side stream that
    waits for the current one, the current stream then waiting for it, and the capture on that same
    side stream (``torch.cuda.graph(g, stream=s)``), default ``capture_error_mode`` ("global").  Errors
    of the warm-up calls propagate unchanged (an eager failure or refusal); an exception raised while
    capturing becomes :class:`GraphCaptureError` naming it (and the error it caused when the capture
    was closed, if any).  Errors of the replay surface at the final synchronisation, unchanged (a
    sticky CUDA error is classified as a crash by :func:`classify_exception`).  Returns a copy of the
    replayed output (anything else the call returned, as it is)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            call()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph, stream=stream):
            out = call()
    except Exception as exc:  # noqa: BLE001 - whatever the backend raised, named in the failure
        msg = f"{type(exc).__name__}: {exc}".strip()
        first = exc.__context__  # the backend's own error when closing the capture raised in turn
        if first is not None and first is not exc:
            msg = f"{type(first).__name__}: {first}".strip() + f"; closing the capture then raised {msg}"
        raise GraphCaptureError(f"raised during CUDA graph capture: {msg}") from exc
    torch.cuda.synchronize()
    refill()
    graph.replay()
    torch.cuda.synchronize()
    # the output lives in the graph's private memory pool: a copy outlives the graph
    return out.clone() if isinstance(out, torch.Tensor) else out
