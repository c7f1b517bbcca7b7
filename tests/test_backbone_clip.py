"""The open_clip backbone with a tiny model built from open_clip's own config format.

Weights are random (``weights: random-init``, seeded by the plugin's ``init_seed``), saved the
way open_clip users save them and loaded back through the same loader users call
(``open_clip.create_model_and_transforms(model, pretrained=<file>)`` or ``local-dir:``).
"""
import copy
import json
import time

import numpy as np
import pytest
import torch

from conftest import tiny_config
from brainharness.backbone import StimulusBatch
from brainharness.data import Stimuli
from brainharness.errors import ConfigError, WeightsUnavailable
from brainharness.features import FeatureCache, cache_key

pytest.importorskip("open_clip")

from brainharness.backbones.clip import Clip  # noqa: E402

# ViT tower: 32 px images, 8 px patches → 4×4 = 16 patches + the class token; 2 blocks.
TINY = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "head_width": 16, "layers": 2},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
TEXTS = ["a red square on the left", "a face in the centre", "a photo of a house"]


def stimuli(n=12, size=48):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return Stimuli(np.arange(n), lambda rows: imgs[rows], fingerprint=f"clip-test-{n}-{size}")


STIM = stimuli()
IDS = STIM.ids


def enc(b, layer, ids=IDS):
    return b.encode(StimulusBatch(STIM, ids), layer)


@pytest.fixture(scope="module")
def tiny():
    b = Clip(weights="random-init", model_config=TINY)
    b.ensure_ready()
    return b


def test_metadata_and_layers_before_loading():
    b = Clip(weights="random-init", model_config=TINY)
    assert b._model is None  # nothing loaded yet
    assert b.layers() == ["embedding", "blocks.0", "blocks.1"] and b.layer == "embedding"
    assert Clip.family == "clip" and Clip.modalities == ("image", "text") and "blocks" in Clip.layers_doc
    ident = b.identity()
    assert ident["weights"]["source"] == "random-init" and ident["init_seed"] == 0
    assert ident["preprocess"]["size"] == [32, 32] and len(ident["preprocess"]["mean"]) == 3
    assert ident["preprocess"]["interpolation"] and ident["preprocess"]["resize_mode"]
    # the default model: ViT-B-32 with open_clip's openai tag (QuickGELU, as it was trained)
    d = Clip()
    assert d.spec.id == "openai" and d.quick_gelu and len(d.layers()) == 13
    assert d.identity()["preprocess"]["size"] == [224, 224]


def test_readout_shapes(tiny):
    n, width, tokens = len(IDS), 32, 1 + 16
    assert enc(tiny, "embedding").shape == (n, 24)
    expect = {"pooled": (n, width), "cls": (n, width), "mean": (n, width), "flatten": (n, tokens * width),
              "grid": (n, 2 * 2 * width)}
    for readout, shape in expect.items():
        b = Clip(weights="random-init", model_config=TINY, readout=readout)
        b._model, b._transform, b._ready = tiny._model, tiny._transform, True
        out = enc(b, "blocks.1")
        assert out.shape == shape and out.dtype == np.float32 and np.isfinite(out).all(), readout
    # the flattened tokens are the class token then the patches: mean/pooled agree with them
    b = Clip(weights="random-init", model_config=TINY, readout="flatten")
    b._model, b._transform, b._ready = tiny._model, tiny._transform, True
    flat = enc(b, "blocks.1").reshape(n, tokens, width)
    tiny.readout = "mean"
    try:
        np.testing.assert_allclose(enc(tiny, "blocks.1"), flat[:, 1:].mean(1), rtol=1e-5, atol=1e-6)
    finally:
        tiny.readout = "pooled"
    np.testing.assert_allclose(enc(tiny, "blocks.1"), flat[:, 0], rtol=1e-5, atol=1e-6)


def test_deterministic_and_layers_differ(tiny):
    a, b = enc(tiny, "embedding"), enc(tiny, "embedding")
    np.testing.assert_array_equal(a, b)
    # batching does not change the numbers
    np.testing.assert_allclose(np.concatenate([enc(tiny, "embedding", IDS[:5]), enc(tiny, "embedding", IDS[5:])]),
                               a, rtol=1e-5, atol=1e-6)
    b0, b1 = enc(tiny, "blocks.0"), enc(tiny, "blocks.1")
    assert not np.allclose(b0, b1) and not np.allclose(b1[:, :24], a)
    assert not np.allclose(a[0], a[1])  # different images, different features


def test_random_init_is_seeded_by_the_plugin():
    torch.manual_seed(456)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = Clip(weights="random-init", model_config=TINY).torch_model.state_dict()
    torch.manual_seed(456)  # the runner's global seed does not matter: the plugin seeds a forked RNG
    b = Clip(weights="random-init", model_config=TINY).torch_model.state_dict()
    assert torch.equal(torch.rand(1), expected_next)  # ... and leaves the global RNG where it was
    c = Clip(weights="random-init", model_config=TINY, init_seed=1).torch_model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["visual.conv1.weight"], c["visual.conv1.weight"])


