"""ROUGE (Google's ``rouge_score``) as an offline `evaluate` module.

Computes what the hub's ``evaluate-metric/rouge`` script computes: a
``rouge_scorer.RougeScorer(rouge_types, use_stemmer, tokenizer)``; with a list of references
per prediction ``score_multi`` (the reference with the highest F-measure, per ROUGE type),
else ``score``. ``use_aggregator=True`` (the default) returns ``BootstrapAggregator().aggregate()
[type].mid.fmeasure`` — the median of 1000 bootstrap means, drawn from NumPy's global RNG, so
it is random and close to, not equal to, the mean; ``use_aggregator=False`` returns the
per-prediction F-measures.
"""
import datasets
from rouge_score import rouge_scorer, scoring

import evaluate

_DESCRIPTION = "ROUGE-N / ROUGE-L F-measures from Google Research's rouge_score package."
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of strings.
    references: a list of reference strings per prediction (or one string per prediction).
    rouge_types: default ["rouge1", "rouge2", "rougeL", "rougeLsum"].
    use_aggregator: bootstrap "mid" F-measure per type (True) or per-prediction lists (False).
    use_stemmer: Porter stemming of tokens (default False).
    tokenizer: optional callable str -> list[str] replacing rouge_score's default tokenizer.
"""
_CITATION = """@inproceedings{lin-2004-rouge, title={{ROUGE}: A Package for Automatic Evaluation of
Summaries}, author={Lin, Chin-Yew}, year={2004}}"""


class _CallableTokenizer:
    def __init__(self, fn):
        self.fn = fn

    def tokenize(self, text):
        return self.fn(text)


class Rouge(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features({
                    "predictions": datasets.Value("string", id="sequence"),
                    "references": datasets.Sequence(datasets.Value("string", id="sequence")),
                }),
                datasets.Features({
                    "predictions": datasets.Value("string", id="sequence"),
                    "references": datasets.Value("string", id="sequence"),
                }),
            ],
            codebase_urls=["https://github.com/google-research/google-research/tree/master/rouge"],
        )

    def _compute(self, predictions, references, rouge_types=None, use_aggregator=True, use_stemmer=False,
                 tokenizer=None):
        rouge_types = list(rouge_types or ["rouge1", "rouge2", "rougeL", "rougeLsum"])
        scorer = rouge_scorer.RougeScorer(rouge_types=rouge_types, use_stemmer=use_stemmer,
                                          tokenizer=_CallableTokenizer(tokenizer) if tokenizer else None)
        per = []
        for pred, refs in zip(predictions, references):
            per.append(scorer.score_multi(refs, pred) if isinstance(refs, list) else scorer.score(refs, pred))
        if use_aggregator:
            agg = scoring.BootstrapAggregator()
            for s in per:
                agg.add_scores(s)
            return {k: v.mid.fmeasure for k, v in agg.aggregate().items()}
        return {k: [s[k].fmeasure for s in per] for k in rouge_types}
