"""The BLIP-2 backbone (transformers) with tiny models built from transformers' own config classes.

Weights are random (``weights: random-init``), saved with ``save_pretrained`` (model and
processor) and loaded back through the path users use (``weights: local:<dir>`` →
``from_pretrained(<dir>)``). Features and text embeddings are checked against the library's own
forward passes, captions against ``Blip2ForConditionalGeneration.generate``.
"""
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_config
from brainharness.backbone import StimulusBatch
from brainharness.data import Stimuli
from brainharness.errors import ConfigError, DataError, WeightsUnavailable
from brainharness.features import FeatureCache

pytest.importorskip("transformers")

from transformers import Blip2Config, Blip2QFormerConfig, Blip2VisionConfig, OPTConfig  # noqa: E402

from brainharness.backbones.blip2 import GENERATION_ID, RETRIEVAL_ID, Blip2  # noqa: E402

N_QUERY, WIDTH, PATCHES, EMBED = 4, 32, 16, 16  # 32 px images, 8 px patches → 4×4 patches


def tiny(variant: str = "generation") -> dict:
    """A tiny Blip2Config (as the dict a YAML config would hold), via transformers' config classes."""
    cfg = Blip2Config(
        vision_config=Blip2VisionConfig(hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, image_size=32, patch_size=8,
                                        initializer_range=0.02),
        qformer_config=Blip2QFormerConfig(hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=2, encoder_hidden_size=WIDTH, vocab_size=128,
                                          max_position_embeddings=64,
                                          use_qformer_text_input=variant == "retrieval"),
        text_config=OPTConfig(vocab_size=128, hidden_size=24, word_embed_proj_dim=24, ffn_dim=48,
                              num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=64),
        num_query_tokens=N_QUERY, image_text_hidden_size=EMBED)
    return cfg.to_dict()


# The same architecture written by hand, as configs/demo.yaml would (defaults left out).
HAND = {"vision_config": {"hidden_size": WIDTH, "intermediate_size": 64, "num_hidden_layers": 2,
                          "num_attention_heads": 2, "image_size": 32, "patch_size": 8, "initializer_range": 0.02},
        "qformer_config": {"hidden_size": WIDTH, "intermediate_size": 64, "num_hidden_layers": 2,
                           "num_attention_heads": 2, "vocab_size": 128, "max_position_embeddings": 64},
        "text_config": {"model_type": "opt", "vocab_size": 128, "hidden_size": 24, "word_embed_proj_dim": 24,
                        "ffn_dim": 48, "num_hidden_layers": 2, "num_attention_heads": 2,
                        "max_position_embeddings": 64},
        "num_query_tokens": N_QUERY, "image_text_hidden_size": EMBED}
TEXTS = ["a red square on the left", "A face in the centre.", "two houses, one tree", ""]
GREEDY = dict(max_new_tokens=6, do_sample=False, num_beams=1)


def stimuli(n=10, size=48):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return Stimuli(np.arange(n), lambda rows: imgs[rows], fingerprint=f"blip2-test-{n}-{size}")


STIM = stimuli()
IDS = STIM.ids


def enc(b, layer, ids=IDS):
    return b.encode(StimulusBatch(STIM, ids), layer)


