"""METEOR (NLTK) as an offline `evaluate` module.

Computes what the hub's ``evaluate-metric/meteor`` script computes with NLTK >= 3.6.5:
``nltk.translate.meteor_score.meteor_score([word_tokenize(r) for r in refs],
word_tokenize(pred), alpha, beta, gamma)`` per prediction (``single_meteor_score`` when each
prediction has one reference string), and ``{"meteor": mean}``. No downloads: WordNet and
the English Punkt model come from the folder ``brainharness.metrics.captions.prepare_nltk_data``
builds. ``return_scores=True`` adds ``"scores"`` (one per prediction).
"""
import datasets
import numpy as np

import evaluate

_DESCRIPTION = "METEOR (Banerjee & Lavie 2005) as implemented by nltk.translate.meteor_score."
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of strings.
    references: a list of reference strings per prediction (or one string per prediction).
    alpha, beta, gamma: NLTK's METEOR parameters (defaults 0.9, 3, 0.5).
    return_scores: also return the per-prediction scores under "scores".
Returns:
    "meteor": the mean of the per-prediction scores.
"""
_CITATION = """@inproceedings{banarjee2005, title={{METEOR}: An Automatic Metric for {MT} Evaluation
with Improved Correlation with Human Judgments}, author={Banerjee, Satanjeev and Lavie, Alon}, year={2005}}"""


def _ensure_nltk_data():
    import nltk

    try:
        nltk.data.find("corpora/wordnet")
        nltk.data.find("tokenizers/punkt_tab/english/")
        return
    except LookupError:
        pass
    # Offline: the harness builds an NLTK data folder from the system WordNet.
    from brainharness.metrics.caption_evaluate import prepare_nltk_data

    prepare_nltk_data()


class Meteor(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features({
                    "predictions": datasets.Value("string", id="sequence"),
                    "references": datasets.Sequence(datasets.Value("string", id="sequence"), id="references"),
                }),
                datasets.Features({
                    "predictions": datasets.Value("string", id="sequence"),
                    "references": datasets.Value("string", id="sequence"),
                }),
            ],
            codebase_urls=["https://github.com/nltk/nltk/blob/develop/nltk/translate/meteor_score.py"],
        )

    def _download_and_prepare(self, dl_manager):
        _ensure_nltk_data()

    def _compute(self, predictions, references, alpha=0.9, beta=3, gamma=0.5, return_scores=False):
        from nltk import word_tokenize
        from nltk.translate import meteor_score

        scores = []
        for pred, refs in zip(predictions, references):
            hyp = word_tokenize(pred)
            if isinstance(refs, list):
                s = meteor_score.meteor_score([word_tokenize(r) for r in refs], hyp,
                                              alpha=alpha, beta=beta, gamma=gamma)
            else:
                s = meteor_score.single_meteor_score(word_tokenize(refs), hyp, alpha=alpha, beta=beta, gamma=gamma)
            scores.append(float(s))
        out = {"meteor": float(np.mean(scores)) if scores else float("nan")}
        if return_scores:
            out["scores"] = scores
        return out
