"""The regression corpus: every case file in regressions/cases/ runs as a test.

``expect: pass`` cases must pass.  ``expect: xfail`` cases are known failures that track an upstream
issue (``tracks``): they are reported as xfail while they fail, and as a loud XPASS notice (listed
again at the end of the session) once they start passing, so someone updates the expectation.
Cases whose backend does not run here are skipped with the backend's reason, never dropped.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from harness import env
from harness.backends import registry
from harness.cases import load_case

import os

CASES_DIR = Path(os.environ.get("NVFP4_REGRESSIONS_DIR", Path(__file__).parent / "cases"))
CASE_FILES = sorted(CASES_DIR.glob("*.json"))
NOW_PASSING: list[str] = []


class RegressionNowPasses(UserWarning):
    """A known-failing regression case passes: update its expectation."""


@pytest.mark.parametrize("path", CASE_FILES, ids=[p.stem for p in CASE_FILES])
def test_regression(path: Path, nvfp4_session, request) -> None:
    case = load_case(path)
    backend = registry.get(case.backend)
    support = backend.support(env.current())
    if not support:
        pytest.skip(f"{case.backend}: {support.reason}")
    trial = case.trial()
    outcome = nvfp4_session.run(trial, request.node.nodeid, digest=bool(case.digest))
    if case.digest and outcome.digest and outcome.digest != case.digest:
        pytest.fail(f"operands rebuilt differently from the recorded case (digest {outcome.digest[:12]} != "
                    f"{case.digest[:12]}): the case no longer describes the same inputs")
    if outcome.status == "skip":
        pytest.skip(outcome.reason)
    if case.expect == "xfail":
        if outcome.status != "pass":
            pytest.xfail(f"known failure tracking {case.tracks or 'an upstream issue'}: {outcome.reason}")
        NOW_PASSING.append(f"{path.name} (tracks {case.tracks})")
        warnings.warn(RegressionNowPasses(
            f"{path.name} was expected to fail (tracks {case.tracks}) but now PASSES: set its expect to 'pass'"))
        return
    assert outcome.status == "pass", f"regression {path.name}: {outcome.reason}"


def test_corpus_is_not_empty() -> None:
    assert CASE_FILES, f"no regression cases found in {CASES_DIR}"
