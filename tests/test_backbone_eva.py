"""The timm EVA-02 backbone with a tiny model built through timm's own ``create_model`` kwargs.

Weights are random (``weights: random-init``, seeded by the plugin's ``init_seed``), saved the
way timm users save them (``torch.save(model.state_dict())``, ``timm.models.save_for_hf``, a
Hugging Face cache snapshot) and loaded back through timm's own loader.
"""
import copy
import time

import numpy as np
import pytest
import torch

from conftest import tiny_config
from brainharness.backbone import StimulusBatch
from brainharness.data import Stimuli
from brainharness.errors import ConfigError, WeightsUnavailable
from brainharness.features import FeatureCache, cache_key

timm = pytest.importorskip("timm")

from brainharness.backbones.eva import DEFAULT_MODEL, Eva  # noqa: E402

# EVA-02 (rope, SwiGLU) at 32 px with 8 px patches → 4×4 = 16 patches + the class token; 4 blocks.
TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 4, "num_heads": 2}
WIDTH, TOKENS = 32, 1 + 16


def stimuli(n=12, size=48, width=None, seed=0):
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, (n, size, width or size, 3), dtype=np.uint8)
    return Stimuli(np.arange(n), lambda rows: imgs[rows], fingerprint=f"eva-test-{n}-{size}-{width}-{seed}")


STIM = stimuli()
IDS = STIM.ids


def enc(b, layer, ids=IDS, stim=STIM):
    return b.encode(StimulusBatch(stim, ids), layer)


def tiny_eva(**kw):
    return Eva(**{"weights": "random-init", "model_kwargs": TINY, **kw})


@pytest.fixture(scope="module")
def tiny():
    b = tiny_eva()
    b.ensure_ready()
    return b


def share(b, src):
    """Give ``b`` the already loaded model of ``src`` (same weights, other read-out)."""
    b._model, b._ready = src._model, True
    return b


def test_metadata_and_layers_before_loading():
    b = tiny_eva()
    assert b._model is None  # nothing loaded yet
    assert b.layers() == ["pooled", "blocks.0", "blocks.1", "blocks.2", "blocks.3"] and b.layer == "pooled"
    assert Eva.family == "eva" and Eva.modalities == ("image",) and "blocks" in Eva.layers_doc
    ident = b.identity()
    assert ident["weights"]["source"] == "random-init" and ident["init_seed"] == 0
    assert ident["model"] == DEFAULT_MODEL and ident["model_kwargs"] == TINY
    # the default: EVA-02 base (12 blocks), its timm tag as pretrained weights, nothing loaded
    d = Eva()
    assert d.spec.source == "pretrained" and d.spec.id == DEFAULT_MODEL and len(d.layers()) == 13
    assert d.weights_info()["hub"] == "timm/eva02_base_patch14_224.mim_in22k"
    assert d._model is None


def test_preprocessing_numbers_are_timms_resolved_data_config(tiny):
    # tiny: the tag's config with the input size the model takes (what timm resolves for it)
    model = timm.create_model(DEFAULT_MODEL, pretrained=False, pretrained_cfg_overlay={"input_size": (3, 32, 32)},
                              **TINY)
    expect = timm.data.resolve_model_data_config(model)
    got = tiny.identity()["preprocess"]
    assert got["mode"] == "tensor"
    for key in ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode"):
        assert np.array_equal(np.asarray(got[key], dtype=object), np.asarray(expect[key], dtype=object)), key
    assert timm.data.resolve_model_data_config(tiny.torch_model)["input_size"] == (3, 32, 32)
    # the default model: the numbers of timm's pretrained config for the tag, untouched
    cfg = timm.models.get_pretrained_cfg(DEFAULT_MODEL).to_dict()
    d = Eva().identity()["preprocess"]
    assert tuple(d["input_size"]) == cfg["input_size"] == (3, 224, 224)
    assert (tuple(d["mean"]), tuple(d["std"]), d["crop_pct"], d["interpolation"]) == \
        (tuple(cfg["mean"]), tuple(cfg["std"]), cfg["crop_pct"], cfg["interpolation"])


@pytest.mark.parametrize("shape", [(48, 48), (20, 20), (40, 60), (32, 32)])
def test_tensor_preprocessing_matches_timms_pil_transform(tiny, shape):
    from PIL import Image

    imgs = np.random.default_rng(1).integers(0, 256, (6, *shape, 3), dtype=np.uint8)
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(tiny.torch_model))
    ref = torch.stack([transform(Image.fromarray(im)) for im in imgs])
    got = tiny.pixels(imgs)
    assert got.shape == ref.shape == (6, 3, 32, 32)
    diff = (got - ref).abs()
    std = min(tiny.data_config["std"])
    assert float(diff.max()) <= 2 / 255 / std + 1e-5  # at most 2 levels of 8 bits, on white noise
    assert float((diff > 1e-5).float().mean()) < 0.01
    pil = tiny_eva(preprocess="pil")
    torch.testing.assert_close(share(pil, tiny).pixels(imgs), ref, rtol=0, atol=0)


