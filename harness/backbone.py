"""Base class of backbone plugins: metadata separate from loading.

A plugin declares class-level metadata (family, modalities, readable layers, default weights)
that ``brainharness list backbones`` shows without importing any model library; heavy imports
and weight loading happen in :meth:`Backbone.setup`, called once before the first batch.

Weights are a small spec recorded in every result: ``source`` is ``"pretrained"`` (a hub id
or tag, with revision), ``"local"`` (a path), ``"random-init"`` (asked for explicitly), or
``"none"`` (a fixed, untrained baseline such as pixels).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import numpy as np

from .data import Stimuli
from .errors import ConfigError

READOUTS = ("pooled", "cls", "mean", "flatten", "grid")


@dataclass
class StimulusBatch:
    """A batch of stimuli; images are read only if the backbone asks for them."""

    stimuli: Stimuli
    ids: np.ndarray

    @cached_property
    def images(self) -> np.ndarray:
        return self.stimuli.images(self.ids)

    @cached_property
    def captions(self) -> list[list[str]]:
        return [self.stimuli.captions.get(int(i), []) for i in self.ids]


class Backbone:
    """Subclass, set the metadata, implement :meth:`encode` (and :meth:`setup` if heavy)."""

    family: ClassVar[str] = "custom"
    modalities: ClassVar[tuple[str, ...]] = ("image",)
    layers_doc: ClassVar[str] = ""  # human-readable list of readable layers for listings
    default_weights: ClassVar[str] = "none"
    version: ClassVar[str] = "1"  # bump when the plugin's numbers change: part of the cache key
    registry_name: ClassVar[str] = ""

    def __init__(self, weights: str | None = None, layer: str | None = None, readout: str = "pooled",
                 batch_size: int = 64, device: str = "auto", half: bool = True, **options):
        if options:
            raise ConfigError(f"backbone {self.registry_name or type(self).__name__}: unknown option(s) "
                              f"{', '.join(sorted(options))}")
        if readout not in READOUTS:
            raise ConfigError(f"readout must be one of {', '.join(READOUTS)}, got {readout!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.weights = weights or self.default_weights
        self.readout = readout
        self.batch_size = batch_size
        self.device = device
        self.half = bool(half)
        self.layer = layer or self.default_layer()
        if self.layer not in self.layers():
            raise ConfigError(f"backbone {self.registry_name}: unknown layer {self.layer!r} "
                              f"(readable: {', '.join(self.layers())})")
        self._ready = False

    # -- metadata ---------------------------------------------------------------------
    @classmethod
    def describe(cls) -> dict:
        """Listing metadata; must not import heavy libraries."""
        return {"family": cls.family, "modalities": ",".join(cls.modalities), "layers": cls.layers_doc,
                "weights": cls.default_weights}

    def layers(self) -> list[str]:
        raise NotImplementedError

    def default_layer(self) -> str:
        return self.layers()[-1]

    def weights_info(self) -> dict:
        """``{source, id, revision}`` of the weights actually used."""
        return {"source": self.weights, "id": None, "revision": None}

    def identity(self) -> dict | None:
        """Everything that changes the numbers, for the feature cache; ``None`` = do not cache."""
        return {"backbone": self.registry_name, "plugin_version": self.version, "weights": self.weights_info(),
                "precision": self.precision()}

    def torch_device(self):
        from .ridge import resolve_device

        return resolve_device(self.device)

    def precision(self) -> str:
        """``fp16`` on CUDA when ``half`` (the default), else ``fp32``; part of the cache key."""
        return "fp16" if self.half and self.torch_device().type == "cuda" else "fp32"

    def autocast(self):
        """Half-precision autocast on CUDA, a no-op on CPU."""
        import contextlib

        import torch

        if self.precision() == "fp16":
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def describe_instance(self) -> dict:
        return {"name": self.registry_name, "family": self.family, "weights": self.weights_info(),
                "layer": self.layer, "readout": self.readout}

    # -- running ----------------------------------------------------------------------
    def setup(self) -> None:
        """Load weights and move to the device (called once, lazily)."""

    def ensure_ready(self) -> None:
        if not self._ready:
            self.setup()
            self._ready = True

    def encode(self, batch: StimulusBatch, layer: str) -> np.ndarray:
        """Features of ``batch`` at ``layer`` with this backbone's read-out → (batch, ...)."""
        raise NotImplementedError

    def encode_layers(self, batch: StimulusBatch, layers) -> dict[str, np.ndarray]:
        """Features of ``batch`` at each of ``layers`` → ``{layer: (batch, ...)}``.

        The default calls :meth:`encode` once per layer. Override it where one forward pass
        yields every layer (e.g. timm/open_clip ``forward_intermediates``): the feature cache
        extracts several layers through it in a single pass over the stimuli.
        """
        return {layer: self.encode(batch, layer) for layer in dict.fromkeys(layers)}

    def encode_text(self, texts: list[str]) -> np.ndarray:
        raise ConfigError(f"backbone {self.registry_name} has no text modality")
