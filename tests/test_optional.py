"""Optional packages: a test needing one skips with a reason where it is absent, and fails instead
under NVFP4_REQUIRE_ORACLES=1 (set by .ci/run), so CI proves the oracle tests ran."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness import optional

REPO = Path(__file__).resolve().parents[1]
ABSENT = "nvfp4_harness_no_such_package.sub"


def test_absent_package_skips_with_its_name(monkeypatch):
    monkeypatch.delenv(optional.REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception) as info:
        optional.import_optional(ABSENT, "an oracle")
    assert "nvfp4_harness_no_such_package is not installed: needed as an oracle" in str(info.value)
    monkeypatch.setenv(optional.REQUIRE_ENV, "0")
    with pytest.raises(pytest.skip.Exception):
        optional.import_optional(ABSENT)


def test_absent_package_fails_when_required(monkeypatch):
    monkeypatch.setenv(optional.REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception) as info:
        optional.import_optional("torchao_is_not_this.sub")
    assert f"{optional.REQUIRE_ENV}=1 (set by CI) but torchao_is_not_this is not installed" in str(info.value)


def test_installed_package_imports_and_a_missing_submodule_is_a_failure(monkeypatch):
    monkeypatch.delenv(optional.REQUIRE_ENV, raising=False)
    assert optional.import_optional("json.decoder").__name__ == "json.decoder"
    with pytest.raises(ModuleNotFoundError):  # installed but lacking the module: not an absence
        optional.import_optional("json.no_such_submodule")


def _run_pytest(tmp_path: Path, env_value: str | None) -> subprocess.CompletedProcess:
    test = tmp_path / "test_needs_oracle.py"
    test.write_text(textwrap.dedent(f"""
        from harness.optional import import_optional

        def test_uses_oracle():
            import_optional("{ABSENT}", "an oracle")
    """))
    env = {k: v for k, v in os.environ.items() if k != optional.REQUIRE_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    if env_value is not None:
        env[optional.REQUIRE_ENV] = env_value
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-p", "no:xdist",
                           str(test)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_a_pytest_run_skips_without_and_fails_with_the_ci_variable(tmp_path):
    plain = _run_pytest(tmp_path, None)
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert "1 skipped" in plain.stdout and "nvfp4_harness_no_such_package is not installed" in plain.stdout
    ci = _run_pytest(tmp_path, "1")
    assert ci.returncode == 1, ci.stdout + ci.stderr
    assert "1 failed" in ci.stdout


def test_ci_script_requires_the_oracles():
    script = (REPO / ".ci" / "run").read_text()
    assert f"export {optional.REQUIRE_ENV}=1" in script


def test_a_backend_needing_an_absent_package_says_how_to_install_it(monkeypatch):
    """``Backend.support`` names the missing package and, where the project knows it, the install
    command (harness.optional.INSTALL_HINT)."""
    from harness import env as env_mod
    from harness.backends.protocol import Backend, Requirements

    top = ABSENT.split(".")[0]
    monkeypatch.setitem(optional.INSTALL_HINT, top, f"{top} (pip install {top})")

    class NeedsAbsent(Backend):
        level = "gemm"
        name = "needs-absent"
        requirements = Requirements(runs_on_cpu=True, packages=(top,))

    support = NeedsAbsent().support(env_mod.current())
    assert not support
    assert f"package {top!r} is not installed: {top} (pip install {top})" in support.reason
