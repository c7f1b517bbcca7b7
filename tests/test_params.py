"""One parameter convention for tasks, backbones and datasets (brainharness.params)."""
import json
import subprocess
import sys
from importlib.metadata import entry_points

import numpy as np
import pytest
import yaml

from conftest import tiny_config
from brainharness import registry
from brainharness.errors import ConfigError
from brainharness.params import PATH, Param, check_value, defaults, param_lines, resolve_params
from brainharness.runner import Runner
from brainharness.sweeps.study import Sweep

SPEC = {
    "lr": Param(1e-4, gt=0, doc="learning rate"),
    "frac": Param(0.2, gt=0, lt=1),
    "thr": Param(10.0, ge=0, lt=100),
    "n": Param(10, ge=1),
    "cv": Param("gcv", (str, int), choices=("gcv", "loo"), ge=2),
    "mode": Param("a", choices=("a", "b")),
    "variant": Param(None, str, choices=("x", "y")),
    "flag": Param(True),
    "roi": Param("all", str, nullable=True),
    "pca": Param(None, int, ge=1),
    "stages": Param([1, 2], list, items=Param(type=int, choices=(1, 2)), nonempty=True),
    "root": Param(type=PATH, required=True, doc="data folder"),
}


def resolve(**given):
    return resolve_params("task t", SPEC, {"root": "/data", **given})


def test_defaults_values_and_order():
    p = resolve()
    assert list(p) == list(SPEC)
    assert p == {"lr": 1e-4, "frac": 0.2, "thr": 10.0, "n": 10, "cv": "gcv", "mode": "a", "variant": None, "flag": True,
                 "roi": "all", "pca": None, "stages": [1, 2], "root": "/data"}
    p["stages"].append(3)  # a copy: the declared default is untouched
    assert SPEC["stages"].default == [1, 2] and defaults(SPEC)["stages"] == [1, 2] and "root" not in defaults(SPEC)


def test_numbers_are_kept_as_written():
    """An int for a float parameter stays an int: the record stores what the config said."""
    p = resolve(thr=10, lr=1, cv=5, pca=np.int64(3), frac=np.float32(0.5))
    assert json.dumps([p["thr"], p["lr"], p["cv"]]) == "[10, 1, 5]"
    assert type(p["pca"]) is int and p["pca"] == 3 and type(p["frac"]) is float and p["frac"] == 0.5


@pytest.mark.parametrize("given, message", [
    ({"lr": "x"}, "task t: lr must be a number > 0, got 'x'"),
    ({"lr": True}, "task t: lr must be a number > 0, got True"),
    ({"lr": 0}, "task t: lr must be a number > 0, got 0"),
    ({"lr": float("inf")}, "task t: lr must be a number > 0, got inf"),
    ({"frac": 1}, "task t: frac must be a number in (0, 1), got 1"),
    ({"thr": 100.0}, "task t: thr must be a number in [0, 100), got 100.0"),
    ({"n": 2.0}, "task t: n must be an integer ≥ 1, got 2.0"),
    ({"cv": "kfold"}, "task t: cv must be 'gcv', 'loo' or an integer ≥ 2, got 'kfold'"),
    ({"cv": 1}, "task t: cv must be 'gcv', 'loo' or an integer ≥ 2, got 1"),
    ({"mode": "c"}, "task t: mode must be one of 'a', 'b', got 'c'"),
    ({"variant": "z"}, "task t: variant must be one of 'x', 'y' or null, got 'z'"),
    ({"flag": "yes"}, "task t: flag must be true or false, got 'yes'"),
    ({"roi": 3}, "task t: roi must be null or a string, got 3"),
    ({"pca": 0}, "task t: pca must be null or an integer ≥ 1, got 0"),
    ({"stages": [3]}, "task t: stages must be a non-empty list of values among 1, 2, got [3]"),
    ({"stages": []}, "task t: stages must be a non-empty list of values among 1, 2, got []"),
    ({"root": None}, "task t: root must be a path, got None"),
    ({"lrr": 1}, "task t: unknown parameter 'lrr'; did you mean 'lr'?"),
    ({"zzz": 1}, "task t: unknown parameter 'zzz' (parameters: lr, frac, thr, n, cv, mode, variant, flag, roi, pca, "
                 "stages, root)"),
])
def test_bad_values_are_one_line(given, message):
    with pytest.raises(ConfigError) as e:
        resolve(**given)
    assert str(e.value) == message


