"""The regression corpus: every case file in regressions/cases/ runs as a test.

``expect: pass`` cases must pass.  ``expect: xfail`` cases are known failures that track an upstream
issue (``tracks``): they are reported as xfail while they fail.  Every case is also classified for
upstream tracking (:mod:`harness.tracking`): *still reproduces*, *fixed upstream* (it passes now: a
loud notice naming the versions then and now), *behaviour changed* (the library now refuses it
cleanly on the architecture where it reproduced), and the run's terminal summary and HTML report
list those transitions first.  Cases whose backend does not run here are skipped with the
backend's reason, never dropped.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

from harness import env, tracking
from harness.backends import registry
from harness.cases import load_case

CASES_DIR = Path(os.environ.get("NVFP4_REGRESSIONS_DIR", Path(__file__).parent / "cases"))
CASE_FILES = sorted(CASES_DIR.glob("*.json"))
TRACKING_KEY = "nvfp4_tracking"
"""user_properties key carrying each case's tracking verdict to the controller (xdist-safe)."""


class RegressionNowPasses(UserWarning):
    """A known-failing regression case passes: update its expectation."""


def _track(request, session, case, path: Path, now: tracking.Sighting, outcome: str,
           reason: str) -> tracking.Transition:
    t = tracking.classify(case, path.name, now, outcome=outcome, reason=reason)
    request.node.user_properties.append((TRACKING_KEY, t.to_dict()))
    tracking.record(session.results_dir, session.worker, t)
    return t


@pytest.mark.parametrize("path", CASE_FILES, ids=[p.stem for p in CASE_FILES])
def test_regression(path: Path, nvfp4_session, request) -> None:
    case = load_case(path)
    backend = registry.get(case.backend)
    here = env.current()
    now = tracking.sighting_now(here, backend)
    support = backend.support(here)
    if not support:
        t = _track(request, nvfp4_session, case, path, now, "unsupported", support.reason)
        pytest.skip(f"{t.state}: {case.backend}: {support.reason}")
    trial = case.trial()
    outcome = nvfp4_session.run(trial, request.node.nodeid, digest=bool(case.digest))
    if case.digest and outcome.digest and outcome.digest != case.digest:
        pytest.fail(f"operands rebuilt differently from the recorded case (digest {outcome.digest[:12]} != "
                    f"{case.digest[:12]}): the case no longer describes the same inputs")
    t = _track(request, nvfp4_session, case, path, now, outcome.status, outcome.reason)
    if outcome.status == "skip":
        pytest.skip(f"{t.state}: {outcome.reason}")
    if case.expect == "xfail":
        if outcome.status != "pass":
            pytest.xfail(f"known failure tracking {case.tracks or 'an upstream issue'}: {outcome.reason}")
        warnings.warn(RegressionNowPasses(f"{t.headline}: {t.advice}"))
        return
    assert outcome.status == "pass", f"regression {path.name}: {outcome.reason}"


def test_corpus_is_not_empty() -> None:
    assert CASE_FILES, f"no regression cases found in {CASES_DIR}"
