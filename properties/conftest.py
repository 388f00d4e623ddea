"""How a property test ends: its stop reason is recorded for the report, and a test whose every
example was refused (or that the time budget stopped before its first example) is a skip with the
reason, not an error."""

from __future__ import annotations

from collections import Counter
from contextlib import nullcontext

import pytest


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function):
    session = pyfuncitem.funcargs.get("nvfp4_session")
    if session is None or "property_name" not in pyfuncitem.funcargs:
        return (yield)
    from hypothesis.errors import Unsatisfiable

    test = pyfuncitem.nodeid
    seen: dict[str, str] = {}
    try:  # Hypothesis hands each test's statistics to the callback in `collector` (its pytest plugin's)
        from hypothesis.statistics import collector

        outer = collector.value

        def note(stats) -> None:
            seen["stopped"] = str(stats.get("stopped-because") or "")
            if outer is not None:
                outer(stats)

        ctx = collector.with_value(note)
    except ImportError:  # pragma: no cover - an older Hypothesis: no stop reason from it
        ctx = nullcontext()
    with ctx:
        try:
            result = yield
        except Unsatisfiable:
            stop = session.stop_reason(test)
            if stop is None:
                refusals = Counter(session.refusals.get(test, []))
                top = refusals.most_common(1)[0][0] if refusals else "no example could be generated"
                stop = f"every example was refused ({sum(refusals.values())}); e.g. {top}"
            session.end_test(test, stop)
            pytest.skip(stop)
        except pytest.skip.Exception as exc:  # the property cannot be checked on this backend
            session.end_test(test, f"skipped: {exc.msg}")
            raise
        except BaseException:
            session.end_test(test, "failure found" + (f" ({seen['stopped']})" if seen.get("stopped") else ""))
            raise
    refused = len(session.refusals.get(test, []))
    session.end_test(test, (seen.get("stopped") or "finished")
                     + (f"; {refused} example(s) refused by the backend" if refused else ""))
    return result
