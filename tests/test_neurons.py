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
