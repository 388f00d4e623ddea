"""Fixtures shared by the harness's own tests (tests/).  Each imports the harness when it is used,
so collecting a test file that needs none of them imports nothing more than that file does."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # pragma: no cover
    from harness.backends.protocol import Backend
    from harness.trial import Outcome, Trial


@pytest.fixture
def register_backend(monkeypatch: pytest.MonkeyPatch) -> Callable[["Backend"], str]:
    """``register_backend(backend)`` registers a backend instance (as a plugin would) beside the
    built-ins for this test only and returns its name."""
    from harness.backends import registry

    registry.all_backends()  # the built-ins first: the registry then holds them and this one

    def register(backend: "Backend") -> str:
        monkeypatch.setitem(registry._REGISTRY, backend.name, backend)
        return backend.name

    return register


@pytest.fixture
def through_a_case_file(tmp_path: Path) -> Callable[["Trial", str], tuple["Outcome", "Trial", "Outcome"]]:
    """``through_a_case_file(trial, level)`` runs ``trial`` (with the operands' digest), records it as
    a case file of ``level`` in the test's folder, reads the file back and runs the trial it holds:
    returns (the first outcome, the trial read back, its outcome)."""
    from harness.cases import Case, load_case, save_case
    from harness.runner import execute

    def round_trip(trial: "Trial", level: str) -> tuple["Outcome", "Trial", "Outcome"]:
        first = execute(trial, digest=True)
        case = Case.from_trial(trial, level=level, observed={"summary": first.reason}, environment={},
                               digest=first.digest)
        again = load_case(save_case(case, tmp_path / "c.json")).trial()
        return first, again, execute(again, digest=True)

    return round_trip
