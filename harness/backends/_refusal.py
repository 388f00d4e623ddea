"""Telling a library's capability refusal apart from a failure.

An adapter around a real library sees two kinds of exceptions at call time:

* a *refusal*: the library says it cannot run this call here (wrong GPU architecture, a missing
  optional dependency, no kernel for this device).  The harness records it as a skip, so the
  adapter re-raises it as :class:`~harness.backends.protocol.Unsupported` with the library's own
  message;
* anything else (an illegal memory access, a shape check that should have passed, a wrong result
  type): a failure, which must propagate unchanged.

The decision is made on the exception's type (the library's own refusal classes) or on fixed
substrings of its message; nothing else is converted.
"""

from __future__ import annotations

from collections.abc import Iterable

from harness.backends.protocol import Unsupported


def refusal_message(exc: BaseException, *, types: Iterable[type] = (), patterns: Iterable[str] = ()) -> str | None:
    """The message to skip with when ``exc`` is a capability refusal, else None.

    ``types``: exception classes that are refusals by definition (e.g. FlashInfer's
    ``BackendSupportedError``).  ``patterns``: substrings of ``"<ExceptionClass>: <message>"`` that
    mark a refusal (e.g. ``CUBLAS_STATUS_NOT_SUPPORTED``); matched case-sensitively, as the
    libraries print them.
    """
    if isinstance(exc, Unsupported):
        return str(exc)
    types = tuple(types)
    text = f"{type(exc).__name__}: {exc}"
    if types and isinstance(exc, types):
        return text
    for pat in patterns:
        if pat in text:
            return text
    return None


def as_unsupported(exc: BaseException, prefix: str, *, types: Iterable[type] = (),
                   patterns: Iterable[str] = ()) -> Unsupported | None:
    """An :class:`Unsupported` carrying ``prefix: <library message>`` for a refusal, else None."""
    msg = refusal_message(exc, types=types, patterns=patterns)
    if msg is None:
        return None
    return Unsupported(f"{prefix}: {msg}")