def test_save_and_load_back_through_the_user_loading_path(tiny, tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(tiny.torch_model.state_dict(), path)
    local = Clip(weights=f"local:{path}", model_config=TINY, readout="mean")
    info = local.weights_info()
    assert info["source"] == "local" and info["id"] == str(path) and info["digest"]
    tiny.readout = "mean"
    try:
        for layer in ("embedding", "blocks.1"):
            np.testing.assert_array_equal(enc(local, layer), enc(tiny, layer))
    finally:
        tiny.readout = "pooled"
    np.testing.assert_array_equal(local.encode_text(TEXTS), tiny.encode_text(TEXTS))
    # an open_clip training checkpoint ({"epoch", "state_dict": {"module.…"}}) loads the same
    ckpt = tmp_path / "epoch_1.pt"
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in tiny.torch_model.state_dict().items()}}, ckpt)
    np.testing.assert_array_equal(enc(Clip(weights=f"local:{ckpt}", model_config=TINY), "embedding"),
                                  enc(tiny, "embedding"))
    # a checkpoint of another architecture is a clear config error
    wider = copy.deepcopy(TINY)
    wider["vision_cfg"]["width"] = 48
    with pytest.raises(ConfigError, match="cannot load checkpoint"):
        Clip(weights=f"local:{path}", model_config=wider).ensure_ready()


def test_open_clip_local_dir_format(tiny, tmp_path):
    from safetensors.torch import save_file

    folder = tmp_path / "tiny-clip"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in tiny.torch_model.state_dict().items()},
              folder / "open_clip_model.safetensors")
    pp = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bilinear", "resize_mode": "squash"}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY, "preprocess_cfg": pp}))
    b = Clip(weights=f"local:{folder}")
    assert b.layers() == tiny.layers()
    assert b.identity()["preprocess"] == {**tiny.identity()["preprocess"], **pp}
    out = enc(b, "embedding")  # same weights, the folder's own preprocessing
    assert out.shape == (len(IDS), 24) and not np.allclose(out, enc(tiny, "embedding"))
    np.testing.assert_array_equal(b.encode_text(TEXTS), tiny.encode_text(TEXTS))
    with pytest.raises(ConfigError, match="own model config"):
        Clip(weights=f"local:{folder}", model_config=TINY)


def test_text_embeddings(tiny):
    t = tiny.encode_text(TEXTS)
    assert t.shape == (3, 24) and t.dtype == np.float32 and np.isfinite(t).all()
    assert not np.allclose(np.linalg.norm(t, axis=1), 1.0)  # unnormalised, as documented
    assert not np.allclose(t[0], t[1])
    np.testing.assert_array_equal(t, tiny.encode_text(TEXTS))
    assert tiny.encode_text([]).shape == (0, 24)


def test_pretrained_without_network_is_one_clear_line():
    b = Clip(model="ViT-B-32", weights="pretrained:openai")  # construction loads nothing
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailable) as err:
        b.ensure_ready()
    assert time.perf_counter() - start < 10
    msg = str(err.value)
    assert len(msg.splitlines()) == 1 and "local:" in msg and "random-init" in msg and "openai" in msg


def test_bad_options_fail_at_construction():
    with pytest.raises(ConfigError, match="did you mean 'ViT-B-32'"):
        Clip(model="ViT-B-3")
    with pytest.raises(ConfigError, match="not an open_clip pretrained tag"):
        Clip(weights="pretrained:nope")
    with pytest.raises(ConfigError, match="no open_clip pretrained tags"):
        Clip(model_config=TINY)
    with pytest.raises(ConfigError, match="vision_cfg"):
        Clip(weights="random-init", model_config={**TINY, "vision_cfg": {"widht": 3}})
    with pytest.raises(ConfigError, match="unknown layer 'blocks.2'"):
        Clip(weights="random-init", model_config=TINY, layer="blocks.2")
    with pytest.raises(ConfigError, match="backbone clip: unknown parameter 'pretrained'"):
        Clip(weights="random-init", model_config=TINY, pretrained="openai")


def test_cache_key_follows_config_layer_and_readout():
    cache = FeatureCache("/nonexistent")

    def key(layer="blocks.1", **kw):
        b = Clip(weights="random-init", **{"model_config": TINY, "readout": "mean", **kw})
        return cache_key(cache.key_parts(b, STIM, IDS, layer))

    deeper = copy.deepcopy(TINY)
    deeper["vision_cfg"]["layers"] = 3
    base = key()
    assert key() == base
    assert len({base, key(model_config=deeper), key(layer="blocks.0"), key(layer="embedding"),
                key(readout="grid"), key(init_seed=1)}) == 6


def test_runner_encoding_and_retrieval(tmp_path):
    from brainharness.runner import Runner

    spec = {"name": "clip", "weights": "random-init", "model_config": TINY, "layer": "blocks.1", "readout": "mean"}
    cfg = tiny_config(tmp_path, backbones=[spec],
                      tasks=[{"name": "encoding"}, {"name": "retrieval", "layer": "embedding", "n_trials": 5}])
    records = {r["key"]["task"]: r for r in Runner(cfg, progress=False).run()}
    enc_rec, ret_rec = records["encoding"], records["retrieval"]
    for rec in (enc_rec, ret_rec):
        assert rec["status"] == "complete" and rec["key"]["weights"] == "random-init"
        assert rec["backbone"]["weights"]["source"] == "random-init"
    assert enc_rec["backbone"]["layer"] == "blocks.1" and np.isfinite(enc_rec["scores"]["median_nc_r2"])
    assert set(enc_rec["features"]) == {"blocks.1"} and set(ret_rec["features"]) == {"embedding"}
    assert ret_rec["scores"]["embedding_dim"] == 24 and 0 <= ret_rec["scores"]["brain→image"] <= 1


def test_encode_layers_is_one_pass_with_the_same_numbers(tiny):
    many = tiny.encode_layers(StimulusBatch(STIM, IDS), ["blocks.1", "embedding", "blocks.0"])
    assert list(many) == ["blocks.1", "embedding", "blocks.0"]
    for layer, feats in many.items():
        np.testing.assert_array_equal(feats, enc(tiny, layer))
