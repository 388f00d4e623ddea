"""Library versions in the environment: package metadata first, else the module's own ``__version__``."""

from __future__ import annotations

import importlib.metadata
import sys
import textwrap

import pytest

from harness import env as env_mod


def _write_package(root, name: str, init: str, version_py: str | None = None) -> None:
    pkg = root / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent(init))
    if version_py is not None:
        (pkg / "version.py").write_text(textwrap.dedent(version_py))


def test_version_without_metadata_comes_from_the_modules_own_version(tmp_path, monkeypatch):
    # laid out as FlashInfer's tree: version.py holds a fallback literal that is not the version
    _write_package(tmp_path, "nvfp4_nometa_pkg", """
        from .version import __version__
    """, """
        try:
            from ._build_meta import __version__
        except ImportError:
            __version__ = "0.0.0+unknown"
    """)
    (tmp_path / "nvfp4_nometa_pkg" / "_build_meta.py").write_text('__version__ = "0.7.4"\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.version("nvfp4-nometa-pkg")
    try:
        assert env_mod.library_version("nvfp4-nometa-pkg") == "0.7.4 (no package metadata)"
        assert env_mod.bare_version(env_mod.library_version("nvfp4-nometa-pkg")) == "0.7.4"
    finally:
        for mod in [m for m in sys.modules if m.startswith("nvfp4_nometa_pkg")]:
            del sys.modules[mod]


def test_version_of_a_module_without_version_or_broken_import(tmp_path, monkeypatch):
    _write_package(tmp_path, "nvfp4_nover_pkg", "X = 1\n")
    _write_package(tmp_path, "nvfp4_broken_pkg", "raise ImportError('needs a GPU')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert env_mod.library_version("nvfp4-nover-pkg") == "unknown (no package metadata, no __version__)"
        assert env_mod.library_version("nvfp4-broken-pkg") == \
            "unknown (no package metadata; import failed: ImportError)"
        assert env_mod.library_version("nvfp4-not-installed-anywhere") is None
    finally:
        for mod in [m for m in sys.modules if m.startswith(("nvfp4_nover_pkg", "nvfp4_broken_pkg"))]:
            del sys.modules[mod]


def test_installed_libraries_report_their_metadata_version():
    e = env_mod.current()
    for dist, field in (("triton", "triton"), ("hypothesis", "hypothesis"), ("flashinfer-python", "flashinfer"),
                        ("torchao", "torchao"), ("compressed-tensors", "compressed_tensors"),
                        ("nvidia-modelopt", "modelopt")):
        try:
            want = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        assert getattr(e, field) == want, dist
    assert set(e.library_versions()) == {"torch", "triton", "flashinfer", "torchao", "compressed_tensors", "modelopt"}
    assert e.arch() == (f"SM{e.compute_capability}" if e.device == "cuda" else "cpu")
