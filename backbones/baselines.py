"""Baseline backbones: the synthetic oracle, raw pixels, and a fixed random projection.

They anchor every leaderboard: ``oracle`` is the ceiling the harness must reach on the
synthetic data (and its ``shuffle_seed`` variant the floor), ``pixels`` and
``random-features`` are what any learned backbone has to beat.
"""
from __future__ import annotations

import numpy as np

from harness.backbone import Backbone, StimulusBatch
from harness.errors import ConfigError, DataError
from harness.registry import register_backbone


@register_backbone("oracle")
class Oracle(Backbone):
    """The generating features of the synthetic dataset (layers ``low``, ``category``, ``all``).

    ``shuffle_seed`` permutes which stimulus's features each stimulus gets — the same
    permutation for train and test — a control that must score at chance.
    """

    family = "baseline"
    layers_doc = "low, category, all"

    def __init__(self, shuffle_seed: int | None = None, **kw):
        self.shuffle_seed = shuffle_seed
        super().__init__(**kw)

    def layers(self):
        return ["low", "category", "all"]

    def identity(self):
        return {**super().identity(), "shuffle_seed": self.shuffle_seed}

    def describe_instance(self):
        return {**super().describe_instance(), "shuffle_seed": self.shuffle_seed}

    def encode(self, batch: StimulusBatch, layer: str) -> np.ndarray:
        table = batch.stimuli.extras.get(f"features_{layer}")
        if table is None:
            raise DataError("the oracle backbone needs a dataset with generating features (the synthetic one)")
        rows = batch.stimuli.rows(batch.ids)
        if self.shuffle_seed is not None:
            rows = np.random.default_rng(self.shuffle_seed).permutation(len(batch.stimuli))[rows]
        return table[rows]


@register_backbone("pixels")
class Pixels(Backbone):
    """Images downsampled to ``size × size`` (area averaging), RGB scaled to [0, 1]."""

    family = "baseline"
    layers_doc = "pixels"

    def __init__(self, size: int = 16, **kw):
        if not isinstance(size, int) or size < 1:
            raise ConfigError(f"pixels: size must be a positive integer, got {size!r}")
        self.size = size
        super().__init__(**kw)

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

    def __init__(self, n_features: int = 512, seed: int = 0, size: int = 32, **kw):
        if not isinstance(n_features, int) or n_features < 1:
            raise ConfigError(f"random-features: n_features must be a positive integer, got {n_features!r}")
        self.n_features, self.seed = n_features, seed
        super().__init__(size=size, **kw)

    def layers(self):
        return ["projection"]

    def identity(self):
        return {**super().identity(), "n_features": self.n_features, "seed": self.seed}

    def encode(self, batch: StimulusBatch, layer: str) -> np.ndarray:
        x = self.downsample(batch.images)
        w = np.random.default_rng(self.seed).standard_normal((x.shape[1], self.n_features)).astype(np.float32)
        return np.maximum(x @ (w / np.sqrt(x.shape[1])), 0)
