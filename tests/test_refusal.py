"""A library's exception becomes a skip only when it is recognised as a refusal by its class or a
status code; an unrecognised message (however much it reads like a refusal) is a failure, and no
exception ever becomes a pass."""

from __future__ import annotations

import pytest

from harness.backends import registry
from harness.backends._refusal import as_unsupported
from harness.backends.protocol import GemmBackend, Requirements
from harness.oracle import Precision
from harness.layouts import ScaleLayout
from harness.problem import GemmProblem
from harness.runner import execute
from harness.trial import Trial


class LibraryRefusal(Exception):
    """A library's own refusal class (as FlashInfer's BackendSupportedError)."""


class RaisingGemm(GemmBackend):
    """Wraps a 'library call' that raises ``exc``, translating refusals as the real adapters do."""
    requirements = Requirements(runs_on_cpu=True, a_layouts=(ScaleLayout.SWIZZLED_128x4,),
                                w_layout=ScaleLayout.SWIZZLED_128x4, precision=Precision(24))

    def __init__(self, name: str, exc: BaseException):
        self.name = name
        self.description = f"raises {exc!r}"
        self.exc = exc

    def run(self, ops, out=None):
        try:
            raise self.exc
        except Exception as exc:
            unsup = as_unsupported(exc, f"{self.name}: lib refused", types=(LibraryRefusal,),
                                   status_codes=("LIB_STATUS_NOT_SUPPORTED",))
            if unsup is not None:
                raise unsup from exc
            raise


@pytest.mark.parametrize("exc, status", [
    (LibraryRefusal("reworded in any release"), "skip"),
    (RuntimeError("call failed: LIB_STATUS_NOT_SUPPORTED"), "skip"),
    (RuntimeError("this backend is not supported on this GPU"), "fail"),  # prose: never matched
    (ValueError("something nobody anticipated"), "fail"),
])
def test_only_recognised_refusals_skip_and_nothing_passes(exc, status, monkeypatch):
    name = f"test-raising-{type(exc).__name__.lower()}-{status}"
    registry.all_backends()  # built-ins first
    monkeypatch.setitem(registry._REGISTRY, name, RaisingGemm(name, exc))  # unregistered after the test
    outcome = execute(Trial(name, "reference_agreement", GemmProblem(m=1, n=16, k=16)))
    assert outcome.status == status, outcome.reason
    assert str(exc) in outcome.reason  # the library's message is shown as it was written
