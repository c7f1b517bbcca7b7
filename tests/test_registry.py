import subprocess
import sys

import pytest

from brainharness import registry
from brainharness.errors import HarnessError, PluginNotFound
from brainharness.registry import Registry


def test_lazy_placeholder_imports_on_first_use():
    reg = Registry("things")
    reg.register_lazy("od", "collections:OrderedDict")
    assert reg.names() == ["od"]
    from collections import OrderedDict
    assert reg.get("od") is OrderedDict


def test_duplicate_names_raise():
    reg = Registry("things")
    reg.register("a", 1)
    with pytest.raises(HarnessError, match="duplicate things plugin name 'a'"):
        reg.register("a", 2)
    with pytest.raises(HarnessError, match="duplicate"):
        reg.register_lazy("a", "x:y")


def test_unknown_name_suggests_close_matches():
    with pytest.raises(PluginNotFound, match=r"unknown backbone 'oracel'; did you mean 'oracle'"):
        registry.backbones.get("oracel")


def test_builtins_come_from_entry_points():
    assert {"oracle", "pixels", "random-features"} <= set(registry.backbones.names())
    assert {"encoding", "retrieval"} <= set(registry.tasks.names())
    assert "synthetic" in registry.datasets.names()
    assert registry.backbones.get("pixels").registry_name == "pixels"


def test_listing_imports_no_model_library():
    code = ("import sys; from brainharness.cli import main\n"
            "for k in ('backbones','tasks','datasets','metrics'): main(['list', k])\n"
            "heavy = [m for m in ('torch','transformers','timm','open_clip') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
    lines = [l for l in out.splitlines() if l.startswith("oracle\t")]
    assert lines and "layers=low, category, all" in lines[0]