def shake(b):
    """Larger random weight matrices (std 0.3), so that the tiny model's query outputs differ
    between images and greedy decoding of its tiny OPT says different things for them."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in b.model.parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


@pytest.fixture(scope="module")
def gen():
    b = Blip2(weights="random-init", config=tiny("generation"), batch_size=4)
    b.ensure_ready()
    shake(b)
    return b


@pytest.fixture(scope="module")
def ret():
    b = Blip2(weights="random-init", config=tiny("retrieval"), variant="retrieval", batch_size=4)
    b.ensure_ready()
    return b


@pytest.fixture(scope="module")
def saved(gen, ret, tmp_path_factory):
    """Both tiny models saved with save_pretrained and reloaded as ``local:<dir>``."""
    root = tmp_path_factory.mktemp("blip2")
    out = {}
    for name, b in (("generation", gen), ("retrieval", ret)):
        path = b.save_pretrained(root / name)
        assert (path / "config.json").is_file() and (path / "processor_config.json").is_file()
        local = Blip2(weights=f"local:{path}", batch_size=4)
        assert local._model is None and local.variant == name  # variant read from config.json
        out[name] = local
    return out


def test_metadata_and_layers_before_loading():
    b = Blip2(weights="random-init", config=tiny())
    assert b._model is None  # nothing loaded yet
    assert b.layers() == ["qformer", "vision", "language_projection"] and b.layer == "qformer"
    assert b.readout == "flatten" and b.variant == "generation"
    r = Blip2(weights="random-init", config=tiny("retrieval"), variant="retrieval")
    assert r.layers() == ["qformer", "vision", "image_embeds"]
    assert Blip2.family == "blip2" and Blip2.modalities == ("image", "text") and "qformer" in Blip2.layers_doc
    ident = b.identity()
    assert ident["weights"]["source"] == "random-init" and ident["init_seed"] == 0 and ident["variant"] == "generation"
    pp = ident["preprocess"]  # the library's BlipImageProcessor with the config's image size
    assert pp["class"] == "BlipImageProcessor" and pp["size"] == {"height": 32, "width": 32}
    assert len(pp["image_mean"]) == 3 and len(pp["image_std"]) == 3 and pp["resample"] is not None
    assert ident["config"]["num_query_tokens"] == N_QUERY and ident["config"]["image_token_index"] is not None
    assert b._model is None  # the identity did not load the weights
    # the hand-written dict and transformers' config classes give the same architecture
    assert Blip2(weights="random-init", config=HAND).identity()["config"] == ident["config"]
    # defaults: hub ids and variants
    assert Blip2().model_id == GENERATION_ID and Blip2().variant == "generation"
    assert Blip2(variant="retrieval").model_id == RETRIEVAL_ID
    assert Blip2(weights=f"pretrained:{RETRIEVAL_ID}@abc").variant == "retrieval"
    assert Blip2(model=RETRIEVAL_ID).layers()[-1] == "image_embeds"
    info = Blip2(weights=f"pretrained:{RETRIEVAL_ID}@abc").weights_info()
    assert info["source"] == "pretrained" and info["id"] == RETRIEVAL_ID and info["revision"] == "abc"


@pytest.mark.parametrize("kw, match", [
    (dict(variant="itm"), "variant"),
    (dict(weights="pretrained", config={}), "random-init"),
    (dict(model=GENERATION_ID, weights=f"pretrained:{RETRIEVAL_ID}"), "different"),
    (dict(weights="random-init", config={"num_query_tokens": "many"}), "bad config"),
    (dict(weights="random-init", config={"num_query_token": 4}), "did you mean 'num_query_tokens'"),
    (dict(weights="random-init", config={"vision_config": {"hiden_size": 8}}), "config.vision_config.*hiden_size"),
    (dict(weights="random-init", config=[1, 2]), "mapping"),
    (dict(weights="random-init", config=tiny(), layer="image_embeds"), "unknown layer"),
    (dict(weights="random-init", config=tiny(), readout="sum"), "readout"),
    (dict(weights="random-init", config=tiny(), colour=1), "backbone blip2: unknown parameter 'colour'"),
    (dict(weights="random-init", init_seed="0"), "init_seed"),
])
def test_bad_options_fail_at_construction(kw, match):
    with pytest.raises(ConfigError, match=match):
        Blip2(**kw)


def test_bad_random_init_config_and_checkpoint(tmp_path):
    small = {**HAND, "text_config": {**HAND["text_config"], "vocab_size": 40}}
    with pytest.raises(ConfigError, match="vocab_size"):
        Blip2(weights="random-init", config=small).identity()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="save_pretrained"):
        Blip2(weights=f"local:{tmp_path / 'empty'}")


def test_shapes_and_readouts(gen, ret):
    n = len(IDS)
    assert enc(gen, "qformer").shape == (n, N_QUERY * WIDTH)
    assert enc(gen, "language_projection").shape == (n, N_QUERY * 24)
    assert enc(gen, "vision").shape == (n, (1 + PATCHES) * WIDTH)
    emb = enc(ret, "image_embeds").reshape(n, N_QUERY, EMBED)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1, rtol=1e-5)  # normalised per query
    q = enc(gen, "qformer").reshape(n, N_QUERY, WIDTH)
    for readout, shapes in {"mean": (WIDTH, WIDTH), "pooled": (WIDTH, WIDTH), "cls": (WIDTH, WIDTH),
                            "grid": (None, 4 * WIDTH)}.items():
        b = Blip2(weights="random-init", config=tiny(), readout=readout)
        b._model, b._processor, b._ready = gen._model, gen._processor, True
        for layer, shape in zip(("qformer", "vision"), shapes):
            if shape is None:
                with pytest.raises(ConfigError, match="grid"):
                    enc(b, layer)
                continue
            out = enc(b, layer)
            assert out.shape == (n, shape) and out.dtype == np.float32 and np.isfinite(out).all(), (readout, layer)
        if readout == "mean":
            np.testing.assert_allclose(enc(b, "qformer"), q.mean(1), rtol=1e-5, atol=1e-6)
        if readout == "pooled":  # vision: the library's pooler_output; queries: the first one
            with torch.no_grad():
                pooled = gen.model.vision_model(pixel_values=gen.pixels(STIM.images(IDS))).pooler_output
            np.testing.assert_allclose(enc(b, "vision"), pooled.numpy(), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(enc(b, "qformer"), q[:, 0], rtol=1e-5, atol=1e-6)
    with pytest.raises(DataError, match="uint8"):
        gen.pixels(np.zeros((2, 32, 32, 3), dtype=np.float32))


def test_features_match_the_library(gen, ret):
    imgs = STIM.images(IDS[:4])
    with torch.no_grad():
        px = gen.pixels(imgs)
        lib = gen.model.get_image_features(pixel_values=px, return_dict=True)
        np.testing.assert_allclose(enc(gen, "qformer", IDS[:4]),
                                   lib.qformer_outputs.last_hidden_state.flatten(1).numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(enc(gen, "language_projection", IDS[:4]),
                                   lib.pooler_output.flatten(1).numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(enc(gen, "vision", IDS[:4]), lib.last_hidden_state.flatten(1).numpy(),
                                   rtol=1e-5, atol=1e-6)
        # retrieval: Blip2ForImageTextRetrieval's own image_embeds and text_embeds
        texts = TEXTS[:4]
        inputs = ret.processor(images=list(imgs), text=texts, padding=True, return_tensors="pt")  # as users call it
        out = ret.model(**inputs)
    np.testing.assert_allclose(enc(ret, "image_embeds", IDS[:4]), out.image_embeds.flatten(1).numpy(),
                               rtol=1e-5, atol=1e-6)
    text = ret.encode_text(texts)
    assert text.shape == (4, EMBED) and text.dtype == np.float32
    np.testing.assert_allclose(text, out.text_embeds.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1, rtol=1e-5)
    # one at a time (no padding) gives the same embeddings as the padded batch
    np.testing.assert_allclose(np.concatenate([ret.encode_text([t]) for t in texts]), text, rtol=1e-4, atol=1e-5)
    assert ret.encode_text([]).shape == (0, EMBED)
    with pytest.raises(ConfigError, match="retrieval variant.*blip2-itm-vit-g"):
        gen.encode_text(["a cat"])


def test_deterministic_and_batch_independent(gen):
    a = enc(gen, "qformer")
    assert np.array_equal(a, enc(gen, "qformer"))
    one = Blip2(weights="random-init", config=tiny(), batch_size=10)
    ref = enc(one, "qformer")
    q = ref.reshape(len(IDS), N_QUERY, WIDTH)
    assert not np.allclose(q[:, 0], q[:, 1])  # random-init draws the queries (the library zeroes them)
    torch.manual_seed(123)  # the global RNG does not matter: init_seed does
    two = Blip2(weights="random-init", config=tiny(), batch_size=3)
    chunked = np.concatenate([enc(two, "qformer", IDS[i:i + 3]) for i in range(0, len(IDS), 3)])
    np.testing.assert_allclose(chunked, ref, rtol=1e-5, atol=1e-6)
    assert one.identity() == two.identity()
    other = Blip2(weights="random-init", config=tiny(), init_seed=1)
    assert not np.allclose(enc(other, "qformer"), ref)
    assert other.identity() != one.identity()


def test_local_checkpoint_roundtrip_is_identical(gen, ret, saved):
    lg, lr = saved["generation"], saved["retrieval"]
    for layer in gen.layers():
        assert np.array_equal(enc(lg, layer), enc(gen, layer)), layer
    for layer in ret.layers():
        assert np.array_equal(enc(lr, layer), enc(ret, layer)), layer
    assert np.array_equal(lr.encode_text(TEXTS), ret.encode_text(TEXTS))
    q = enc(gen, "qformer")
    assert lg.generate_from_query_embeds(q, **GREEDY) == gen.generate_from_query_embeds(q, **GREEDY)
    # identity: same preprocessing, weights recorded as a local checkpoint with a content digest
    assert lg.preprocess() == gen.preprocess()
    info = lg.weights_info()
    assert info["source"] == "local" and len(info["digest"]) == 16 and info["variant"] == "generation"
    assert lg.identity()["weights"]["digest"] == info["digest"]
    assert lg.tokenizer("a red square")["input_ids"] == gen.tokenizer("a red square")["input_ids"]
    with pytest.raises(ConfigError, match="not the retrieval variant"):
        Blip2(weights=f"local:{lg.local_dir}", variant="retrieval")


def test_generate_from_query_embeds_matches_library_generate(gen):
    ids = IDS[:5]
    q = enc(gen, "qformer", ids)  # flattened (5, Q·H), as ridge predictions come
    caps = gen.generate_from_query_embeds(q, **GREEDY)
    assert isinstance(caps, list) and len(caps) == 5 and all(isinstance(c, str) for c in caps)
    assert any(caps) and len(set(caps)) > 1, caps  # the shaken tiny model says different things
    assert gen.generate_from_query_embeds(q, **GREEDY) == caps  # greedy: deterministic
    # (B, Q, H) torch input gives the same
    assert gen.generate_from_query_embeds(torch.as_tensor(q).reshape(5, N_QUERY, WIDTH), **GREEDY) == caps
    # the library's own generate from the images (its prompt = image placeholders + BOS)
    with torch.no_grad():
        out = gen.model.generate(pixel_values=gen.pixels(STIM.images(ids)), **GREEDY)
    lib = [t.strip() for t in gen.processor.batch_decode(out, skip_special_tokens=True)]
    assert caps == lib
    # a prompt goes after the queries, as the processor puts it
    prompted = gen.generate_from_query_embeds(q, prompt="a photo of", **GREEDY)
    p = gen.processor(images=list(STIM.images(ids)), text=["a photo of"] * 5, return_tensors="pt")
    with torch.no_grad():
        out = gen.model.generate(pixel_values=p["pixel_values"], input_ids=p["input_ids"],
                                 attention_mask=p["attention_mask"], **GREEDY)
    n_prompt = p["input_ids"].shape[1]
    assert prompted == [t.strip() for t in gen.tokenizer.batch_decode(out[:, n_prompt:], skip_special_tokens=True)]
    with pytest.raises(DataError, match="query embeddings"):
        gen.generate_from_query_embeds(np.zeros((2, 7)))
    with pytest.raises(DataError, match="NaN"):
        gen.generate_from_query_embeds(np.full((1, N_QUERY, WIDTH), np.nan, dtype=np.float32))


def test_retrieval_variant_has_no_generation(ret):
    with pytest.raises(ConfigError, match="generation variant"):
        ret.generate_from_query_embeds(np.zeros((1, N_QUERY, WIDTH), dtype=np.float32))


@pytest.mark.parametrize("weights", ["pretrained", f"pretrained:{RETRIEVAL_ID}@main"])
def test_pretrained_offline_fails_fast_with_one_line(weights):
    b = Blip2(weights=weights)  # construction needs nothing from the hub
    start = time.perf_counter()
    for call in (b.identity, b.ensure_ready):
        with pytest.raises(WeightsUnavailable) as err:
            call()
        msg = str(err.value)
        assert "\n" not in msg and "local:" in msg and "random-init" in msg and b.spec.id in msg
    assert time.perf_counter() - start < 10
    assert b._model is None


def test_pretrained_loads_from_the_hub_cache_offline(ret, saved):
    """``pretrained:<id>`` is served from the Hugging Face cache without the network."""
    import shutil

    from huggingface_hub import constants

    repo, commit = "brainharness-test/tiny-blip2-itm", "0123456789abcdef0123456789abcdef01234567"
    root = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
    shutil.copytree(saved["retrieval"].local_dir, root / "snapshots" / commit, dirs_exist_ok=True)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    b = Blip2(weights=f"pretrained:{repo}", batch_size=4)
    assert b.variant == "retrieval"  # "itm" in the hub id
    info = b.weights_info()
    assert info["source"] == "pretrained" and info["id"] == repo and info["commit"] == commit
    assert b.identity()["preprocess"] == ret.preprocess()
    assert np.array_equal(enc(b, "image_embeds"), enc(ret, "image_embeds"))
    assert np.array_equal(b.encode_text(TEXTS), ret.encode_text(TEXTS))


def test_runner_encoding_and_retrieval(tmp_path):
    from brainharness.runner import Runner

    bspec = {"name": "blip2", "weights": "random-init", "config": HAND, "layer": "qformer", "readout": "flatten",
             "batch_size": 64}
    cfg = tiny_config(tmp_path, backbones=[bspec],
                      tasks=[{"name": "encoding"}, {"name": "retrieval", "n_trials": 5}])
    runner = Runner(cfg, progress=False)
    records = {r["key"]["task"]: r for r in runner.run()}
    assert set(records) == {"encoding", "retrieval"}
    for rec in records.values():
        assert rec["status"] == "complete" and rec["key"]["weights"] == "random-init"
        assert rec["backbone"]["weights"]["source"] == "random-init" and rec["backbone"]["variant"] == "generation"
        assert all(np.isfinite(v) for v in rec["scores"].values() if isinstance(v, (int, float)))
    assert np.isfinite(records["encoding"]["scores"]["median_nc_r2"])
    rows = {r["direction"]: r for r in records["retrieval"]["tables"]["retrieval"]}
    assert set(rows) == {"brain→image", "image→brain"} and np.isfinite(rows["brain→image"]["mean"])
    assert records["retrieval"]["scores"]["embedding_dim"] == N_QUERY * WIDTH
    # the features were cached under a key that holds the preprocessing and the resolved config
    b = runner.backbone(bspec)
    parts = FeatureCache(runner.cache_dir).key_parts(b, runner.dataset.stimuli, IDS, "qformer")
    assert parts["backbone"]["preprocess"]["size"] == {"height": 32, "width": 32}
    assert parts["backbone"]["config"]["num_query_tokens"] == N_QUERY and parts["readout"] == "flatten"
