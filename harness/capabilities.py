"""Declared contracts between tasks, backbones and datasets.

A **capability** is something a task can need: from a backbone (image features, text features,
Q-Former query tokens, a caption generator, an image-text retrieval model, a fine-tunable torch
module with block read-outs) or from a dataset (captions, descriptions, single trials, ROI
masks). Each one is a typed protocol — the members a task may use once the capability is
declared — and a one-line summary for messages and ``brainharness list``.

Declarations are class-level, so a config is checked before anything is loaded or built:

* a backbone class (:class:`brainharness.backbone.Backbone`) and a dataset loader class
  (:class:`brainharness.data.DatasetLoader`) list what they provide in ``provides``; an entry may
  hold only for some parameters: ``Offer(QUERY_CAPTIONER, when=lambda p: ...,
  condition="variant: generation")``, evaluated by the class method ``provides_for(params)``;
* a task class lists what it needs in ``needs``: a bare capability is needed from the unit's
  backbone (a backbone capability) or from the dataset (a dataset capability);
  ``Need(cap, role="retrieval_backbone")`` needs it from the backbone spec held in that task
  parameter (``null`` there = the unit's backbone); ``when``/``condition`` make a need depend on
  the task's (validated) parameters.

:func:`check_config` evaluates them for every (dataset, backbone, task) of a config and raises
one :class:`~brainharness.errors.ConfigError` line naming the pair and the missing capability;
the runner calls it before it loads data, builds a model or creates a folder. Tasks then use
the declared members directly — no ``hasattr`` probing.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from . import registry
from .config import spec_label
from .errors import ConfigError


# -- protocols: what a provider has ---------------------------------------------------------
@runtime_checkable
class ImageFeatures(Protocol):
    """Features of stimuli at named layers (every backbone)."""

    def layers(self) -> list[str]: ...
    def encode(self, batch, layer: str) -> np.ndarray: ...
    def encode_layers(self, batch, layers) -> dict[str, np.ndarray]: ...


@runtime_checkable
class TextFeatures(Protocol):
    """Embeddings of free text in the backbone's own text space."""

    def encode_text(self, texts: list[str]) -> np.ndarray: ...


@runtime_checkable
class QueryTokens(Protocol):
    """Q-Former query outputs (layer ``qformer``): ``num_query_tokens`` tokens of the Q-Former width."""

    @property
    def num_query_tokens(self) -> int: ...


@runtime_checkable
class QueryCaptioner(QueryTokens, Protocol):
    """BLIP-2 generation: (predicted) query outputs → ``language_projection`` → language model."""

    @property
    def language_projection(self): ...  # torch module: Q-Former width → language-model width
    @property
    def language_model(self): ...  # the causal language model the projected queries prefix
    @property
    def tokenizer(self): ...
    def generate_from_query_embeds(self, query_embeds, prompt: str | None = None,
                                   **generate_kwargs) -> list[str]: ...


@runtime_checkable
class ImageTextRetrieval(TextFeatures, Protocol):
    """BLIP-2 retrieval: the image-text space and the Q-Former text path (torch modules)."""

    @property
    def vision_projection(self): ...  # query outputs → shared space
    @property
    def text_projection(self): ...  # text [CLS] → shared space
    @property
    def embeddings(self): ...  # the Q-Former's text embeddings
    @property
    def qformer(self): ...
    @property
    def tokenizer(self): ...


@runtime_checkable
class FineTunable(Protocol):
    """A torch module whose transformer blocks can be read out (and fine-tuned on a copy)."""

    n_blocks: int
    data_config: dict  # the model's input preprocessing (``input_size`` = (C, H, W))

    @property
    def torch_model(self): ...
    def block_readouts(self, x, indices: list[int], model=None, final: bool = False) -> tuple[list, Any]: ...
    def pixels(self, images: np.ndarray, device=None): ...
    def torch_device(self): ...


@runtime_checkable
class Captioned(Protocol):
    """``Stimuli.captions``: several captions per stimulus id."""

    captions: Mapping[int, list[str]]


