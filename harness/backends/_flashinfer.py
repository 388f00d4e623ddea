"""FlashInfer, imported once and its refusals recognised: shared by the GEMM and quantizer adapters.

Importing FlashInfer takes seconds and may fail (optional dependency), so :func:`import_flashinfer`
caches the module or the reason.  FlashInfer's own "not supported here" errors are its exception
classes (:func:`refusal_types`); :func:`translate_refusal` turns them, and the status codes of the
libraries under ``mm_fp4`` (:data:`REFUSAL_STATUS_CODES`), into
:class:`~harness.backends.protocol.Unsupported` (a skip); anything else stays a failure.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from harness.backends._refusal import as_unsupported
from harness.backends.protocol import Unsupported

# Status codes by which the libraries under mm_fp4 refuse a call on hardware they do not support
# (matched as whole identifiers).  FlashInfer's own refusals are its exception classes
# (refusal_types()).  Anything else raised by mm_fp4 is a failure.
REFUSAL_STATUS_CODES = (
    "CUBLAS_STATUS_NOT_SUPPORTED",   # cuDNN's cuBLAS-backed FP4 engine
    "cudnnGraphNotSupportedError",   # cuDNN frontend: no engine for this graph here
)

_IMPORT_CACHE: dict[str, tuple[ModuleType | None, str | None]] = {}


def import_flashinfer() -> tuple[ModuleType | None, str | None]:
    """(flashinfer module, None) or (None, why it cannot be imported).  Cached per process."""
    if "flashinfer" not in _IMPORT_CACHE:
        try:
            mod = importlib.import_module("flashinfer")
            _IMPORT_CACHE["flashinfer"] = (mod, None)
        except Exception as exc:  # noqa: BLE001 - any import failure makes the backend unavailable
            _IMPORT_CACHE["flashinfer"] = (None, f"{type(exc).__name__}: {exc}")
    return _IMPORT_CACHE["flashinfer"]


def refusal_types() -> tuple[type, ...]:
    """FlashInfer's own exception classes for "this backend / GPU / library is not supported"."""
    fi, _ = import_flashinfer()
    if fi is None:
        return ()
    utils = importlib.import_module("flashinfer.utils")
    return tuple(getattr(utils, n) for n in ("BackendSupportedError", "GPUArchitectureError", "LibraryError")
                 if hasattr(utils, n))


def translate_refusal(exc: BaseException, prefix: str) -> Unsupported | None:
    """:class:`Unsupported` for a FlashInfer capability refusal, None for anything else (a failure)."""
    return as_unsupported(exc, prefix, types=refusal_types(), status_codes=REFUSAL_STATUS_CODES)
