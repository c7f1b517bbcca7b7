"""The ``neurons`` task with ``tokens: caption``: seed 002's attribution on every token of the caption.

Each prefix generates its caption greedily (up to ``max_new_tokens``, before the end-of-sequence
token); :func:`brainharness.tasks.neurons_core.caption_attribution` gives ``g_{k,c_t}`` for each of
its tokens ``c_t``, teacher-forced, summed over the same input positions as the first token's
(``positions``). Token 0 is the first token's ``c`` (its g is the ``first`` analysis's). Per
analysed image, then averaged over images (images with too short a caption left out):

A token whose g is 0 for every unit of a scope is left out there: with ``positions: input`` the
units of the last layer at the input positions cannot reach a caption position (only the first
token, predicted at the input's last position, sees them); a row with nothing left has ``None``.

* ``<prefix>: across tokens`` — for the image prefix and each brain prefix on its *own* caption:
  the mean over token pairs ``t < t'`` of the top-``overlap_k`` overlap and the Spearman correlation
  of g (do the tokens of one caption use the same units?);
* ``<brain> vs image`` — the brain prefix teacher-forced on the *image prefix's* caption (the same
  tokens, so the units can be compared token by token): top-k overlap and rank correlation of g
  with the image's, mean over the caption's tokens; ``shuffled <brain> vs image`` — another image's
  brain prefix (the derangement ``perm``) forced on the same caption: the baseline.

Rows of the ``caption_tokens`` table (``layers``, ``pair``, ``prefix``, ``target``, ``k``,
``overlap``, ``rank_corr``, ``chance_overlap``, ``n_images``, ``tokens_per_caption``); the
``caption_token_examples`` table lists, for the first ``examples`` images, each caption token of
each prefix with its top units (``L<layer>:<unit>``) and their g.
"""
from __future__ import annotations

import numpy as np

from brainharness.tasks import neurons_core as nc


def _ranks(g: np.ndarray) -> np.ndarray:
    """Rows of g → centred, unit-norm ranks, ties averaged (their dot products are Spearman correlations;
    after the first token a last layer's units all have g = 0: tied, not ranked by index)."""
    from scipy.stats import rankdata

    r = rankdata(g, method="average", axis=1).astype(np.float64)
    r -= r.mean(1, keepdims=True)
    return r / np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-12)


def _across_tokens(g: np.ndarray, k: int) -> tuple[float, float]:
    """g (tokens, units) of one caption → mean over token pairs of the top-k overlap and the rank correlation
    (tokens whose g is 0 for every unit — no path from these units at ``positions`` — left out; NaN: < 2 left)."""
    g = g[np.any(g != 0, axis=1)]
    n = len(g)
    if n < 2:
        return np.nan, np.nan
    top = nc.top_units(g, k)
    onehot = np.zeros(g.shape, dtype=np.float64)
    np.put_along_axis(onehot, top, 1.0, 1)
    pairs = np.triu_indices(n, 1)
    r = _ranks(g)
    return float((onehot @ onehot.T)[pairs].mean() / top.shape[1]), float((r @ r.T)[pairs].mean())


def _matched(ga: np.ndarray, gb: np.ndarray, k: int) -> tuple[float, float]:
    """g (tokens, units) of two prefixes on the same tokens → mean over tokens of the top-k overlap and rank corr
    (tokens with g = 0 for every unit in either left out; NaN: none left)."""
    live = np.any(ga != 0, axis=1) & np.any(gb != 0, axis=1)
    if not live.any():
        return np.nan, np.nan
    ga, gb = ga[live], gb[live]
    return (float(nc.overlap(nc.top_units(ga, k), nc.top_units(gb, k)).mean()),
            float(np.nanmean((_ranks(ga) * _ranks(gb)).sum(1))))


