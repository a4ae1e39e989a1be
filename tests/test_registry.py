import importlib.metadata
import sys
import textwrap

import pytest

from mnemoscope.errors import RegistryError
from mnemoscope.registry import ARCHITECTURES, TASKS, Registry


def test_builtins_registered():
    assert {"transformer", "lstm", "cnn"} <= set(ARCHITECTURES.names())
    assert {"text", "code"} <= set(TASKS.names())


def test_decorator_and_duplicate():
    reg = Registry("architecture", "mnemoscope.test-none", "mnemoscope.architectures")

    @reg.register("thing")
    class Thing:
        pass

    assert reg.get("thing") is Thing
    with pytest.raises(RegistryError, match="duplicate architecture name 'thing'"):
        @reg.register("thing")
        class Other:
            pass


def test_unknown_name_lists_known_and_close_matches():
    with pytest.raises(RegistryError) as err:
        ARCHITECTURES.get("transformr")
    msg = str(err.value)
    assert "did you mean transformer" in msg and "lstm" in msg and "cnn" in msg
    assert "\n" not in msg


def test_module_path(tmp_path, monkeypatch):
    (tmp_path / "my_plugin_mod.py").write_text("class Net:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert ARCHITECTURES.get("my_plugin_mod:Net").__name__ == "Net"
    with pytest.raises(RegistryError, match="has no attribute 'Nope'"):
        ARCHITECTURES.get("my_plugin_mod:Nope")
    with pytest.raises(RegistryError, match="failed to import"):
        ARCHITECTURES.get("no_such_module_xyz:Net")


def test_file_path(tmp_path):
    f = tmp_path / "model_file.py"
    f.write_text("class FileNet:\n    answer = 42\n")
    assert ARCHITECTURES.get(f"{f}:FileNet").answer == 42
    with pytest.raises(RegistryError, match="not found"):
        ARCHITECTURES.get(f"{tmp_path}/missing.py:FileNet")
    bad = tmp_path / "broken.py"
    bad.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(RegistryError, match="RuntimeError: boom"):
        ARCHITECTURES.get(f"{bad}:X")


def test_entry_point(tmp_path, monkeypatch):
    """An installed distribution's entry point in the group is picked up, by name."""
    pkg = tmp_path / "site"
    (pkg / "ep_plugin_pkg").mkdir(parents=True)
    (pkg / "ep_plugin_pkg" / "__init__.py").write_text("class EPNet:\n    pass\n")
    dist = pkg / "ep_plugin_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-plugin-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[mnemoscope.test-eps]\nepnet = ep_plugin_pkg:EPNet\n")
    monkeypatch.syspath_prepend(str(pkg))
    importlib.invalidate_caches()
    reg = Registry("architecture", "mnemoscope.test-eps", "mnemoscope.architectures")
    assert "epnet" in reg.names()
    assert reg.get("epnet").__name__ == "EPNet"


def test_entry_point_duplicate_of_builtin_fails(tmp_path, monkeypatch):
    pkg = tmp_path / "site2"
    (pkg / "dup_pkg").mkdir(parents=True)
    (pkg / "dup_pkg" / "__init__.py").write_text("class Dup:\n    pass\n")
    dist = pkg / "dup_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: dup-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[mnemoscope.test-dup]\nlstm = dup_pkg:Dup\n")
    monkeypatch.syspath_prepend(str(pkg))
    importlib.invalidate_caches()
    reg = Registry("architecture", "mnemoscope.test-dup", "mnemoscope.architectures")
    from mnemoscope.architectures.lstm import LSTM
    reg.add("lstm", LSTM)
    with pytest.raises(RegistryError, match="duplicate architecture name 'lstm'"):
        reg.names()
