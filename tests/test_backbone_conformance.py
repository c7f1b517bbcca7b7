"""One conformance suite that every registered backbone runs (Brain-Score style).

Each registered backbone needs a tiny spec here: a new plugin without one fails the suite.
"""
import json

import numpy as np
import pytest
import yaml
from importlib import resources

from brainharness import registry
from brainharness.features import FeatureCache
from brainharness.datasets.synthetic import SyntheticDataset
from brainharness.tasks.decoding import TINY_CAPTIONER


def _demo_specs() -> dict:
    """Tiny specs: the demo's own small random-init configs, keyed by plugin name."""
    cfg = yaml.safe_load(resources.files("brainharness.configs").joinpath("demo.yaml").read_text())
    specs = {}
    for b in cfg["backbones"]:
        b = {k: v for k, v in b.items() if k != "label"}
        specs.setdefault(b.pop("name"), b)
    return specs


SPECS = _demo_specs()
SPECS.setdefault("eva", {"weights": "random-init",
                         "model_kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2,
                                          "num_heads": 2}})
SPECS.setdefault("blip2-synthetic", TINY_CAPTIONER)  # trained for a few steps (cached after the first run)
NAMES = registry.backbones.names()


@pytest.fixture(scope="module")
def stimuli(tmp_path_factory):
    return SyntheticDataset(n_train=6, n_test=4, n_voxels=20, image_size=32, seed=1,
                            cache_dir=tmp_path_factory.mktemp("syn")).load().stimuli


def test_every_backbone_has_a_conformance_spec():
    assert set(NAMES) <= set(SPECS), f"add tiny specs for {sorted(set(NAMES) - set(SPECS))}"


@pytest.mark.parametrize("name", NAMES)
def test_backbone_conformance(name, stimuli, tmp_path):
    cls = registry.backbones.get(name)
    meta = cls.describe()
    assert {"family", "modalities", "layers", "weights"} <= set(meta) and meta["layers"]
    bb = cls(**SPECS[name], batch_size=3, device="cpu")
    assert bb.layers() and bb.layer in bb.layers()
    info = bb.weights_info()
    assert info["source"] in ("none", "random-init", "pretrained", "local")
    identity = bb.identity()
    assert identity is not None and json.dumps(identity, default=str)
    ids = stimuli.ids[:5]
    cache = FeatureCache(tmp_path)
    first, how = cache.features(bb, stimuli, ids)
    assert how["cache"] == "miss"
    assert first.shape[0] == 5 and first.dtype == np.float32 and np.isfinite(first).all()
    assert first.reshape(5, -1).std(0).max() > 0  # features vary across images
    again, how = cache.features(bb, stimuli, ids)
    assert how["cache"] == "hit"
    np.testing.assert_array_equal(first, again)
    # the same backbone, fresh, without cache: identical (deterministic, batch-independent)
    bb2 = cls(**SPECS[name], batch_size=2, device="cpu")
    from brainharness.backbone import StimulusBatch

    bb2.ensure_ready()
    direct = np.concatenate([bb2.encode(StimulusBatch(stimuli, ids[i:i + 2]), bb2.layer) for i in range(0, 5, 2)])
    np.testing.assert_allclose(direct, first, rtol=1e-4, atol=1e-5)
