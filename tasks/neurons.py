"""``neurons``: seed 002 (Schwettmann et al., multimodal neurons) on the caption decoder the brain drives.

The prefix is BLIP-2's: query outputs → ``language_projection`` → the language model, then the
prompt (BOS by default). Two prefixes per analysed test image: the **image** prefix (the true
query outputs) and the **brain** prefix (stage 1's prediction of them,
:func:`brainharness.tasks.captioning_task.stage1_queries`: ridge fitted on the training split) and,
with ``stage2: true``, the **brain (stage 2)** prefix (seed 000's contrastive stage 2,
:func:`brainharness.tasks.captioning_task.stage2_queries` with the ``retrieval_backbone`` and eq. 1's
parameters, as ``decoding`` runs it: its epoch selected on a validation part of the training
split, ``stage2_batch_size`` its batch). No selection reads the test split. For each, on the
token ``c`` the language model predicts first after the prefix (:mod:`brainharness.tasks.neurons_core`):

1. attribution ``g = Z·∂y^c/∂Z`` of every MLP unit of ``lm_layers``, summed over the input
   positions (``positions: input``: the visual prefix and the prompt — in LiMBeR the last image
   patch is the position that predicts c, in BLIP-2 it is the prompt's last token; ``visual``:
   the query positions only, where a unit of the last layer cannot reach c); one backward pass
   per batch;
2. decoding units through the unembedding (their ``top_tokens`` tokens);
3. ablation curves: ``p(c)`` after zeroing the top-k units by g (at those positions) over
   ``p(c)`` before, for each k of ``k_grid``, against k random units of the same layers
   (``random_draws`` draws), for all chosen layers together and (``per_layer``) each on its own;
4. brain against image (each brain prefix): overlap of the top-``overlap_k`` sets, Spearman
   correlation of g, the share of images whose c agrees — with the shuffled-brain pairing
   (another image's prefix from the same brain model) as baseline —, and the curve of the
   brain prefix's p(c) when the *image's* top units are zeroed (``units: image's top units``)
   beside its own top units and random ones;
5. semantics: each image's top ``semantic_units`` units' decoded tokens (a comma-joined list)
   against the image's captions with the sentence model of the caption metrics
   (cosine to the captions' mean embedding), max over units, mean over images — and the same
   with images and units paired at random (Table 1's baseline); and CLIPScore of the same texts
   against the image (:mod:`brainharness.tasks.neurons_semantics`) with the caption metric
   ``clipscore_model``'s CLIP weights where the local caches hold them, else ``None`` with the reason
   in ``details.clipscore``;
6. with ``tokens: caption``, attribution on every token of each prefix's greedy caption
   (:mod:`brainharness.tasks.neurons_tokens`): top-k overlap and rank correlation of g across the
   tokens of one caption, and brain vs image token by token on the image's caption (shuffled-brain
   baseline) — the ``caption_tokens`` and ``caption_token_examples`` tables. The analyses 1–5 stay
   on the first token c.

Record: ``scores`` — ``overlap`` (main: brain vs image, all layers, k = ``overlap_k``),
``overlap_shuffled``, ``rank_corr``, ``rank_corr_shuffled``, ``token_agreement``,
``drop_image`` / ``drop_brain`` / ``drop_random_image`` / ``drop_random_brain`` / ``drop_transfer``
(1 − p ratio at the largest k), ``sentence_image``, ``sentence_brain``, ``sentence_random``,
``clipscore_image``, ``clipscore_brain``, ``clipscore_random`` (None without CLIP weights) —
the brain ones of stage 1; with ``stage2`` the same brain figures of stage 2 as ``<name>_stage2``;
``tables`` — ``ablation``, ``comparison``, ``semantics``, ``unit_examples`` (and with ``tokens: caption``
``caption_tokens``, ``caption_token_examples``).
"""
from __future__ import annotations

import time
from typing import ClassVar

import numpy as np

from brainharness.capabilities import (CAPTIONS, IMAGE_FEATURES, IMAGE_TEXT_RETRIEVAL, QUERY_CAPTIONER, QUERY_TOKENS,
                                       Need)
from brainharness.errors import ConfigError, DataError
from brainharness.params import Param
from brainharness.registry import register_task
from brainharness.task import TaskContext, TaskOutput
from brainharness.tasks import captioning as cap
from brainharness.tasks import neurons_core as nc
from brainharness.tasks import neurons_semantics as ns
from brainharness.tasks import neurons_tokens as nt
from brainharness.tasks.captioning_task import (STAGE2_TASK_PARAMS, TINY_CAPTIONER, CaptioningTask, check_stage2_task,
                                                 query_r2, stage1_queries, stage2_queries)
from brainharness.tasks.neurons_layout import NEURONS_LAYOUT
from brainharness.tasks.retrieval import RetrievalTask