@runtime_checkable
class Described(Protocol):
    """``Stimuli.descriptions``: one (e.g. LLM-written) description per stimulus id."""

    descriptions: Mapping[int, str]


@runtime_checkable
class SingleTrials(Protocol):
    """``Responses.trials`` / ``trial_stim``: the single trials behind the averages (noise ceiling)."""

    trials: np.ndarray
    trial_stim: np.ndarray


@runtime_checkable
class RoiMasks(Protocol):
    """``Subject.rois``: named ROI masks (visual areas, category-selective regions)."""

    rois: dict[str, np.ndarray]


# -- capabilities -------------------------------------------------------------------------
@dataclass(frozen=True)
class Capability:
    name: str  # identifier shown by `brainharness list`
    summary: str  # what messages say ("… needs <summary> from its backbone")
    protocol: type
    side: str  # "backbone" or "dataset"

    def members(self) -> list[str]:
        """Names the protocol declares (its own and inherited)."""
        names: dict[str, None] = {}
        for klass in reversed(self.protocol.__mro__):
            if klass in (object, Protocol) or not getattr(klass, "_is_protocol", False):
                continue
            for name in [*getattr(klass, "__annotations__", {}), *vars(klass)]:
                if not name.startswith("_"):
                    names[name] = None
        return list(names)

    def __str__(self) -> str:
        return self.name


IMAGE_FEATURES = Capability("image_features", "image features", ImageFeatures, "backbone")
TEXT_FEATURES = Capability("text_features", "text features", TextFeatures, "backbone")
QUERY_TOKENS = Capability("query_tokens", "Q-Former query tokens (BLIP-2)", QueryTokens, "backbone")
QUERY_CAPTIONER = Capability("caption_generator", "a caption generator from query tokens (BLIP-2 generation)",
                             QueryCaptioner, "backbone")
IMAGE_TEXT_RETRIEVAL = Capability("image_text_retrieval", "an image-text retrieval model (BLIP-2 retrieval)",
                                  ImageTextRetrieval, "backbone")
FINE_TUNABLE = Capability("fine_tunable", "a fine-tunable torch module with block read-outs", FineTunable,
                          "backbone")
CAPTIONS = Capability("captions", "captions", Captioned, "dataset")
DESCRIPTIONS = Capability("descriptions", "descriptions per stimulus", Described, "dataset")
SINGLE_TRIALS = Capability("single_trials", "single trials (for the noise ceiling)", SingleTrials, "dataset")
ROI_MASKS = Capability("roi_masks", "named ROI masks", RoiMasks, "dataset")

CAPABILITIES = {c.name: c for c in (IMAGE_FEATURES, TEXT_FEATURES, QUERY_TOKENS, QUERY_CAPTIONER,
                                    IMAGE_TEXT_RETRIEVAL, FINE_TUNABLE, CAPTIONS, DESCRIPTIONS, SINGLE_TRIALS,
                                    ROI_MASKS)}


# -- declarations ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Offer:
    """A capability a backbone or dataset provides only for some parameters."""

    capability: Capability
    when: Callable[[dict], bool] | None = None  # gets the plugin's parameters as configured
    condition: str = ""  # human reading of ``when``, e.g. "variant: generation"

    def holds(self, params: dict) -> bool:
        return self.when is None or bool(self.when(params))


@dataclass(frozen=True)
class Need:
    """A capability a task needs, from ``role``, possibly only for some of its parameters.

    ``role``: ``None`` — the unit's backbone (backbone capabilities) or the dataset (dataset
    capabilities); otherwise the name of a task parameter holding a backbone spec
    (``{name: ..., ...}``; ``null`` = the unit's backbone).
    """

    capability: Capability
    role: str | None = None
    when: Callable[[dict], bool] | None = None  # gets the task's validated parameters
    condition: str = ""  # e.g. "with captioning or roi_captions"

    def holds(self, params: dict) -> bool:
        return self.when is None or bool(self.when(params))

    @property
    def source(self) -> str:
        return self.role or ("dataset" if self.capability.side == "dataset" else "backbone")


def _offers(declared: Sequence) -> list[Offer]:
    return [d if isinstance(d, Offer) else Offer(d) for d in declared]