def test_yaml_number_without_a_dot_gets_a_hint_and_required_names_itself():
    with pytest.raises(ConfigError, match=r"lr must be a number > 0, got '1e-3' \(YAML reads 1e-3 as text"):
        resolve(lr=yaml.safe_load("lr: 1e-3")["lr"])
    with pytest.raises(ConfigError, match=r"^task t: root is required \(a path: data folder\)$"):
        resolve_params("task t", SPEC, {})


def test_every_builtin_plugin_declares_typed_documented_params():
    for kind in ("tasks", "backbones", "datasets"):
        for name in [ep.name for ep in entry_points(group=f"brainharness.{kind}")]:
            cls = registry.REGISTRIES[kind].get(name)
            assert cls.params, name
            for key, param in cls.params.items():
                assert isinstance(param, Param) and param.doc, (name, key)
                if not param.required:  # each default passes its own declaration
                    check_value(name, key, param, param.default)
            assert len(param_lines(cls.params)) == len(cls.params)


def test_resolved_task_params_keep_their_keys_and_defaults():
    """task.p goes into every record: same keys, same default values as before the convention."""
    enc = registry.tasks.get("encoding")()
    assert enc.p == {"alphas": None, "alpha_min": 1e-2, "alpha_max": 1e7, "n_alphas": 10, "cv": "gcv", "pca": None,
                     "standardize": True, "layer": None, "nc_threshold": 10.0, "rois": None,
                     "n_boot": 1000}  # issue 17: bootstrap intervals (changes what a record holds, so its id)
    retr = registry.tasks.get("retrieval")()
    assert retr.p["alpha_min"] == 1.0 and retr.p["roi"] == "nsdgeneral" and retr.p["n_candidates"] == 300
    assert registry.tasks.get("encoding")(nc_threshold=10).p["nc_threshold"] == 10  # as written


def test_cross_parameter_rules_stay_in_check():
    with pytest.raises(ConfigError, match=r"^task encoding: alpha_min must be ≤ alpha_max, got 10.0 > 1.0$"):
        registry.tasks.get("encoding")(alpha_min=10.0, alpha_max=1.0)
    registry.tasks.get("encoding")(alpha_min=10.0, alpha_max=1.0, alphas=[1.0, 2.0])  # explicit grid: no rule


def run_cli(tmp_path, cfg: dict | str):
    path = tmp_path / "c.yaml"
    path.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg))
    return subprocess.run([sys.executable, "-m", "brainharness.cli", "run", str(path)], capture_output=True, text=True)


def cli_config(tmp_path, **over):
    return tiny_config(tmp_path, cache_dir=str(tmp_path / "cache"), backbones=[{"name": "pixels", "size": 8}],
                       **over)


