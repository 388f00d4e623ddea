"""Upstream tracking in the terminal summary: every regression case's verdict, transitions first.

The verdicts travel as each test report's ``user_properties`` (so they reach the controller under
pytest-xdist) and are printed at the end of the session.
"""

_TRANSITIONS: dict[str, dict] = {}


def pytest_runtest_logreport(report):
    from regressions.test_regressions import TRACKING_KEY

    for key, value in getattr(report, "user_properties", ()):
        if key == TRACKING_KEY and isinstance(value, dict):
            _TRANSITIONS[value["case"]] = value


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _TRANSITIONS:
        return
    from harness import tracking

    order = {s: i for i, s in enumerate(tracking.STATES)}
    rows = sorted(_TRANSITIONS.values(), key=lambda d: (order.get(d["state"], len(order)), d["case"]))
    title, lines = tracking.summary_lines(rows)
    loud = any(r["state"] in tracking.TRANSITIONS for r in rows)
    terminalreporter.write_sep("!" if loud else "=", title, bold=loud, yellow=loud)
    for line in lines:
        terminalreporter.write_line(line)
