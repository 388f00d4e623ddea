"""The backend registry: built-in backends, entry-point plugins and plugins named on the command line.

Built-in backend modules each expose ``backends() -> list[Backend]``.  A plugin is
  * an installed distribution declaring an entry point in the group ``nvfp4_harness.backends`` whose
    object is a :class:`~harness.backends.protocol.Backend` instance, a Backend subclass, or a
    callable returning an iterable of backends; or
  * a module name or a ``.py`` file given to ``--plugin`` (CLI) / ``--nvfp4-plugin`` (pytest) that
    defines ``backends()`` (or ``BACKENDS``).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
from collections.abc import Iterable
from pathlib import Path

from harness.backends.protocol import Backend

ENTRY_POINT_GROUP = "nvfp4_harness.backends"

BUILTIN_MODULES = (
    "harness.backends.triton_emulation",
    "harness.backends.torch_emulation",
    "harness.backends.w4a16",
    "harness.backends.flashinfer_fp4",
    "harness.backends.scaled_mm",
    "harness.backends.dot_scaled",
    "harness.backends.linear",
    "harness.backends.quantizers",
    "harness.backends.torchao_nvfp4",
    "harness.backends.compressed_tensors_nvfp4",
    "harness.backends.modelopt_nvfp4",
    "harness.backends.flashinfer_layout",
)
MUTANT_MODULE = "harness.mutants"


class UnknownBackendError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; say it plainly
        return str(self.args[0])


class PluginError(RuntimeError):
    pass


_REGISTRY: dict[str, Backend] = {}
_LOADED = False
_LOAD_ERRORS: dict[str, str] = {}


def register(backend: Backend, *, replace: bool = False) -> Backend:
    if not isinstance(backend, Backend):
        raise PluginError(f"register: {backend!r} is not a harness Backend (subclass GemmBackend, "
                          f"LinearBackend or QuantizerBackend)")
    if not getattr(backend, "name", None):
        raise PluginError(f"register: backend {backend!r} has no name")
    if backend.name in _REGISTRY and not replace and _REGISTRY[backend.name] is not backend:
        raise PluginError(f"register: a backend named {backend.name!r} is already registered")
    _REGISTRY[backend.name] = backend
    return backend


def _coerce(obj, origin: str) -> list[Backend]:
    if isinstance(obj, Backend):
        return [obj]
    if isinstance(obj, type) and issubclass(obj, Backend):
        return [obj()]
    if callable(obj):
        obj = obj()
    if isinstance(obj, Backend):
        return [obj]
    if isinstance(obj, Iterable):
        out = list(obj)
        bad = [b for b in out if not isinstance(b, Backend)]
        if bad:
            raise PluginError(f"{origin}: {bad[0]!r} is not a harness Backend")
        return out
    raise PluginError(f"{origin}: expected a Backend, a Backend class or a callable returning backends, got {obj!r}")


def _from_module(mod, origin: str) -> list[Backend]:
    if hasattr(mod, "backends"):
        return _coerce(mod.backends, origin)
    if hasattr(mod, "BACKENDS"):
        return _coerce(mod.BACKENDS, origin)
    raise PluginError(f"{origin}: defines neither backends() nor BACKENDS")


def load_plugin(spec: str) -> list[Backend]:
    """Register the backends of a plugin given as a module name or a path to a ``.py`` file."""
    path = Path(spec)
    module_name = all(part.isidentifier() for part in spec.split("."))
    if path.is_dir() and not module_name:
        raise PluginError(f"--plugin {spec!r} is a directory: expected a .py file that defines backends() "
                          f"or an importable module name")
    if spec.endswith(".py") or (path.exists() and not path.is_dir()):
        if not path.is_file():
            raise PluginError(f"--plugin {spec!r}: no such file")
        name = f"nvfp4_harness_plugin_{path.stem}"
        mod_spec = importlib.util.spec_from_file_location(name, path)
        if mod_spec is None or mod_spec.loader is None:
            raise PluginError(f"--plugin {spec!r}: cannot be imported as a Python file")
        mod = importlib.util.module_from_spec(mod_spec)
        sys.modules[name] = mod
        try:
            mod_spec.loader.exec_module(mod)
        except Exception as exc:
            raise PluginError(f"--plugin {spec!r}: importing it raised {type(exc).__name__}: {exc}") from exc
    else:
        try:
            mod = importlib.import_module(spec)
        except ImportError as exc:
            raise PluginError(f"--plugin {spec!r}: no module of that name can be imported ({exc})") from exc
        except Exception as exc:  # the plugin's own code raised while being imported
            raise PluginError(f"--plugin {spec!r}: importing it raised {type(exc).__name__}: {exc}") from exc
    _ensure_loaded()
    try:
        found = _from_module(mod, f"plugin {spec!r}")
    except PluginError:
        raise
    except Exception as exc:  # its backends() raised
        raise PluginError(f"--plugin {spec!r}: its backends() raised {type(exc).__name__}: {exc}") from exc
    for b in found:
        register(b, replace=True)
    return found


def _load_entry_points() -> None:
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            for b in _coerce(ep.load(), f"entry point {ep.name!r} ({ep.value})"):
                register(b, replace=True)
        except Exception as exc:  # a broken plugin must not take the harness down
            _LOAD_ERRORS[f"entry point {ep.name}"] = f"{type(exc).__name__}: {exc}"


def _ensure_loaded() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    # the Triton interpreter is chosen when harness.kernels is imported, and that must happen before
    # any backend module imports triton (Triton reads the choice once; see harness/kernels/__init__.py)
    importlib.import_module("harness.kernels")
    for modname in BUILTIN_MODULES + (MUTANT_MODULE,):
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("harness"):
                _LOAD_ERRORS[modname] = f"not built: {exc}"
                continue
            raise
        for b in _from_module(mod, modname):
            register(b, replace=True)
    _load_entry_points()


def load_errors() -> dict[str, str]:
    _ensure_loaded()
    return dict(_LOAD_ERRORS)


def all_backends(include_mutants: bool = False, level: str | None = None) -> list[Backend]:
    _ensure_loaded()
    return [b for b in _REGISTRY.values()
            if (include_mutants or not b.mutant) and (level is None or b.level == level)]


def get(name: str) -> Backend:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        names = ", ".join(sorted(b.name for b in all_backends()))
        raise UnknownBackendError(f"unknown backend {name!r}; known backends: {names} "
                                  f"(mutants: `nvfp4-harness backends --mutants`)") from None
