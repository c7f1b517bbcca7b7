"""A new backbone in one file: local edge energy pooled on a grid (a classic low-level model)."""
import numpy as np

from brainharness import Backbone, Param
from brainharness.capabilities import IMAGE_FEATURES


class EdgeEnergy(Backbone):
    """Gradient magnitude of the grey-level image, averaged over a ``grid × grid`` partition."""

    family = "example"
    layers_doc = "edges"
    provides = (IMAGE_FEATURES,)
    params = {**Backbone.params, "grid": Param(8, int, ge=1, doc="cells per side of the pooling grid")}

    def configure(self, p):
        self.grid = p["grid"]

    def layers(self):
        return ["edges"]

    def identity(self):  # everything that changes the numbers: part of the feature-cache key
        return {**super().identity(), "grid": self.grid}

    def encode(self, batch, layer):
        grey = batch.images.astype(np.float32).mean(-1) / 255.0  # (n, H, W)
        gy, gx = np.gradient(grey, axis=(1, 2))
        energy = np.hypot(gx, gy)
        n, h, w = energy.shape
        cells = [np.array_split(rows, self.grid, axis=2) for rows in np.array_split(energy, self.grid, axis=1)]
        return np.stack([c.mean((1, 2)) for row in cells for c in row], 1).astype(np.float32)
