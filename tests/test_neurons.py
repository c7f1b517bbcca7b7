"""Seed 002's unit analysis (tasks/neurons_core.py) on a tiny random OPT, and the captioning task's rows."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from brainharness.tasks import neurons_core as nc  # noqa: E402

LAYERS, POSITIONS = [0, 1, 2], range(5)


@pytest.fixture(scope="module")
def tiny_lm():
    cfg = transformers.OPTConfig(vocab_size=64, hidden_size=32, word_embed_proj_dim=32, ffn_dim=64,
                                 num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=32, dropout=0.0,
                                 attention_dropout=0.0, init_std=0.15)
    torch.manual_seed(0)
    lm = transformers.OPTForCausalLM(cfg).eval().requires_grad_(False)
    embeds = torch.randn(4, 6, 32, generator=torch.Generator().manual_seed(1))
    return lm, embeds


def test_attribution_matches_single_unit_ablation_to_first_order(tiny_lm):
    lm, embeds = tiny_lm
    g, c, p0 = nc.attribution(lm, embeds, LAYERS, POSITIONS)
    assert g.shape == (4, 3 * 64) and np.abs(g).max() > 0
    base = nc.token_probability(lm, embeds, LAYERS, POSITIONS, c, logit=True)
    assert np.allclose(nc.token_probability(lm, embeds, LAYERS, POSITIONS, c), p0, atol=1e-6)
    g_all, dy_all = [], []
    for i in range(4):
        for u in nc.top_units(np.abs(g[i:i + 1]), 6)[0]:  # the units with the largest |g| of image i
            units = [[] for _ in range(4)]
            units[i] = [u]
            dy = nc.token_probability(lm, embeds, LAYERS, POSITIONS, c, units, logit=True)[i] - base[i]
            g_all.append(g[i, u])
            dy_all.append(dy)
    g_all, dy_all = np.array(g_all), np.array(dy_all)
    # zeroing unit k changes y^c by ≈ −g_k: same sign, strongly correlated, close in size
    assert np.mean(np.sign(dy_all) == -np.sign(g_all)) >= 0.9
    assert np.corrcoef(dy_all, -g_all)[0, 1] > 0.9
    assert np.median(np.abs(dy_all + g_all) / np.abs(g_all)) < 0.3


def test_ablating_top_units_lowers_p_more_than_random(tiny_lm):
    lm, embeds = tiny_lm
    g, c, p0 = nc.attribution(lm, embeds, LAYERS, POSITIONS)
    k, n = 16, len(c)
    top = nc.top_units(g, k)
    p_top = nc.token_probability(lm, embeds, LAYERS, POSITIONS, c, top) / p0
    rng = np.random.default_rng(0)
    p_rand = np.mean([nc.token_probability(lm, embeds, LAYERS, POSITIONS, c,
                                           [rng.choice(g.shape[1], k, replace=False) for _ in range(n)]) / p0
                      for _ in range(5)], axis=0)
    assert p_top.mean() < p_rand.mean() - 0.05
    assert np.all(p_top < 1.0)


def test_decode_units_reads_the_output_weights_through_the_unembedding(tiny_lm):
    lm, _ = tiny_lm
    with torch.no_grad():
        w = lm.model.decoder.layers[1].fc2.weight[:, 7] @ lm.get_output_embeddings().weight.T
    ids = nc.decode_units(lm, LAYERS, [64 + 7], 5)  # flat index: layer slot 1, unit 7
    assert ids.tolist() == [w.topk(5).indices.tolist()]


def test_overlap_and_rank_correlation():
    a = np.array([[3.0, 2.0, 1.0, 0.0]])
    assert nc.overlap(nc.top_units(a, 2), nc.top_units(a[:, ::-1], 2)).tolist() == [0.0]
    assert nc.rank_correlation(a, a).tolist() == [1.0] and nc.rank_correlation(a, -a).tolist() == [-1.0]


def test_captioning_task_rows(tmp_path):
    from conftest import tiny_config

    from brainharness.config import load_config
    from brainharness.runner import Runner
    from brainharness.tasks.captioning_task import TINY_CAPTIONER

    cfg = load_config(tiny_config(tmp_path, dataset={"name": "synthetic", "n_train": 200, "n_test": 40,
                                                     "n_voxels": 120, "image_size": 32, "seed": 4},
                                  backbones=[{"name": "blip2-synthetic", **TINY_CAPTIONER}],
                                  tasks=[{"name": "captioning", "caption_metrics": ["rouge1"], "max_new_tokens": 5,
                                          "num_threads": 1}]))
    (rec,) = Runner(cfg, progress=False).run()
    rows = {r["system"]: r for r in rec["tables"]["captioning"]}
    assert list(rows) == ["brain (stage 1)", "nearest-neighbour", "true image", "shuffled brain"]
    assert rec["scores"]["rouge1"] == rows["brain (stage 1)"]["rouge1"]
    assert rows["shuffled brain"]["brain_model"] == "brain (stage 1)"
    assert all(0 <= r["rouge1"] <= 1 and r["n_images"] == 40 for r in rows.values())


def test_neurons_stage2_prefix_beside_stage1(tmp_path):
    from conftest import tiny_config

    from brainharness.config import load_config
    from brainharness.leaderboard.tables import build_tables
    from brainharness.runner import Runner
    from brainharness.tasks.captioning_task import TINY_CAPTIONER, TINY_RETRIEVAL
    from brainharness.tasks.neurons import NeuronsTask

    example = {k: v for k, v in NeuronsTask.example.items() if k != "backbone"}
    cfg = load_config(tiny_config(tmp_path, dataset={"name": "synthetic", "n_train": 200, "n_test": 40,
                                                     "n_voxels": 120, "image_size": 32, "seed": 4},
                                  backbones=[{"name": "blip2-synthetic", **TINY_CAPTIONER}],
                                  tasks=[{"name": "neurons", **example, "stage2": True,
                                          "retrieval_backbone": TINY_RETRIEVAL, "max_epochs": 2, "patience": 2,
                                          "select_on": "brain_text", "lr": 1e-3, "stage2_batch_size": 16}]))
    (rec,) = Runner(cfg, progress=False).run()
    s, tables = rec["scores"], rec["tables"]
    assert rec["details"]["stage2_best_epoch"] == 2  # trained: not the stage-1 ridge
    assert rec["details"]["stage2_query_r2"] != rec["details"]["stage1_query_r2"]
    curves = {(r["prefix"], r["units"], r["k"]) for r in tables["ablation"] if r["layers"] == "all"}
    for units in ("top by g", "random", "image's top units"):
        assert {("brain (stage 2)", units, k) for k in example["k_grid"]} <= curves
    pairs = [r["pair"] for r in tables["comparison"] if r["layers"] == "all"]
    assert pairs == ["brain (stage 1) vs image", "shuffled brain vs image", "brain (stage 2) vs image",
                     "shuffled brain (stage 2) vs image"]
    assert {r["prefix"] for r in tables["semantics"]} == {"image", "brain (stage 1)", "brain (stage 2)"}
    # every stage-2 figure is reported, and the stage-2 prefix drives other attributions than stage 1's
    assert set(NeuronsTask.scores) | {"overlap"} == set(s)
    # (the tiny captioner's 1-layer language model ranks its 64 units alike for both prefixes; p(c) after ablation
    # differs in the 5th decimal — equal only if the stage-2 rows were computed from the stage-1 prefix)
    assert s["drop_brain_stage2"] != s["drop_brain"] and s["drop_transfer_stage2"] != s["drop_transfer"]
    assert all(0 <= s[k] <= 1 for k in ("overlap_stage2", "overlap_shuffled_stage2", "token_agreement_stage2"))
    own = {r["prefix"]: r for r in tables["comparison"] if r["layers"] == "all" and not r["pair"].startswith("shuf")}
    assert s["overlap_stage2"] == own["brain (stage 2)"]["overlap"]
    assert s["overlap"] == own["brain (stage 1)"]["overlap"]
    # the layout: a row per brain prefix, the stage-2 shuffled pairing as a reference row
    overlap = build_tables(cfg["results_dir"])["neurons-overlap"]
    assert {"brain (stage 2) vs image", "shuffled brain (stage 2) vs image"} <= set(overlap["pair"])


def test_caption_attribution_matches_single_unit_ablation_on_a_later_token(tiny_lm):
    lm, embeds = tiny_lm
    g1, c, _ = nc.attribution(lm, embeds, LAYERS, POSITIONS)
    tokens, lengths = nc.greedy_caption(lm, embeds, 5, lm.config.eos_token_id)
    assert tokens.shape == (4, 5) and lengths.tolist() == [5, 5, 5, 5] and tokens[:, 0].tolist() == c.tolist()
    g = nc.caption_attribution(lm, embeds, LAYERS, POSITIONS, tokens, lengths)
    assert g.shape == (4, 5, 3 * 64)
    np.testing.assert_allclose(g[:, 0], g1, atol=1e-6)  # token 0 is the first token c: the same g
    t = 3  # a later token: the input is the prefix and the caption's first t tokens, teacher-forced
    x = torch.cat([embeds, lm.get_input_embeddings()(torch.as_tensor(tokens[:, :t]))], 1)
    base = nc.token_probability(lm, x, LAYERS, POSITIONS, tokens[:, t], logit=True)
    g_all, dy_all = [], []
    for i in range(4):
        for u in nc.top_units(np.abs(g[i, t][None]), 6)[0]:
            units = [[] for _ in range(4)]
            units[i] = [u]
            dy = nc.token_probability(lm, x, LAYERS, POSITIONS, tokens[:, t], units, logit=True)[i] - base[i]
            g_all.append(g[i, t, u])
            dy_all.append(dy)
    g_all, dy_all = np.array(g_all), np.array(dy_all)
    assert np.mean(np.sign(dy_all) == -np.sign(g_all)) >= 0.9
    assert np.corrcoef(dy_all, -g_all)[0, 1] > 0.9
    assert np.median(np.abs(dy_all + g_all) / np.abs(g_all)) < 0.3
    assert not np.allclose(g[:, t], g[:, 0], atol=1e-3)  # another token's attribution, not token 0's again
    # a caption that ends early: zero past its length, the rest unchanged
    short = nc.caption_attribution(lm, embeds, LAYERS, POSITIONS, tokens, np.array([5, 2, 5, 5]))
    assert np.all(short[1, 2:] == 0) and np.allclose(short[1, :2], g[1, :2], atol=1e-6)


def test_across_tokens_and_matched_summaries():
    from brainharness.tasks.neurons_tokens import _across_tokens, _matched

    g = np.array([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0], [3.0, 2.0, 0.0, 1.0]])
    # top-2 sets {0,1}, {2,3}, {0,1}: pair overlaps 0, 1, 0; Spearman −1, 0.8, −0.8
    assert np.allclose(_across_tokens(g, 2), (1 / 3, -1 / 3))
    assert np.allclose(_matched(g, g[::-1], 2), (1.0, (0.8 + 1 + 0.8) / 3))
    # a token no unit reaches (g = 0: a last layer's units after the first token) is left out, not ranked
    z = np.vstack([g, np.zeros(4)])
    assert np.allclose(_across_tokens(z, 2), (1 / 3, -1 / 3))
    assert np.allclose(_matched(z, z[::-1], 2), (0.0, -0.8))  # only tokens 1, 2 are live in both: g1 vs g2
    assert np.isnan(_matched(np.zeros((2, 4)), np.zeros((2, 4)), 2)).all()


def _tiny_clip_weights(tmp_path, monkeypatch):
    """The caption metrics' clip_b32 with locally saved random-init weights of a tiny open_clip model."""
    import open_clip
    import open_clip.factory

    from brainharness.metrics import caption_embeddings as ce

    cfg = {"embed_dim": 16, "vision_cfg": {"layers": 1, "width": 32, "head_width": 16, "patch_size": 8,
                                            "image_size": 16},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "tiny-test-clip", cfg)
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-test-clip", force_quick_gelu=True).eval()
    torch.save(model.state_dict(), tmp_path / "tiny_clip.pt")
    torch.manual_seed(1)  # a model that did not load the file would differ
    monkeypatch.setitem(ce.CLIP_SPECS, "clip_b32", {**ce.CLIP_SPECS["clip_b32"], "model": "tiny-test-clip"})
    monkeypatch.setattr(ce, "_clip_checkpoint", lambda spec: str(tmp_path / "tiny_clip.pt"))
    monkeypatch.setattr(ce, "_cache", {})
    return model


