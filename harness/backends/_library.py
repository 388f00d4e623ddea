"""Gating of backends built on an optional third-party library (torchao, compressed-tensors, ModelOpt).

A :class:`LibraryBackend` mixin imports its library once per process, reports the installed
version in its support reason (so ``nvfp4-harness backends`` and the report show which release was
tested), and is unavailable with the import error as the reason when the library is missing or
broken.  Adapters call :func:`library` to get the imported module or raise :class:`Unsupported`.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
from typing import TYPE_CHECKING, ClassVar

import torch

from harness.backends.protocol import Support, Unsupported
from harness.format import BLOCK_SIZE

if TYPE_CHECKING:  # pragma: no cover
    from harness.env import Environment


@functools.lru_cache(maxsize=None)
def _import(module: str):
    try:
        return importlib.import_module(module), ""
    except Exception as exc:  # noqa: BLE001 - any import failure makes the backend unavailable
        return None, f"{type(exc).__name__}: {exc}"


def installed_version(distribution: str) -> str | None:
    """The installed version of a distribution (pip name), or None."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def library(module: str, who: str):
    """Import ``module`` (cached) or raise :class:`Unsupported` naming ``who`` and the import error."""
    mod, err = _import(module)
    if mod is None:
        raise Unsupported(f"{who}: {module} cannot be imported ({err})")
    return mod


def check_rows_input(name: str, x: torch.Tensor, dtypes: tuple[torch.dtype, ...]) -> None:
    """Refuse what a library's row quantizer cannot take: ``x`` must be ``[rows, k]`` with ``k`` a
    multiple of the 16-element block (ValueError: a harness bug) in one of ``dtypes`` (Unsupported:
    a declared limit of the library)."""
    if x.ndim != 2 or x.shape[1] % BLOCK_SIZE:
        raise ValueError(f"{name}: x must be [rows, k] with k a multiple of {BLOCK_SIZE}, got {tuple(x.shape)}")
    if x.dtype not in dtypes:
        raise Unsupported(f"{name}: takes {[str(d) for d in dtypes]}, got {x.dtype}")


class LibraryBackend:
    """Mixin for a Backend subclass: ``distribution`` (pip name) and ``module`` (import name)."""

    distribution: ClassVar[str] = ""
    module: ClassVar[str] = ""

    @property
    def library_version(self) -> str | None:
        return installed_version(self.distribution)

    def support(self, env: "Environment") -> Support:
        version = self.library_version
        if version is None:
            return Support(False, f"package {self.distribution!r} is not installed (pip install -e \".[oracles]\")")
        base = super().support(env)  # type: ignore[misc]
        if not base:
            return base
        mod, err = _import(self.module)
        if mod is None:
            return Support(False, f"{self.distribution} {version} is installed but {self.module} cannot be "
                                  f"imported ({err})")
        return Support(True, f"{self.distribution} {version}; {base.reason}")

    def describe(self) -> dict:
        d = super().describe()  # type: ignore[misc]
        d["library"] = self.distribution
        d["library_version"] = self.library_version
        return d
