"""Backend plugins: the README's example loads by file path, by module name and through the
``nvfp4_harness.backends`` entry point, and passes the properties; bad plugins are clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.backends import registry
from harness.problem import GemmProblem, Poison
from harness.runner import execute
from harness.trial import Trial

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "torch_reference_plugin.py"


def test_example_plugin_loads_from_a_file_and_passes_the_properties():
    found = registry.load_plugin(str(EXAMPLE))
    assert [b.name for b in found] == ["example-torch-fp32"]
    for prop, poison in (("reference_agreement", Poison()), ("row_isolation", Poison(m_pad=0x7F)),
                         ("column_isolation", Poison(n_pad=0xFF))):
        out = execute(Trial("example-torch-fp32", prop, GemmProblem(3, 40, 48), poison, "8x4"))
        assert out.status == "pass", (prop, out.reason)


def test_example_plugin_loads_from_the_command_line():
    res = subprocess.run([sys.executable, "-m", "harness", "backends", "--plugin", str(EXAMPLE)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "example-torch-fp32" in res.stdout


def test_example_plugin_loads_through_the_entry_point_group(tmp_path):
    dist = tmp_path / "example_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: example-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[nvfp4_harness.backends]\nexample = torch_reference_plugin:backends\n")
    code = ("from harness.backends import registry; "
            "print([b.name for b in registry.all_backends() if b.name.startswith('example')]); "
            "print(registry.load_errors())")
    env = {**__import__("os").environ, "PYTHONPATH": f"{tmp_path}:{EXAMPLE.parent}"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "['example-torch-fp32']" in res.stdout


def test_bad_plugins_are_clear_errors(tmp_path):
    with pytest.raises(registry.PluginError, match="no such file"):
        registry.load_plugin(str(tmp_path / "missing.py"))
    bad = tmp_path / "bad_plugin.py"
    bad.write_text("BACKENDS = [object()]\n")
    with pytest.raises(registry.PluginError, match="is not a harness Backend"):
        registry.load_plugin(str(bad))
    with pytest.raises(registry.PluginError, match="no module of that name"):
        registry.load_plugin("no_such_module_xyz")
    with pytest.raises(registry.UnknownBackendError, match="unknown backend 'nope'; known backends:"):
        registry.get("nope")