def test_readout_shapes(tiny):
    n = len(IDS)
    expect = {"pooled": (n, WIDTH), "cls": (n, WIDTH), "mean": (n, WIDTH), "flatten": (n, TOKENS * WIDTH),
              "grid": (n, 2 * 2 * WIDTH)}
    outs = {}
    for readout, shape in expect.items():
        b = share(tiny_eva(readout=readout), tiny)
        outs[readout] = out = enc(b, "blocks.2")
        assert out.shape == shape and out.dtype == np.float32 and np.isfinite(out).all(), readout
        assert enc(b, "pooled").shape == (n, WIDTH)  # the pre-logits feature: the read-out does not apply
    # the flattened tokens are the class token then the patches
    tokens = outs["flatten"].reshape(n, TOKENS, WIDTH)
    np.testing.assert_allclose(outs["cls"], tokens[:, 0], rtol=1e-6)
    np.testing.assert_allclose(outs["pooled"], tokens[:, 0], rtol=1e-6)
    np.testing.assert_allclose(outs["mean"], tokens[:, 1:].mean(1), rtol=1e-5, atol=1e-6)
    grid = tokens[:, 1:].reshape(n, 4, 4, WIDTH).reshape(n, 2, 2, 2, 2, WIDTH).mean((2, 4))
    np.testing.assert_allclose(outs["grid"], grid.transpose(0, 3, 1, 2).reshape(n, -1), rtol=1e-5, atol=1e-6)
    # the blocks are timm's own intermediates, the pooled layer timm's pre-logits
    x = tiny.pixels(STIM.images(IDS))
    with torch.no_grad():
        ref = tiny.torch_model.forward_intermediates(x, indices=[2], output_fmt="NLC", intermediates_only=True)[0]
        pooled = tiny.torch_model.forward_head(tiny.torch_model.forward_features(x), pre_logits=True)
    np.testing.assert_allclose(tokens[:, 1:], ref.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(enc(tiny, "pooled"), pooled.numpy(), rtol=1e-5, atol=1e-6)


def test_deterministic_seeded_and_layers_differ(tiny):
    other = tiny_eva()  # a second, separately built random-init model
    for layer in ("pooled", "blocks.0", "blocks.3"):
        a = enc(tiny, layer)
        np.testing.assert_array_equal(a, enc(tiny, layer))
        np.testing.assert_array_equal(a, enc(other, layer))
    assert not np.allclose(enc(tiny, "blocks.0"), enc(tiny, "blocks.3"))
    assert not np.allclose(enc(tiny, "pooled"), enc(tiny_eva(init_seed=1), "pooled"))
    # batch composition does not change a stimulus's features
    np.testing.assert_allclose(enc(tiny, "blocks.1", IDS[:5]), enc(tiny, "blocks.1")[:5], rtol=1e-5, atol=1e-6)


def test_encode_layers_is_one_pass_equal_to_separate_calls(tiny):
    for readout in ("flatten",):  # all tokens: every other token read-out is a function of them
        b = share(tiny_eva(readout=readout), tiny)
        batch = StimulusBatch(STIM, IDS)
        for layers in (["pooled", "blocks.0", "blocks.2", "blocks.3"], ["blocks.3", "blocks.1"]):
            out = b.encode_layers(batch, layers)
            assert list(out) == layers
            for layer in layers:
                np.testing.assert_allclose(out[layer], enc(b, layer), rtol=1e-6, atol=1e-6)
    with pytest.raises(ConfigError, match="unknown layer"):
        tiny.encode_layers(StimulusBatch(STIM, IDS), ["blocks.4"])


def test_save_and_load_back_through_timms_loader(tiny, tmp_path):
    path = tmp_path / "tiny_eva.pt"
    torch.save(tiny.torch_model.state_dict(), path)
    loaded = Eva(weights=f"local:{path}", model_kwargs=TINY)
    info = loaded.weights_info()
    assert info["source"] == "local" and info["id"] == str(path) and len(info["digest"]) == 16
    loaded.ensure_ready()
    for readout in ("mean", "flatten"):
        a = share(tiny_eva(readout=readout), tiny)
        b = share(Eva(weights=f"local:{path}", model_kwargs=TINY, readout=readout), loaded)
        for layer in ("pooled", "blocks.1", "blocks.3"):
            np.testing.assert_array_equal(enc(a, layer), enc(b, layer), err_msg=f"{readout} {layer}")
    # a training checkpoint ({"state_dict": ...}, as timm's train script saves) loads the same way
    ckpt = tmp_path / "train.pth.tar"
    torch.save({"epoch": 3, "state_dict": tiny.torch_model.state_dict()}, ckpt)
    np.testing.assert_array_equal(enc(Eva(weights=f"local:{ckpt}", model_kwargs=TINY), "blocks.2"),
                                  enc(tiny, "blocks.2"))
    # timm's Hugging Face folder layout (config.json + model.safetensors)
    folder = tmp_path / "hf"
    timm.models.save_for_hf(tiny.torch_model, str(folder), safe_serialization=True)
    from_dir = Eva(weights=f"local:{folder}", model_kwargs=TINY)
    assert from_dir.local_file.endswith("model.safetensors")
    np.testing.assert_array_equal(enc(from_dir, "blocks.2"), enc(tiny, "blocks.2"))
    # a checkpoint of another architecture is a clear error, not a silent partial load
    wrong = Eva(weights=f"local:{path}", model_kwargs={**TINY, "depth": 5})
    with pytest.raises(ConfigError, match="cannot load checkpoint"):
        wrong.ensure_ready()


def test_pretrained_from_the_hugging_face_cache_without_network(tiny, tmp_path, monkeypatch):
    """A tag found in the HF cache loads through timm's loader with no network at all."""
    import safetensors.torch
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--timm--eva02_base_patch14_224.mim_in22k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    safetensors.torch.save_file(tiny.torch_model.state_dict(), repo / "snapshots" / commit / "model.safetensors")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    b = Eva(weights="pretrained", model_kwargs=TINY)
    info = b.weights_info()
    assert info["source"] == "pretrained" and info["id"] == DEFAULT_MODEL and info["revision"] == commit
    np.testing.assert_array_equal(enc(b, "blocks.1"), enc(tiny, "blocks.1"))


def test_pretrained_without_network_is_one_clear_line():
    b = Eva(weights="pretrained:mim_in22k")  # construction loads nothing
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailable) as err:
        b.ensure_ready()
    assert time.perf_counter() - start < 10
    msg = str(err.value)
    assert len(msg.splitlines()) == 1 and "local:" in msg and "random-init" in msg and DEFAULT_MODEL in msg


