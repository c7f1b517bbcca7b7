"""Baseline backbones: the synthetic oracle, raw pixels, and a fixed random projection.

They anchor every leaderboard: ``oracle`` is the ceiling the harness must reach on the
synthetic data (and its ``shuffle_seed`` variant the floor) — both declare themselves controls
(:meth:`Oracle.control`), listed as reference rows and never ranked — while ``pixels`` and
``random-features`` are ranked baselines that any learned backbone has to beat.
"""
from __future__ import annotations

import numpy as np

from brainharness.backbone import Backbone, StimulusBatch
from brainharness.errors import DataError
from brainharness.params import Param
from brainharness.registry import register_backbone


@register_backbone("oracle")
class Oracle(Backbone):
    """The generating features of the synthetic dataset (layers ``low``, ``category``, ``all``,
    and the known-truth hierarchy ``mix.0`` … ``mix.<K>``).

    ``shuffle_seed`` permutes which stimulus's features each stimulus gets — the same
    permutation for train and test — a control that must score at chance.

    ``mix.k`` (``mix_layers`` = K + 1 of them, ``w_k = k/K``) is a multi-layer oracle whose
    brain-to-layer map is known: ``[√(1−w_k)·low(i) + √w_k·low(j), √w_k·cat(i) + √(1−w_k)·cat(j)]``
    with ``j`` the partner of stimulus ``i`` under a fixed derangement (no stimulus is its own
    partner). Each block keeps its dimensions and covariance; only the share of stimulus-specific
    signal moves, from low-level (``mix.0``) to category (``mix.K``). As the partner's features
    have the same covariance as the signal, no linear read-out can separate them: a voxel whose
    signal variance is a share ``f`` low-level has an expected R² ∝ ``f·(1−w_k) + (1−f)·w_k``,
    linear in ``w_k``. So voxels with ``f > ½`` (V1–hV4 on the synthetic data) map to ``mix.0``
    and the category ROIs (``f ≤ 0.35``) to ``mix.K``.
    """

    family = "baseline"
    layers_doc = "low, category, all, mix.0..mix.K"
    DERANGEMENT_SEED = 20240603  # fixed: the partner stimuli of the mix layers

    params = {**Backbone.params,
              "shuffle_seed": Param(None, int, ge=0, doc="permute which stimulus gets which features (chance control)"),
              "mix_layers": Param(5, ge=2, doc="number K + 1 of mix.k layers")}

    def configure(self, p):
        self.shuffle_seed, self.mix_layers = p["shuffle_seed"], p["mix_layers"]

    def layers(self):
        return ["low", "category", "all"] + [f"mix.{k}" for k in range(self.mix_layers)]

    def default_layer(self):
        return "all"

    def identity(self):
        return {**super().identity(), "shuffle_seed": self.shuffle_seed, "mix_layers": self.mix_layers}

    def describe_instance(self):
        return {**super().describe_instance(), "shuffle_seed": self.shuffle_seed}

    @classmethod
    def control(cls, params):
        """Never a competitor: the generating features are the ceiling; shuffled, the floor."""
        return "ceiling" if params.get("shuffle_seed") is None else "shuffled floor"

    @staticmethod
    def _table(stimuli, name: str) -> np.ndarray:
        table = stimuli.extras.get(f"features_{name}")
        if table is None:
            raise DataError("the oracle backbone needs a dataset with generating features (the synthetic one)")
        return table

    def encode(self, batch: StimulusBatch, layer: str) -> np.ndarray:
        rows = batch.stimuli.rows(batch.ids)
        n = len(batch.stimuli)
        if self.shuffle_seed is not None:
            rows = np.random.default_rng(self.shuffle_seed).permutation(n)[rows]
        if not layer.startswith("mix."):
            return self._table(batch.stimuli, layer)[rows]
        w = int(layer.split(".", 1)[1]) / (self.mix_layers - 1)
        order = np.random.default_rng(self.DERANGEMENT_SEED).permutation(n)
        partner = np.empty(n, dtype=np.int64)
        partner[order] = np.roll(order, -1)  # one cycle through all stimuli: nobody is their own partner
        low, cat = self._table(batch.stimuli, "low"), self._table(batch.stimuli, "category")
        other = partner[rows]
        return np.concatenate([np.sqrt(1 - w) * low[rows] + np.sqrt(w) * low[other],
                               np.sqrt(w) * cat[rows] + np.sqrt(1 - w) * cat[other]], 1).astype(np.float32)


@register_backbone("pixels")
class Pixels(Backbone):
    """Images downsampled to ``size × size`` (area averaging), RGB scaled to [0, 1]."""

    family = "baseline"
    layers_doc = "pixels"

    params = {**Backbone.params, "size": Param(16, ge=1, doc="side of the downsampled image (pixels)")}

    def configure(self, p):
        self.size = p["size"]

    def layers(self):
        return ["pixels"]

    def identity(self):
        return {**super().identity(), "size": self.size}

    def downsample(self, images: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        x = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255.0
        return F.adaptive_avg_pool2d(x, self.size).flatten(1).numpy()

    def encode(self, batch: StimulusBatch, layer: str) -> np.ndarray:
        return self.downsample(batch.images)


@register_backbone("random-features")
class RandomFeatures(Pixels):
    """A fixed random projection (seeded Gaussian, ReLU) of downsampled pixels."""

    layers_doc = "projection"

    params = {**Pixels.params, "n_features": Param(512, ge=1, doc="width of the random projection"),
              "seed": Param(0, ge=0, doc="seed of the projection"),
              "size": Param(32, ge=1, doc="side of the downsampled image (pixels)")}

    def configure(self, p):
        super().configure(p)
        self.n_features, self.seed = p["n_features"], p["seed"]

    def layers(self):
        return ["projection"]

    def identity(self):
        return {**super().identity(), "n_features": self.n_features, "seed": self.seed}

    def encode(self, batch: StimulusBatch, layer: str) -> np.ndarray:
        x = self.downsample(batch.images)
        w = np.random.default_rng(self.seed).standard_normal((x.shape[1], self.n_features)).astype(np.float32)
        return np.maximum(x @ (w / np.sqrt(x.shape[1])), 0)
