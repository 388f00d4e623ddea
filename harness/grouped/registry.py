"""The grouped backends: built-in modules, loaded on first use (kept apart from the GEMM-level
registry, whose property suite, CLI and case files speak of GEMM problems)."""

from __future__ import annotations

import importlib

from harness.backends import registry as gemm_registry
from harness.backends.registry import UnknownBackendError
from harness.grouped.protocol import GroupedBackend

MODULES = ("harness.backends.grouped_triton", "harness.backends.te_grouped", "harness.backends.moe_triton",
           "harness.backends.moe_w4a16", "harness.backends.flashinfer_moe", "harness.backends.vllm_moe",
           "harness.backends.sglang_moe", "harness.grouped.mutants")

_REGISTRY: dict[str, GroupedBackend] = {}


def _ensure_loaded() -> None:
    if _REGISTRY:
        return
    for modname in MODULES:
        for b in importlib.import_module(modname).backends():
            _REGISTRY[b.name] = b


def all_backends(include_mutants: bool = False) -> list[GroupedBackend]:
    _ensure_loaded()
    return [b for b in _REGISTRY.values() if include_mutants or not b.mutant]


def is_grouped(name: str) -> bool:
    _ensure_loaded()
    return name in _REGISTRY


def get(name: str) -> GroupedBackend:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownBackendError(f"unknown grouped backend {name!r}; known: {sorted(_REGISTRY)}") from None


def get_any(name: str):
    """A backend of any level by name: the GEMM-level registry's (:mod:`harness.backends.registry`,
    plugins included) or a grouped one.  Raises :class:`UnknownBackendError` naming both lists."""
    try:
        return gemm_registry.get(name)
    except UnknownBackendError:
        if is_grouped(name):
            return get(name)
    names = ", ".join(sorted(b.name for b in gemm_registry.all_backends()))
    raise UnknownBackendError(f"unknown backend {name!r}; known backends: {names}; grouped backends: "
                              f"{', '.join(sorted(b.name for b in all_backends()))} "
                              f"(mutants: `nvfp4-harness backends --mutants`)")