@pytest.mark.parametrize("case, needle", [
    ("task", "task encoding: unknown parameter 'alpah_min'; did you mean 'alpha_min'?"),
    ("backbone", "backbone pixels: unknown parameter 'sise'; did you mean 'size'?"),
    ("dataset", "dataset synthetic: unknown parameter 'n_trian'; did you mean 'n_train'?"),
    ("type", "backbone pixels: half must be true or false, got 'yes'"),
    ("range", "dataset synthetic: noise_fraction must be a number in [0, 1], got 1.5"),
    ("choice", "backbone pixels: readout must be one of 'pooled', 'cls', 'mean', 'flatten', 'grid', got 'sum'"),
])
def test_cli_rejects_bad_parameters_in_one_line_before_any_work(tmp_path, case, needle):
    cfg = cli_config(tmp_path)
    if case == "task":
        cfg["tasks"] = [{"name": "encoding", "alpah_min": 1.0}]
    elif case == "dataset":
        cfg["dataset"]["n_trian"] = 100
    elif case == "range":
        cfg["dataset"]["noise_fraction"] = 1.5
    else:
        change = {"backbone": {"sise": 4}, "type": {"half": "yes"}, "choice": {"readout": "sum"}}[case]
        cfg["backbones"][0].update(change)
    proc = run_cli(tmp_path, cfg)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == f"brainharness: error: {needle}"
    assert not (tmp_path / "results").exists() and not (tmp_path / "cache" / "datasets").exists()


def test_cli_yaml_number_written_without_a_dot(tmp_path):
    text = yaml.safe_dump(cli_config(tmp_path, tasks=[{"name": "encoding"}])).replace(
        "- name: encoding", "- name: encoding\n  alpha_min: 1e-3")
    proc = run_cli(tmp_path, text)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "task encoding: alpha_min must be a number > 0, got '1e-3' (YAML reads 1e-3 as text" in proc.stderr


def test_list_shows_each_parameter_with_default_type_and_doc():
    out = subprocess.run([sys.executable, "-m", "brainharness.cli", "list", "tasks"], capture_output=True,
                         text=True, check=True).stdout
    lines = out.splitlines()
    block = lines[lines.index(next(l for l in lines if l.startswith("encoding\t"))) + 1:]
    nc = next(l for l in block if l.strip().startswith("nc_threshold = "))
    assert nc.split()[:3] == ["nc_threshold", "=", "10.0"] and "a number in [0, 100)" in nc and "noise ceiling" in nc
    assert any(l.strip().startswith('cv = "gcv"') and "'gcv', 'loo' or an integer ≥ 2" in l for l in block)
    for kind, name, default in (("backbones", "pixels", "size = 16"), ("datasets", "synthetic", "n_train = 1000"),
                                ("datasets", "nsd", "root = (required)")):
        out = subprocess.run([sys.executable, "-m", "brainharness.cli", "list", kind], capture_output=True,
                             text=True, check=True).stdout.splitlines()
        start = next(i for i, l in enumerate(out) if l.startswith(name + "\t"))
        end = next((i for i in range(start + 1, len(out)) if not out[i].startswith(" ")), len(out))
        assert any(l.strip().startswith(default) for l in out[start + 1:end]), (kind, name)


def test_sweep_values_go_through_the_task_params(tmp_path):
    runner = Runner(tiny_config(tmp_path, backbones=[{"name": "pixels", "size": 8}],
                                sweep={"space": {"alpha_min": {"low": 0.0, "high": 1.0}}}), progress=False)
    with pytest.raises(ConfigError, match=r"^sweep.space \(task encoding\): alpha_min must be a number > 0, got 0.0$"):
        Sweep(runner)
    runner.cfg["sweep"] = {"space": {"cv": {"choices": ["gcv", "kfold"]}}}
    with pytest.raises(ConfigError, match=r"cv must be 'gcv', 'loo' or an integer ≥ 2, got 'kfold'"):
        Sweep(runner)
    runner.cfg["sweep"] = {"space": {"pca": {"choices": [None, 4]}}}
    assert Sweep(runner).space == {"pca": {"choices": [None, 4]}}
    task = runner.task(runner.cfg["tasks"][0], {"alpha_min": 0.5})  # a trial's overrides: the same resolve path
    assert task.p["alpha_min"] == 0.5
    with pytest.raises(ConfigError, match="task encoding: n_alphas must be an integer ≥ 1, got 2.5"):
        runner.task(runner.cfg["tasks"][0], {"n_alphas": 2.5})