IMAGE, BRAIN, BRAIN2 = "image", "brain (stage 1)", "brain (stage 2)"
SUFFIX = {BRAIN: "", BRAIN2: "_stage2"}  # score names of each brain prefix
BRAIN_SCORES = ("overlap", "overlap_shuffled", "rank_corr", "rank_corr_shuffled", "token_agreement", "drop_brain",
                "drop_random_brain", "drop_transfer", "sentence_brain", "clipscore_brain")


@register_task("neurons")
class NeuronsTask(RetrievalTask):
    direction = "brain→text (interpretability)"
    needs = (IMAGE_FEATURES, QUERY_TOKENS, QUERY_CAPTIONER, CAPTIONS,
             Need(IMAGE_TEXT_RETRIEVAL, role="retrieval_backbone", when=lambda p: p["stage2"],
                  condition="with stage2"))
    main_score = "overlap"
    scores = (*BRAIN_SCORES, "drop_image", "drop_random_image", "sentence_image", "sentence_random", "clipscore_image",
              "clipscore_random",
              *(f"{k}_stage2" for k in BRAIN_SCORES))
    layout = NEURONS_LAYOUT
    example = {"backbone": {"name": "blip2-synthetic", **TINY_CAPTIONER}, "n_images": 8, "k_grid": [1, 4],
               "random_draws": 2, "overlap_k": 4, "semantic_units": 2, "top_tokens": 3, "num_threads": 1}
    params: ClassVar[dict] = {
        **{k: v for k, v in CaptioningTask.params.items()
           if k not in ("max_new_tokens", "num_beams", "caption_metrics", "nn_caption_index", "examples", "brain_model",
                        "brain_model_sha256", *STAGE2_TASK_PARAMS)},
        "seed": Param(0, int, doc="seed of the image subset, random units and random pairings"),
        "lm_layers": Param(None, list, items=Param(type=int), nonempty=True,
                           doc="language-model layers whose MLP units are analysed (null: all; negative from the end)"),
        "n_images": Param(100, int, ge=2, nullable=True, doc="test images analysed (a seeded subset; null: all)"),
        "k_grid": Param([1, 4, 16, 64], list, items=Param(type=int, ge=1), nonempty=True,
                        doc="numbers of units zeroed in the ablation curves"),
        "random_draws": Param(5, ge=1, doc="draws of random units per k"),
        "overlap_k": Param(10, ge=1, doc="size of the top-k sets compared between prefixes"),
        "semantic_units": Param(10, ge=1, doc="top units per image whose decoded tokens are scored"),
        "top_tokens": Param(10, ge=1, doc="tokens decoded per unit"),
        "positions": Param("input", choices=("input", "visual"),
                           doc="positions g sums over and ablation zeroes: every input position (visual prefix and "
                               "prompt, the predicting one included, as the paper's last image patch) or the "
                               "visual prefix only (a last layer then has g = 0 there)"),
        "per_layer": Param(True, doc="also analyse each chosen layer on its own"),
        "tokens": Param("first", choices=("first", "caption"),
                        doc="attribution on the first predicted token c only, or also on every token of each "
                            "prefix's greedy caption (teacher-forced; the caption_tokens table)"),
        "max_new_tokens": Param(30, ge=1, doc="with tokens: caption, the greedy caption's length limit (tokens)"),
        "clipscore_model": Param("clip_b32", choices=("clip_b32", "clip_l14"),
                                 doc="CLIP weights of CLIPScore (the caption metric's; local caches only, else "
                                     "reported missing)"),
        "batch_size": Param(16, ge=1, doc="prefixes per forward/backward pass"),
        "examples": Param(4, ge=0, doc="images whose top units are listed in the record"),
        "stage2": Param(False, doc="add the brain (stage 2) prefix: seed 000's contrastive stage 2 (parameters below)"),
        **{k: v for k, v in STAGE2_TASK_PARAMS.items() if k != "batch_size"},
        "stage2_batch_size": STAGE2_TASK_PARAMS["batch_size"],
    }

    def check(self, p):
        super().check(p)
        if p["stage2"]:
            check_stage2_task(self.owner(), p)

    def run(self, ctx: TaskContext) -> TaskOutput:
        from brainharness.ridge import resolve_device

        p, t = self.p, {}
        t0 = time.perf_counter()
        s1 = stage1_queries(self, ctx)
        n = len(s1.P)
        rng = np.random.default_rng([p["seed"], 2])
        idx = np.arange(n) if p["n_images"] is None or p["n_images"] >= n else \
            np.sort(rng.choice(n, p["n_images"], replace=False))
        if len(idx) < 2:
            raise DataError("neurons: needs at least two test images")
        t["stage1_s"] = time.perf_counter() - t0
        details = {"stage1_alpha_median": s1.alpha_median}
        brains = {BRAIN: s1.P}
        if p["stage2"]:
            t0 = time.perf_counter()
            brains[BRAIN2], epoch, _ = stage2_queries(dict(p, batch_size=p["stage2_batch_size"]), ctx, s1)
            details.update({"stage2_best_epoch": epoch, "stage2_query_r2": query_r2(brains[BRAIN2], s1.Y_score),
                            "stage1_query_r2": query_r2(s1.P, s1.Y_score)})
            t["stage2_s"] = time.perf_counter() - t0
        gen = ctx.backbone
        lm = gen.language_model  # declared by QUERY_CAPTIONER
        layers = nc.resolve_layers(lm, p["lm_layers"])
        self.lm, self.layers, self.f = lm, layers, nc.n_units(lm, layers)
        embeds = {IMAGE: self._embeds(gen, s1.Y_score[idx], s1.shape),
                  **{name: self._embeds(gen, P[idx], s1.shape) for name, P in brains.items()}}
        # the query outputs' positions come first; the prompt (BOS by default) follows
        self.positions = range(s1.shape[0] if p["positions"] == "visual" else embeds[IMAGE].shape[1])
        t0 = time.perf_counter()
        att = {k: self._batched(nc.attribution, e) for k, e in embeds.items()}  # (g, c, p0)
        t["attribution_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        scopes = [("all", np.arange(len(layers) * self.f))]
        if p["per_layer"] and len(layers) > 1:
            scopes += [(f"layer {li}", np.arange(s * self.f, (s + 1) * self.f)) for s, li in enumerate(layers)]
        ablation, comparison = [], []
        perm = cap.derangement(len(idx), p["seed"])
        for scope, units in scopes:
            ablation += self._curves(scope, units, embeds, att)
            comparison += self._compare(scope, units, att, perm)
        t["ablation_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        refs = [list(ctx.stimuli.captions.get(int(ctx.score.stim_ids[i]), [])) for i in idx]
        if any(not r for r in refs):
            raise DataError("neurons: every analysed image needs captions for the semantics of its units")
        semantics, examples, clip_desc = ns.semantics(self, gen, att, refs, perm, ctx, str(resolve_device(ctx.device)),
                                                      idx)
        t["semantics_s"] = time.perf_counter() - t0
        tables = {"ablation": ablation, "comparison": comparison, "semantics": semantics, "unit_examples": examples}
        per_image = {"neurons_stim_ids": np.asarray(ctx.score.stim_ids)[idx],
                     **{f"first_token_{cap.slug(k)}": v[1] for k, v in att.items()},
                     **{f"p_first_token_{cap.slug(k)}": v[2] for k, v in att.items()}}
        if p["tokens"] == "caption":
            t0 = time.perf_counter()
            self.tokenizer = gen.tokenizer
            tables["caption_tokens"], tables["caption_token_examples"], lengths = nt.caption_tokens(
                self, embeds, scopes, perm, IMAGE, _shuffled, np.asarray(ctx.score.stim_ids)[idx])
            per_image.update({f"caption_length_{cap.slug(k)}": v for k, v in lengths.items()})
            t["caption_tokens_s"] = time.perf_counter() - t0

        scores = self._scores(ablation, comparison, semantics)
        details.update({"lm_layers": layers, "units_per_layer": self.f, "n_images": int(len(idx)),
                        "k_main": max(p["k_grid"]),
                        "clipscore": clip_desc, "analysed_stim_ids": [int(ctx.score.stim_ids[i]) for i in idx]})
        return TaskOutput(self.main_score, scores, tables, per_image, {"timings": t, "details": details})

    # -- passes -----------------------------------------------------------------------
    def _embeds(self, gen, queries: np.ndarray, shape):
        """The language model's input: projected query outputs, then the prompt's embeddings."""
        import torch

        q = torch.as_tensor(np.asarray(queries, dtype=np.float32).reshape(len(queries), *shape),
                            device=gen.language_projection.weight.device)
        prompt = self.p["prompt"]
        if prompt is None:
            bos = gen.language_model.config.bos_token_id
            if bos is None:
                raise ConfigError("neurons: the language model has no BOS token; give a prompt")
            ids = [bos]
        else:
            ids = gen.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        with torch.no_grad():
            text = gen.language_model.get_input_embeddings()(torch.tensor([ids], device=q.device)).repeat(len(q), 1, 1)
            return torch.cat([gen.language_projection(q).to(text.dtype), text], 1)

    def _batched(self, fn, embeds, *per_row, **kw):
        """``fn(lm, embeds[batch], layers, positions, *per_row[batch], **kw)`` over batches, concatenated."""
        b = self.p["batch_size"]
        parts = [fn(self.lm, embeds[s:s + b], self.layers, self.positions, *(x[s:s + b] for x in per_row), **kw)
                 for s in range(0, len(embeds), b)]
        if isinstance(parts[0], tuple):
            return tuple(np.concatenate(x) for x in zip(*parts))
        return np.concatenate(parts)

    def _ratio(self, embeds, c, p0, units) -> float:
        """Mean over images of p(c) with ``units[i]`` zeroed over p(c) before."""
        p = self._batched(nc.token_probability, embeds, c, units)
        return float(np.mean(p / np.maximum(p0, 1e-12)))

    def _random_units(self, units: np.ndarray, k: int, n: int, draw: int, key: int) -> np.ndarray:
        rng = np.random.default_rng([self.p["seed"], draw, k, key])
        return np.stack([rng.choice(units, min(k, len(units)), replace=False) for _ in range(n)])

    # -- analyses ---------------------------------------------------------------------
    def _curves(self, scope: str, units: np.ndarray, embeds: dict, att: dict) -> list[dict]:
        rows = []
        top = {k: units[nc.top_units(att[k][0][:, units], max(self.p["k_grid"]))] for k in att}
        for prefix, (g, c, p0) in att.items():
            n = len(g)
            for k in self.p["k_grid"]:
                kk = min(k, len(units))
                rand = [self._ratio(embeds[prefix], c, p0, self._random_units(units, kk, n, d, int(units[0])))
                        for d in range(self.p["random_draws"])]
                base = {"layers": scope, "prefix": prefix, "k": k, "n_images": n}
                rows.append({**base, "units": "top by g", "p_ratio": self._ratio(embeds[prefix], c, p0,
                                                                                 top[prefix][:, :kk])})
                rows.append({**base, "units": "random", "p_ratio": float(np.mean(rand)),
                             "p_ratio_sd": float(np.std(rand)), "draws": len(rand)})
                if prefix != IMAGE:  # does zeroing the image's top units hurt the brain-driven token as much?
                    rows.append({**base, "units": "image's top units",
                                 "p_ratio": self._ratio(embeds[prefix], c, p0, top[IMAGE][:, :kk])})
        return rows

    def _compare(self, scope: str, units: np.ndarray, att: dict, perm: np.ndarray) -> list[dict]:
        gi, ci = att[IMAGE][0][:, units], att[IMAGE][1]
        k = min(self.p["overlap_k"], len(units))
        ti = nc.top_units(gi, k)
        rows = []
        for brain in (b for b in att if b != IMAGE):
            gb, cb = att[brain][0][:, units], att[brain][1]
            tb = nc.top_units(gb, k)
            for pair, order in ((f"{brain} vs image", np.arange(len(gi))), (_shuffled(brain), perm)):
                rows.append({"layers": scope, "pair": pair, "prefix": brain, "k": k, "n_units": int(len(units)),
                             "overlap": float(nc.overlap(ti, tb[order]).mean()), "chance_overlap": k / len(units),
                             "rank_corr": float(np.nanmean(nc.rank_correlation(gi, gb[order]))),
                             "token_agreement": float(np.mean(ci == cb[order])), "n_images": int(len(gi))})
        return rows

    def _scores(self, ablation: list, comparison: list, semantics: list) -> dict:
        kmax = max(self.p["k_grid"])
        out: dict = {}
        for r in ablation:
            if r["layers"] == "all" and r["k"] == kmax:
                name = {"top by g": "drop_", "random": "drop_random_", "image's top units": "drop_transfer"}[r["units"]]
                if r["prefix"] == IMAGE:
                    out[name + "image"] = 1.0 - r["p_ratio"]
                else:
                    out[name + ("" if name == "drop_transfer" else "brain") + SUFFIX[r["prefix"]]] = 1.0 - r["p_ratio"]
        for r in comparison:
            if r["layers"] == "all":
                suffix = ("_shuffled" if r["pair"].startswith("shuffled") else "") + SUFFIX[r["prefix"]]
                out[f"overlap{suffix}"] = r["overlap"]
                out[f"rank_corr{suffix}"] = r["rank_corr"]
                if not r["pair"].startswith("shuffled"):
                    out["token_agreement" + SUFFIX[r["prefix"]]] = r["token_agreement"]
        for r in semantics:
            for metric in ("sentence", "clipscore"):
                if r["pairing"] == "own":
                    name = f"{metric}_image" if r["prefix"] == IMAGE else f"{metric}_brain" + SUFFIX[r["prefix"]]
                    out[name] = r[metric]
                elif r["prefix"] == IMAGE:
                    out[f"{metric}_random"] = r[metric]
        return out


def _shuffled(brain: str) -> str:
    """The label of a brain prefix's shuffled-brain pairing (the layout's reference rows)."""
    return "shuffled brain vs image" if brain == BRAIN else f"shuffled {brain} vs image"