def test_bad_options_fail_at_construction():
    with pytest.raises(ConfigError, match="did you mean 'eva02_base_patch14_224'"):
        Eva(model="eva02_base_patch14_22")
    with pytest.raises(ConfigError, match="unknown timm EVA model"):
        Eva(model="vit_base_patch16_224")
    with pytest.raises(ConfigError, match="not a timm pretrained tag"):
        Eva(weights="pretrained:nope")
    with pytest.raises(ConfigError, match="not a timm pretrained tag"):
        Eva(model="eva02_base_patch14_224.nope")
    with pytest.raises(ConfigError, match="set model"):
        Eva(weights="pretrained:eva02_large_patch14_224.mim_in22k")
    with pytest.raises(ConfigError, match="unknown model_kwargs deth"):
        tiny_eva(model_kwargs={**TINY, "deth": 2})
    with pytest.raises(ConfigError, match="may not set pretrained"):
        tiny_eva(model_kwargs={**TINY, "pretrained": True})
    with pytest.raises(ConfigError, match="cannot build"):
        tiny_eva(model_kwargs={**TINY, "num_heads": 3})
    with pytest.raises(ConfigError, match="unknown layer 'blocks.4'"):
        tiny_eva(layer="blocks.4")
    with pytest.raises(ConfigError, match="preprocess"):
        tiny_eva(preprocess="opencv")
    with pytest.raises(ConfigError, match="backbone eva: unknown parameter 'pretrained'"):
        tiny_eva(pretrained="mim_in22k")
    with pytest.raises(ConfigError, match="no such local checkpoint"):
        tiny_eva(weights="local:/nonexistent/eva.pt")


def test_cache_key_follows_config_layer_and_readout():
    cache = FeatureCache("/nonexistent")

    def key(layer="blocks.1", **kw):
        b = tiny_eva(**{"readout": "mean", **kw})
        return cache_key(cache.key_parts(b, STIM, IDS, layer))

    deeper = copy.deepcopy(TINY)
    deeper["depth"] = 5
    base = key()
    assert key() == base
    assert len({base, key(model_kwargs=deeper), key(layer="blocks.0"), key(layer="pooled"), key(readout="grid"),
                key(init_seed=1), key(preprocess="pil")}) == 7


def test_runner_encoding(tmp_path):
    from brainharness.runner import Runner

    spec = {"name": "eva", "weights": "random-init", "model_kwargs": TINY, "layer": "blocks.2", "readout": "mean"}
    cfg = tiny_config(tmp_path, backbones=[spec])
    (rec,) = Runner(cfg, progress=False).run()
    assert rec["status"] == "complete" and rec["key"]["weights"] == "random-init"
    assert rec["backbone"]["weights"]["source"] == "random-init" and rec["backbone"]["layer"] == "blocks.2"
    assert np.isfinite(rec["scores"]["median_nc_r2"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_half_precision_matches_cpu(tiny):
    gpu = tiny_eva(device="cuda", readout="mean")
    assert gpu.precision() == "fp16" and gpu.identity()["precision"] == "fp16"
    assert tiny_eva(device="cuda", half=False).precision() == "fp32"
    images = STIM.images(IDS)
    diff = (gpu.pixels(images).cpu() - tiny.pixels(images)).abs()
    assert float(diff.max()) <= 2 / 255 / min(tiny.data_config["std"]) + 1e-4
    cpu = share(tiny_eva(readout="mean"), tiny)
    for layer, got in gpu.encode_layers(StimulusBatch(STIM, IDS), ["pooled", "blocks.3"]).items():
        ref = enc(cpu, layer)
        assert got.dtype == np.float32 and np.abs(got - ref).max() <= 0.02 * np.abs(ref).max() + 1e-3, layer
