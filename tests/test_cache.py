"""One cache resolver: the config's cache_dir, else a non-empty $BRAINHARNESS_CACHE, else the user
cache folder, reaching every cache (features, datasets, captioners, text embeddings, metric data)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_config
from brainharness.backbones.blip2_synthetic import default_root
from brainharness.cache import SUBDIRS, cache_path, cache_root
from brainharness.cli import main
from brainharness.config import load_config
from brainharness.data import Responses, Subject
from brainharness.datasets.subject_cache import cached_subject
from brainharness.datasets.synthetic import SyntheticDataset
from brainharness.errors import ConfigError
from brainharness.features import FeatureCache
from brainharness.metrics.caption_evaluate import nltk_data_dir
from brainharness.runner import Runner
from brainharness.tasks.aligned_text import embeddings_file

SMALL = {"name": "synthetic", "n_train": 60, "n_test": 20, "n_voxels": 30, "image_size": 16, "seed": 5}


def files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def in_scratch_folder(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")


@pytest.fixture
def env(tmp_path, monkeypatch) -> Path:
    """$BRAINHARNESS_CACHE set to a folder of its own; the current folder elsewhere."""
    monkeypatch.setenv("BRAINHARNESS_CACHE", str(tmp_path / "env"))
    in_scratch_folder(tmp_path, monkeypatch)
    return tmp_path / "env"


def test_an_empty_environment_variable_is_the_user_cache_not_the_current_folder(tmp_path, monkeypatch):
    in_scratch_folder(tmp_path, monkeypatch)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    for empty in ("", "  "):
        monkeypatch.setenv("BRAINHARNESS_CACHE", empty)
        assert cache_root() == tmp_path / "xdg" / "brainharness"
        assert FeatureCache().root == tmp_path / "xdg" / "brainharness" / "features"
        assert SyntheticDataset(**{k: v for k, v in SMALL.items() if k != "name"}).path.parent == \
            tmp_path / "xdg" / "brainharness" / "datasets"
        assert cache_root("") == tmp_path / "xdg" / "brainharness"  # an empty config value: the same
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/xdg")  # the XDG spec: relative values are ignored
    assert cache_root() == Path.home() / ".cache" / "brainharness"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == Path.home() / ".cache" / "brainharness"
    # `brainharness cache ls` resolves the same way
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert main(["cache", "ls"]) == 0
    assert not any((tmp_path / "cwd").iterdir())


def test_config_cache_dir_wins_over_the_environment(tmp_path, env, capsys):
    assert cache_root() == env and cache_root(tmp_path / "x") == tmp_path / "x"
    assert cache_path("captioners", tmp_path / "x") == tmp_path / "x" / "captioners"
    with pytest.raises(ValueError, match="unknown cache folder 'nltk'"):
        cache_path("nltk")
    with pytest.raises(ConfigError, match="cache_dir must be a path, got 3"):
        cache_root(3)
    assert load_config(tiny_config(tmp_path, cache_dir=""))["cache_dir"] is None  # empty = unset, not "."
    assert main(["cache", "ls", "--cache-dir", str(tmp_path / "x")]) == 0
    assert f"in {tmp_path / 'x' / 'features'}" in capsys.readouterr().out


def test_a_run_writes_every_cache_under_the_config_cache_dir_only(tmp_path, env):
    x = tmp_path / "x"
    cfg = tiny_config(tmp_path, cache_dir=str(x), dataset=SMALL, backbones=[{"name": "pixels", "size": 4}],
                      tasks=[{"name": "encoding"}])
    runner = Runner(cfg, progress=False)
    [record] = runner.run()
    assert record["status"] == "complete"
    written = files(x)
    assert any(p.parent == x / "features" and p.suffix == ".h5" for p in written)
    assert any(p.parent == x / "datasets" and p.name.startswith("synthetic-") for p in written)
    assert files(env) == [] and not any((tmp_path / "cwd").iterdir())
    assert runner.backbone(cfg["backbones"][0]).cache_dir == x  # backbones get the root from the runner


def test_every_cache_path_resolves_under_the_given_root(tmp_path, env):
    x = tmp_path / "x"
    assert default_root(x) == x / "captioners" and default_root() == env / "captioners"
    assert embeddings_file("abc", x) == x / "text-embeddings" / "abc.npz"
    assert nltk_data_dir(x) == x / "metric-data" / "nltk_data"
    assert set(SUBDIRS) == {"features", "datasets", "captioners", "text-embeddings", "metric-data"}
    # the subject cache of the real-data loaders
    rng = np.random.default_rng(0)
    subject = Subject("subj01", Responses(np.arange(4), rng.normal(size=(4, 3)).astype(np.float32)),
                      Responses(np.arange(4, 6), rng.normal(size=(2, 3)).astype(np.float32)))
    _, _, info = cached_subject(x, "layout", "subj01", {"a": 1}, [], lambda: (subject, {}))
    assert info["status"] == "written" and Path(info["path"]).parent == x / "datasets"
    assert files(env) == []


def test_text_embeddings_of_a_run_land_under_the_config_cache_dir(tmp_path, env):
    pytest.importorskip("timm")
    pytest.importorskip("sentence_transformers")
    import brainharness.tasks.aligned_encoding  # noqa: F401  (registers the task)

    x = tmp_path / "x"
    eva = {"name": "eva", "label": "eva-tiny", "weights": "random-init", "readout": "mean",
           "model_kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 16, "depth": 2, "num_heads": 2}}
    task = {"name": "aligned_encoding", "blocks": [0, 1], "lam": 1.0, "max_epochs": 0, "num_threads": 1}
    cfg = tiny_config(tmp_path, cache_dir=str(x), dataset={**SMALL, "image_size": 32}, backbones=[eva], tasks=[task])
    [record] = Runner(cfg, progress=False).run()
    assert record["details"]["text"]["used"]
    assert [p.suffix for p in files(x / "text-embeddings") if not p.name.endswith(".lock")] == [".npz"]
    assert files(env) == []
