"""Base class of backbone plugins: metadata separate from loading.

A plugin declares class-level metadata (family, modalities, readable layers, default weights)
that ``brainharness list backbones`` shows without importing any model library; heavy imports
and weight loading happen in :meth:`Backbone.setup`, called once before the first batch.

Weights are a small spec recorded in every result: ``source`` is ``"pretrained"`` (a hub id
or tag, with revision), ``"local"`` (a path), ``"random-init"`` (asked for explicitly), or
``"none"`` (a fixed, untrained baseline such as pixels).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import numpy as np

from .cache import cache_root
from .capabilities import IMAGE_FEATURES, describe_provides, provided
from .data import Stimuli
from .errors import ConfigError
from .params import PATH, Configurable, Param

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


class Backbone(Configurable):
    """Subclass, set the metadata, implement :meth:`encode` (and :meth:`setup` if heavy).

    Options are declared in ``params`` (``{**Backbone.params, "size": Param(16, ge=1, doc=...)}``)
    and arrive resolved in :meth:`configure` and ``self.p``; a plugin overrides :meth:`configure`,
    not ``__init__``.
    """

    kind: ClassVar[str] = "backbone"

    family: ClassVar[str] = "custom"
    modalities: ClassVar[tuple[str, ...]] = ("image",)
    layers_doc: ClassVar[str] = ""  # human-readable list of readable layers for listings
    default_weights: ClassVar[str] = "none"
    version: ClassVar[str] = "1"  # bump when the plugin's numbers change: part of the cache key and result id
    runtime_params: ClassVar[tuple[str, ...]] = ("device", "batch_size", "cache_dir")  # not in the result id
    registry_name: ClassVar[str] = ""
    # What instances provide (brainharness.capabilities): capabilities, or Offer(cap, when=..., condition=...)
    # for those that depend on the parameters. Checked against the tasks' needs before anything is built.
    provides: ClassVar[tuple] = (IMAGE_FEATURES,)

    params: ClassVar[dict[str, Param]] = {
        "weights": Param(None, str, doc="pretrained[:<id>[@<revision>]], local:<path> or random-init "
                                        "(null: the plugin's default)"),
        "layer": Param(None, str, doc="layer read out (null: the plugin's default)"),
        "readout": Param("pooled", choices=READOUTS, doc="how a layer's tokens become one feature vector"),
        "batch_size": Param(64, ge=1, doc="stimuli per forward pass"),
        "device": Param("auto", str, doc="auto, cpu, cuda or cuda:N"),
        "half": Param(True, doc="fp16 autocast on CUDA (part of the feature cache key)"),
        "cache_dir": Param(None, PATH, doc="cache root for what the backbone caches itself (the runner sets it)"),
    }

    def __init__(self, **params):
        p = self.p = self.resolve(params)  # every key declared, typed and checked (brainharness.params)
        self.weights = p.get("weights") or self.default_weights
        self.readout = p["readout"]
        self.batch_size = p["batch_size"]
        self.device = p["device"]
        self.half = p["half"]
        self.cache_dir = cache_root(p["cache_dir"])  # for what a backbone caches itself (the runner sets it)
        self.configure(p)
        self.layer = p["layer"] or self.default_layer()
        if self.layer not in self.layers():
            raise ConfigError(f"backbone {self.registry_name}: unknown layer {self.layer!r} "
                              f"(readable: {', '.join(self.layers())})")
        self._ready = False

    def configure(self, p: dict) -> None:
        """Take the plugin's own options from the resolved parameters ``p`` and set up what
        :meth:`layers` needs (nothing heavy: weights load in :meth:`setup`). Called once, after the
        common options are set and before the layer is checked."""

    # -- metadata ---------------------------------------------------------------------
    @classmethod
    def describe(cls) -> dict:
        """Listing metadata; must not import heavy libraries."""
        return {"family": cls.family, "modalities": ",".join(cls.modalities), "layers": cls.layers_doc,
                "weights": cls.default_weights, "provides": describe_provides(cls.provides)}

    @classmethod
    def provides_for(cls, params: dict) -> frozenset:
        """The capabilities a backbone built from ``params`` (its config spec) has; class-level, so
        a config is checked without building anything."""
        return provided(cls.provides, params)

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

    @classmethod
    def control(cls, params: Mapping) -> str | None:
        """What a backbone built from ``params`` is when it is a control rather than a competitor:
        a short kind such as ``"ceiling"`` or ``"shuffled floor"``; None (the default) for a
        competitor. Class-level, from the (config or resolved) parameters, so a reader can ask it
        of a stored record without building anything. Recorded in ``record["backbone"]["control"]``;
        the leaderboard lists a control as a reference row, never ranked."""
        return None

    def describe_instance(self) -> dict:
        return {"name": self.registry_name, "family": self.family, "weights": self.weights_info(),
                "layer": self.layer, "readout": self.readout, "control": type(self).control(self.p)}

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
