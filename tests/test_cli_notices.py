"""The command line keeps the optional libraries' import-time notices off stderr (harness.cli.
quiet_library_notices); ``NVFP4_SHOW_LIBRARY_NOTICES=1`` leaves them alone.  The tests emit their
own records through the named loggers and modules: no third-party wording is involved."""

from __future__ import annotations

import logging
import warnings

import pytest

from harness import cli


@pytest.fixture
def restore_loggers():
    saved = {name: logging.getLogger(name).level for name in cli.LIBRARY_NOTICE_LOGGERS}
    yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


def _warn_from(module: str) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli.quiet_library_notices({})
        warnings.warn_explicit("a notice", UserWarning, filename="x.py", lineno=1, module=module)
        warnings.warn_explicit("a notice", RuntimeWarning, filename="x.py", lineno=1, module=module)
    return caught


def test_library_loggers_keep_errors_and_drop_warnings(restore_loggers, caplog):
    for name in cli.LIBRARY_NOTICE_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    assert cli.quiet_library_notices({}) is True
    with caplog.at_level(logging.DEBUG):
        for name in cli.LIBRARY_NOTICE_LOGGERS:
            logging.getLogger(name).warning("a notice")
            logging.getLogger(name).error("an error")
    assert [(r.name, r.levelname) for r in caplog.records] == [(n, "ERROR") for n in cli.LIBRARY_NOTICE_LOGGERS]


@pytest.mark.parametrize("module", ["torchao", "torchao.quantization", "modelopt", "modelopt.torch"])
def test_library_user_warnings_are_dropped_other_categories_kept(restore_loggers, module):
    assert [w.category for w in _warn_from(module)] == [RuntimeWarning]


@pytest.mark.parametrize("module", ["harness.cli", "torch", "torchaox", "flashinfer"])
def test_other_modules_keep_their_user_warnings(restore_loggers, module):
    assert [w.category for w in _warn_from(module)] == [UserWarning, RuntimeWarning]


@pytest.mark.parametrize("value", ["1", "yes"])
def test_the_environment_variable_leaves_everything_as_it_was(restore_loggers, value):
    for name in cli.LIBRARY_NOTICE_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli.quiet_library_notices({cli.SHOW_LIBRARY_NOTICES_ENV: value}) is False
        warnings.warn_explicit("a notice", UserWarning, filename="x.py", lineno=1, module="modelopt.torch")
    assert [w.category for w in caught] == [UserWarning]
    assert all(logging.getLogger(n).level == logging.NOTSET for n in cli.LIBRARY_NOTICE_LOGGERS)
