"""Asserting that a third-party library refuses something, without depending on its wording.

A library's message text is not part of its contract (FlashInfer 0.7.4 reworded assertions that
0.7.2 had), so the harness's tests assert the behaviour instead: the call raises an exception of the
expected kind, and a control call that differs only in the refused aspect is accepted, which shows
the refusal is about that aspect and not some unrelated argument.  Matches on the harness's *own*
messages stay in the tests as ``pytest.raises(..., match=...)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


def assert_library_refuses(refused: Callable[[], Any], *, accepted: Callable[[], Any] | None = None,
                           exc: type[BaseException] | tuple[type[BaseException], ...] = Exception
                           ) -> BaseException:
    """``refused()`` raises ``exc``; ``accepted()`` (the control) returns without raising.

    Returns the exception so a caller can check its type further; its message is for humans only.
    """
    if accepted is not None:
        accepted()  # the control: raising here fails the test with the library's own exception
    with pytest.raises(exc) as info:
        refused()
    return info.value
