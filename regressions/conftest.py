"""Print a notice for every known-failing regression case that started to pass."""


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    from regressions.test_regressions import NOW_PASSING

    if NOW_PASSING:
        terminalreporter.write_sep("!", "known-failing regression cases now PASS: update their expectation")
        for line in NOW_PASSING:
            terminalreporter.write_line(f"  {line}")