def test_clipscore_with_local_clip_weights(tmp_path, monkeypatch):
    import open_clip

    from brainharness.tasks.neurons_semantics import clip_scorer

    model = _tiny_clip_weights(tmp_path, monkeypatch)
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    score, desc = clip_scorer("clip_b32", images, "cpu")
    assert desc["checkpoint"] == str(tmp_path / "tiny_clip.pt") and desc["clip_metric"] == "clip_b32"
    texts, rows = ["dog, cat, ball", "red, car", "blue, sky", "red, car"], [0, 1, 2, 0]
    got = score(texts, rows)
    from PIL import Image

    transform = open_clip.image_transform(16, is_train=False)
    with torch.no_grad():
        img = model.encode_image(torch.stack([transform(Image.fromarray(im)) for im in images]))
        txt = model.encode_text(open_clip.get_tokenizer("ViT-B-32")(texts))
    cos = torch.nn.functional.cosine_similarity(txt, img[rows], dim=-1).numpy()
    np.testing.assert_allclose(got, 100 * np.maximum(cos, 0), atol=1e-3)
    assert got[1] != got[3]  # the same text against another image


def test_neurons_caption_tokens_and_clipscore(tmp_path, monkeypatch):
    from conftest import tiny_config

    from brainharness.config import load_config
    from brainharness.leaderboard.tables import build_tables
    from brainharness.runner import Runner
    from brainharness.tasks.captioning_task import TINY_CAPTIONER
    from brainharness.tasks.neurons import NeuronsTask

    example = {k: v for k, v in NeuronsTask.example.items() if k != "backbone"}
    data = {"name": "synthetic", "n_train": 200, "n_test": 40, "n_voxels": 120, "image_size": 32, "seed": 4}

    def run(sub, **task):
        cfg = load_config(tiny_config(tmp_path / sub, dataset=data, backbones=[{"name": "blip2-synthetic",
                                                                                 **TINY_CAPTIONER}],
                                      tasks=[{"name": "neurons", **example, **task}]))
        (rec,) = Runner(cfg, progress=False).run()
        return cfg, rec

    _, first = run("first")  # no CLIP weights on this machine: CLIPScore missing, with the loader's reason
    assert first["details"]["clipscore"].startswith("missing: open_clip ViT-B-32 'openai' weights are not")
    assert first["scores"]["clipscore_image"] is None and "caption_tokens" not in first["tables"]
    _tiny_clip_weights(tmp_path, monkeypatch)
    cfg, rec = run("caption", tokens="caption", max_new_tokens=6)
    s, tables = rec["scores"], rec["tables"]
    # the first-token analyses are those of tokens: first
    for name in ("ablation", "comparison", "unit_examples"):
        assert tables[name] == first["tables"][name]
    assert {k: v for k, v in s.items() if not k.startswith("clipscore")} == \
        {k: v for k, v in first["scores"].items() if not k.startswith("clipscore")}
    # CLIPScore from the local weights: in [0, 100], per prefix and for the random pairing
    assert rec["details"]["clipscore"]["checkpoint"].endswith("tiny_clip.pt")
    assert all(0 <= s[k] <= 100 for k in ("clipscore_image", "clipscore_brain", "clipscore_random"))
    assert {r["prefix"] for r in tables["semantics"] if r["clipscore"] is not None} == {"image", "brain (stage 1)"}
    rows = {(r["layers"], r["pair"]): r for r in tables["caption_tokens"]}
    assert list(rows) == [("all", "image: across tokens"), ("all", "brain (stage 1): across tokens"),
                          ("all", "brain (stage 1) vs image"), ("all", "shuffled brain vs image")]
    # the tiny captioner's language model has one layer: at the input positions its units reach only the first
    # token (the one predicted there), so later tokens are left out — no pairs of tokens, and brain vs image on
    # the image's caption is the first-token comparison again (their first tokens agree)
    assert rows[("all", "image: across tokens")]["overlap"] is None
    assert rows[("all", "image: across tokens")]["n_images"] == 0
    assert first["scores"]["token_agreement"] == 1.0
    for pair, name in (("brain (stage 1) vs image", "overlap"), ("shuffled brain vs image", "overlap_shuffled")):
        assert rows[("all", pair)]["n_images"] == 8 and 1 <= rows[("all", pair)]["tokens_per_caption"] <= 6
        assert rows[("all", pair)]["overlap"] == pytest.approx(first["scores"][name])
        # (ties — units with g = 0 — are averaged here, ranked in order in the first-token comparison)
        assert rows[("all", pair)]["rank_corr"] == pytest.approx(first["scores"][name.replace("overlap", "rank_corr")],
                                                                 abs=1e-3)
    ex = [r for r in tables["caption_token_examples"] if r["prefix"] == "image"]
    assert ex and ex[0]["position"] == 0 and ex[0]["top_units"].startswith("L0:")
    assert len({r["stim_id"] for r in ex}) == NeuronsTask.params["examples"].default
    assert "neurons-caption-tokens" in build_tables(cfg["results_dir"])