class _Acc:
    """Per-image values of each (layers, pair) row, in first-seen order."""

    def __init__(self):
        self.rows: dict[tuple, dict] = {}

    def add(self, key: tuple, base: dict, overlap: float, rank_corr: float, length: int):
        r = self.rows.setdefault(key, {**base, "overlap": [], "rank_corr": [], "lengths": []})
        if np.isnan(overlap):
            return
        r["overlap"].append(overlap)
        r["rank_corr"].append(rank_corr)
        r["lengths"].append(length)

    def table(self) -> list[dict]:
        out = []
        for r in self.rows.values():
            ov, rc, ln = r.pop("overlap"), r.pop("rank_corr"), r.pop("lengths")
            out.append({**r, "overlap": float(np.mean(ov)) if ov else None,
                        "rank_corr": float(np.nanmean(rc)) if rc else None, "n_images": len(ov),
                        "tokens_per_caption": float(np.mean(ln)) if ln else None})
        return out


def caption_tokens(task, embeds: dict, scopes: list, perm: np.ndarray, image: str, shuffled_name,
                   stim_ids: np.ndarray) -> tuple[list[dict], list[dict], dict[str, np.ndarray]]:
    """→ ``(caption_tokens rows, caption_token_examples rows, per-image caption lengths by prefix)``.

    ``embeds``: ``{prefix: (n, T, d)}`` with ``image`` first; ``shuffled_name(brain)``: the shuffled
    pair's label; ``stim_ids``: of the n analysed images."""
    p, lm = task.p, task.lm
    k, b, n = p["overlap_k"], p["batch_size"], len(embeds[image])
    eos = lm.config.eos_token_id
    tok = task.tokenizer
    acc, examples = _Acc(), []
    lengths: dict[str, list] = {name: [] for name in embeds}

    def attr(e, tokens, lens):
        return nc.caption_attribution(lm, e, task.layers, task.positions, tokens, lens)

    for s in range(0, n, b):
        rows = np.arange(s, min(s + b, n))
        own = {}
        for name, e in embeds.items():
            tokens, lens = nc.greedy_caption(lm, e[rows], p["max_new_tokens"], eos)
            own[name] = (tokens, lens, attr(e[rows], tokens, lens))
            lengths[name].append(lens)
        tok_i, len_i, g_i = own[image]
        forced = {name: (attr(e[rows], tok_i, len_i), attr(e[perm[rows]], tok_i, len_i))
                  for name, e in embeds.items() if name != image}
        for scope, units in scopes:
            kk = min(k, len(units))
            base = {"layers": scope, "k": kk, "chance_overlap": kk / len(units)}
            for name, (_t, lens, g) in own.items():
                for r, ln in enumerate(lens):
                    if ln >= 2:
                        acc.add((scope, name, "own"), {**base, "pair": f"{name}: across tokens", "prefix": name,
                                                       "target": "own caption"},
                                *_across_tokens(g[r, :ln][:, units], kk), int(ln))
            for name, (gb, gs) in forced.items():
                for pair, gg in ((f"{name} vs image", gb), (shuffled_name(name), gs)):
                    for r, ln in enumerate(len_i):
                        if ln >= 1:
                            acc.add((scope, pair), {**base, "pair": pair, "prefix": name,
                                                    "target": "image's caption"},
                                    *_matched(g_i[r, :ln][:, units], gg[r, :ln][:, units], kk), int(ln))
        for name, (tokens, lens, g) in own.items():
            for r in (r for r in range(len(rows)) if rows[r] < p["examples"]):
                for t in range(int(lens[r])):
                    top = nc.top_units(g[r, t][None], k)[0]
                    examples.append({"stim_id": int(stim_ids[rows[r]]), "prefix": name, "position": t,
                                     "token": tok.decode([int(tokens[r, t])]),
                                     "top_units": " ".join(f"L{task.layers[u // task.f]}:{u % task.f}" for u in top),
                                     "g_top": float(g[r, t, top[0]])})
    return acc.table(), examples, {name: np.concatenate(v) for name, v in lengths.items()}