def needs_of(declared: Sequence) -> list[Need]:
    """A task's ``needs`` entries as :class:`Need` (a bare capability = from the unit's backbone/dataset)."""
    return [d if isinstance(d, Need) else Need(d) for d in declared]


def provided(declared: Sequence, params: dict) -> frozenset[Capability]:
    """The capabilities a ``provides`` declaration gives for ``params``."""
    return frozenset(o.capability for o in _offers(declared) if o.holds(params))


def describe_provides(declared: Sequence) -> str:
    """``image_features, caption_generator [variant: generation], …`` for listings."""
    return ", ".join(o.capability.name + (f" [{o.condition}]" if o.condition else "") for o in _offers(declared))


def describe_needs(declared: Sequence) -> str:
    """``backbone: query_tokens; retrieval_backbone: image_text_retrieval [with …]`` for listings."""
    groups: dict[str, list[str]] = {}
    for n in needs_of(declared):
        groups.setdefault(n.source, []).append(n.capability.name + (f" [{n.condition}]" if n.condition else ""))
    return "; ".join(f"{source}: {', '.join(items)}" for source, items in groups.items())


def missing_members(obj, capability: Capability) -> list[str]:
    """Protocol members ``obj`` lacks, looked up statically (no property is evaluated, so
    nothing is loaded): a declaration/implementation conformance check for plugin tests."""
    missing = []
    for name in capability.members():
        try:
            inspect.getattr_static(obj, name)
        except AttributeError:
            missing.append(name)
    return missing


# -- checking a config ----------------------------------------------------------------------
@dataclass(frozen=True)
class _Party:
    """A backbone or dataset of a config: label, plugin name, what it provides with its parameters."""

    kind: str
    label: str
    name: str
    offered: frozenset
    declared: tuple

    @classmethod
    def of(cls, kind: str, spec: dict) -> "_Party":
        plugin = (registry.backbones if kind == "backbone" else registry.datasets).get(spec["name"])
        params = {k: v for k, v in spec.items() if k not in ("name", "label")}
        return cls(kind, spec_label(spec), spec["name"], frozenset(plugin.provides_for(params)),
                   tuple(plugin.provides))

    def lacks(self, capability: Capability) -> str | None:
        """``None`` when provided, else why not: ``""`` or ``" (only with …)"``."""
        if capability in self.offered:
            return None
        only = [o.condition for o in _offers(self.declared) if o.capability == capability and o.condition]
        return f" (only with {' or '.join(only)})" if only else ""


def check_unit(task_label: str, task, backbone: dict, dataset: dict) -> None:
    """Raise ConfigError (one line) unless ``backbone`` and ``dataset`` (config specs) provide
    everything the (constructed, validated) ``task`` needs."""
    parties = {"backbone": _Party.of("backbone", backbone), "dataset": _Party.of("dataset", dataset)}
    name = task.registry_name or type(task).__name__
    who = f"task '{task_label}'" + (f" ({name})" if name != task_label else "")
    for need in task.requirements():
        party = parties["dataset" if need.capability.side == "dataset" else "backbone"]
        source = need.source
        if need.role is not None and need.capability.side == "backbone":
            spec = task.p.get(need.role)
            if spec is not None:
                party = _Party.of("backbone", spec)
            else:
                source = f"{need.role} (null: the unit's backbone)"
        reason = party.lacks(need.capability)
        if reason is not None:
            cond = f" {need.condition}" if need.condition else ""
            raise ConfigError(f"{who}{cond} needs {need.capability.summary} from its {source}; {party.kind} "
                              f"'{party.label}' ({party.name}) does not provide it{reason}")


def check_config(cfg: dict, tasks: Sequence[tuple[dict, Any]]) -> None:
    """Check every (dataset, backbone, task) of a resolved config; ``tasks`` pairs each task
    spec with its constructed task. Imports plugin classes only: no data, model or folder."""
    for spec, task in tasks:
        for backbone in cfg["backbones"]:
            check_unit(spec_label(spec), task, backbone, cfg["dataset"])
