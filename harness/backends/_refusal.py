"""Telling a library's capability refusal apart from a failure.

An adapter around a real library sees two kinds of exceptions at call time:

* a *refusal*: the library says it cannot run this call here (wrong GPU architecture, a missing
  optional dependency, no kernel for this device).  The harness records it as a skip, so the
  adapter re-raises it as :class:`~harness.backends.protocol.Unsupported` with the library's own
  message, shown as the library wrote it;
* anything else (an illegal memory access, a shape check that should have passed, a wrong result
  type): a failure, which must propagate unchanged.

The decision keys only on identifiers a library keeps stable across releases: its own refusal
exception classes (FlashInfer's ``BackendSupportedError``) and status codes (cuBLAS's
``CUBLAS_STATUS_NOT_SUPPORTED``), matched as whole identifiers.  Prose is never matched: libraries
reword their messages between releases, and a reworded message must not change a verdict.  An
exception recognised by neither is a failure; no exception ever becomes a pass.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from harness.backends.protocol import Unsupported

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _check_status_codes(status_codes: Iterable[str]) -> tuple[str, ...]:
    codes = tuple(status_codes)
    for code in codes:
        if not _IDENTIFIER.match(code):
            raise ValueError(f"status code {code!r}: expected one identifier (e.g. CUBLAS_STATUS_NOT_SUPPORTED), "
                             f"not prose: message wording is not a stable way to recognise a refusal")
    return codes


def refusal_message(exc: BaseException, *, types: Iterable[type] = (),
                    status_codes: Iterable[str] = ()) -> str | None:
    """``"<ExceptionClass>: <message>"`` when ``exc`` is a capability refusal, else None.

    ``types``: exception classes that are refusals by definition (e.g. FlashInfer's
    ``BackendSupportedError``).  ``status_codes``: identifiers (``CUBLAS_STATUS_NOT_SUPPORTED``,
    ``cudnnGraphNotSupportedError``) whose appearance as a whole word in the exception's text marks
    a refusal.  Raises ValueError for a status code that is not a single identifier.
    """
    if isinstance(exc, Unsupported):
        return str(exc)
    types = tuple(types)
    text = f"{type(exc).__name__}: {exc}"
    if types and isinstance(exc, types):
        return text
    for code in _check_status_codes(status_codes):
        if re.search(rf"(?<![A-Za-z0-9_]){re.escape(code)}(?![A-Za-z0-9_])", text):
            return text
    return None


def as_unsupported(exc: BaseException, prefix: str, *, types: Iterable[type] = (),
                   status_codes: Iterable[str] = ()) -> Unsupported | None:
    """An :class:`Unsupported` carrying ``prefix: <library message>`` for a refusal, else None."""
    msg = refusal_message(exc, types=types, status_codes=status_codes)
    if msg is None:
        return None
    return Unsupported(f"{prefix}: {msg}")
