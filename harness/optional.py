"""Optional packages in the harness's tests: skipped with a reason where absent, required in CI.

The independent oracles (torchao, compressed-tensors: the ``oracles`` extra in pyproject.toml) and
FlashInfer's pure-Python checks are optional at run time: a GPU node may lack them.  A test that
needs one imports it through :func:`import_optional`, which skips the test with a reason naming the
package where it is not installed.  CI must prove those tests ran, so ``.ci/run`` sets
``NVFP4_REQUIRE_ORACLES=1``, which turns each such skip into a failure.

Only an *absent* package is a skip.  A package that is installed but fails to import, or lacks the
module a test needs, is a failure either way (it is a real incompatibility, not an absence).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType

import pytest

REQUIRE_ENV = "NVFP4_REQUIRE_ORACLES"
"""Set to ``1`` (as ``.ci/run`` does) to make a missing optional package fail the tests that need it."""

#: import name -> how to install it
INSTALL_HINT = {
    "torchao": "torchao (pip install -e '.[oracles]')",
    "compressed_tensors": "compressed-tensors (pip install -e '.[oracles]')",
    "flashinfer": "flashinfer-python (pip install flashinfer-python)",
    "modelopt": "nvidia-modelopt (pip install -e '.[oracles]')",
}


def required() -> bool:
    """Whether missing optional packages must fail (``NVFP4_REQUIRE_ORACLES`` set and not ``0``)."""
    return os.environ.get(REQUIRE_ENV, "").strip() not in ("", "0")


def is_installed(module: str) -> bool:
    """Whether the top-level package of ``module`` (``"torchao.prototype..."`` -> torchao) is importable."""
    top = module.split(".", 1)[0]
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def import_optional(module: str, why: str = "") -> ModuleType:
    """Import ``module`` for a test; skip the test (or fail it under ``NVFP4_REQUIRE_ORACLES=1``)
    when its top-level package is not installed.

    ``why``: what the test uses it for, added to the skip reason.  Import errors of an installed
    package propagate (a failure).
    """
    if not is_installed(module):
        top = module.split(".", 1)[0]
        reason = f"{INSTALL_HINT.get(top, top)} is not installed" + (f": needed as {why}" if why else "")
        if required():
            pytest.fail(f"{REQUIRE_ENV}=1 (set by CI) but {reason}", pytrace=False)
        pytest.skip(reason, allow_module_level=True)
    return importlib.import_module(module)
