"""Run one property of one backend on one case: the engine behind properties/, replay and selftest.

A :class:`~harness.trial.Trial` names everything needed to rebuild a case bit for bit (backend,
property, problem, poison, activation layout, TP split).  :func:`execute` runs the trial's
experiment (:mod:`harness.experiments`: inputs, the backend call, the verdict of
:mod:`harness.checks`) and classifies what happened:

* ``pass`` / ``fail``: the property held or not (a backend that raises on a call it declared
  supported, or breaks the protocol, :class:`~harness.backends.protocol.BackendContractError`, fails);
* ``skip``: the backend does not run here (declared, or :class:`Unsupported` at call time), with
  the reason;
* ``crash``: a sticky CUDA error (illegal address, ...): the CUDA context is unusable and the
  process must end before the next case (:class:`ContextLost`).
"""

from __future__ import annotations

import time
import traceback
from contextlib import nullcontext

import numpy as np
import torch

from harness import env as env_mod
from harness.backends import registry
from harness.backends.protocol import BackendContractError
from harness.experiments import NotApplicable, classify_exception
from harness.experiments.checkpoint import checkpoint_convention
from harness.experiments.gemm import GemmExperiment
from harness.experiments.linear import LinearExperiment
from harness.experiments import quantizer as quantizer_experiment
from harness.trial import Outcome, PropertyResult, Trial, properties_for


class ContextLost(RuntimeError):
    """A sticky CUDA error: every later CUDA call in this process would fail."""


NOT_APPLICABLE = "not applicable: "
"""Reason prefix of a skip that holds for every example of the test (the property cannot be checked
on this backend at all), as opposed to one example the backend refused."""


def interpreter_overflow_quiet(env: "env_mod.Environment | None" = None):
    """Under the Triton interpreter, numpy's "overflow encountered in cast" warnings off, for one trial.

    The interpreter emulates a kernel's fp32 -> fp16/bf16/e4m3 conversions with numpy ``astype``,
    which warns where the GPU silently saturates to inf.  The harness provokes such values on purpose
    (poisoned padding: NaN, 448, 0xFF bytes; fp16 outputs of real models' TP shards), and the checks
    judge the resulting inf/NaN themselves, so the warning says nothing.  Only numpy's overflow
    reporting is changed, only while a trial runs, only under the interpreter; every other warning
    (and overflow anywhere else) is untouched.  Returns a context manager."""
    env = env or env_mod.current()
    return np.errstate(over="ignore") if env.interpreter else nullcontext()


def _device() -> torch.device:
    return env_mod.current().torch_device


def exception_outcome(prop: str, exc: Exception, t0: float, take_digest=lambda force=False: None,
                      a_layout: str | None = None) -> Outcome:
    """The outcome of a backend call that raised ``exc`` (started at ``time.perf_counter()`` ``t0``):
    a failure of the call it declared supported, with the exception, and the operands' digest
    (``take_digest(True)``); a skip or other status from :func:`classify_exception` as it is.
    Raises :class:`ContextLost` after a sticky CUDA error.  Shared by the dense and grouped runners."""
    status, msg = classify_exception(exc)
    if status == "crash":
        raise ContextLost(msg) from exc
    if status == "fail":
        msg = f"raised on a call it declared supported: {msg}"
        tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return Outcome("fail", msg, PropertyResult(prop, False, msg, {"exception": tb[:500]}),
                       take_digest(True), time.perf_counter() - t0, a_layout)
    return Outcome(status, msg, None, take_digest(), time.perf_counter() - t0, a_layout)


def execute(trial: Trial, device: torch.device | None = None, *, digest: bool = False) -> Outcome:
    """Run ``trial`` and classify the outcome; raises :class:`ContextLost` only after a sticky
    CUDA error (the caller records the crash and ends the process).

    The operands' sha256 digest (for case files and replay) is taken when ``digest`` is set or the
    trial did not pass; hashing every byte of every passing case would dominate large shapes."""
    t0 = time.perf_counter()
    backend = registry.get(trial.backend)
    device = device or _device()
    env = env_mod.current()
    if trial.property not in properties_for(backend):
        raise ValueError(f"property={trial.property!r} does not apply to {backend.level}-level backend "
                         f"{backend.name!r}; it has {list(properties_for(backend))}")
    sup = backend.support(env)
    if not sup:
        return Outcome("skip", sup.reason, duration_s=time.perf_counter() - t0)
    if backend.level == "gemm":
        shape_ok = backend.shape_support(trial.problem.m, trial.problem.n, trial.problem.k,
                                         trial.problem.torch_out_dtype)
        if not shape_ok and trial.property != "clean_rejection":
            return Outcome("skip", f"outside declared support: {shape_ok.reason}", duration_s=time.perf_counter() - t0)
    holder = None  # what can compute the digest

    def take_digest(force: bool = False) -> str | None:
        if holder is None or not (digest or force):
            return None
        try:
            return holder() if callable(holder) else holder.digest
        except Exception:  # noqa: BLE001 - a digest must never hide the outcome
            return None

    a_layout = trial.a_layout
    try:
        with interpreter_overflow_quiet(env):
            if backend.level == "gemm":
                holder = GemmExperiment(backend, trial, device)  # type: ignore[arg-type]
                a_layout = holder.layout.value
                result = getattr(holder, trial.property)()
            elif backend.level == "linear":
                holder = LinearExperiment(backend, trial, device)  # type: ignore[arg-type]
                result = getattr(holder, trial.property)()
            elif backend.level == "checkpoint":
                result, holder = checkpoint_convention(backend, trial, device)  # type: ignore[arg-type]
            else:
                result, holder = quantizer_experiment.run(backend, trial, device)  # type: ignore[arg-type]
    except NotApplicable as exc:
        return Outcome("skip", f"{NOT_APPLICABLE}{exc}", duration_s=time.perf_counter() - t0, a_layout=a_layout)
    except BackendContractError as exc:
        return Outcome("fail", f"broke the backend contract: {exc}", digest=take_digest(True),
                       duration_s=time.perf_counter() - t0, a_layout=a_layout,
                       result=PropertyResult(trial.property, False, f"broke the backend contract: {exc}", {}))
    except Exception as exc:  # noqa: BLE001 - every backend failure is a result
        return exception_outcome(trial.property, exc, t0, take_digest, a_layout)
    status = "pass" if result.ok else "fail"
    return Outcome(status, "" if result.ok else result.summary, result, take_digest(not result.ok),
                   time.perf_counter() - t0, a_layout)
