"""EVA / EVA-02 vision transformers through timm.

Options (besides the base ``layer``, ``readout``, ``batch_size``, ``device``, ``half``):

``model``
    A timm EVA model name, optionally with its pretrained tag (``timm.list_models(module='eva')``
    names starting with ``eva``), default ``eva02_base_patch14_224.mim_in22k`` (the EVA-02 base
    MIM encoder LLM-VEM reads). Without a tag, timm's default tag for that architecture.
``weights``
    ``pretrained`` (the model name's tag, loaded by timm's own loader
    ``timm.create_model(name, pretrained=True)`` — from the Hugging Face cache when it is there),
    ``pretrained:<tag>`` (another timm tag of the same architecture, ``@<revision>`` optional),
    ``local:<file>`` (a ``torch.save(model.state_dict())`` / safetensors / timm training
    checkpoint, loaded by ``timm.create_model(name, pretrained=True,
    pretrained_cfg_overlay=dict(file=<file>))`` so timm's checkpoint filter applies),
    ``local:<dir>`` (a folder in timm's Hugging Face layout: ``model.safetensors`` or
    ``pytorch_model.bin``, e.g. from ``timm.models.save_for_hf``), or ``random-init``.
``model_kwargs``
    Keyword arguments for ``timm.create_model`` (``Eva.__init__`` arguments: ``img_size``,
    ``patch_size``, ``embed_dim``, ``depth``, ``num_heads``, ...), e.g. a tiny EVA-02 for tests
    and the demo. Part of the cache key. ``img_size`` also sets the pretrained config's
    ``input_size`` (``pretrained_cfg_overlay``), so timm's data config resolves the size the
    model takes.
``preprocess``
    ``tensor`` (default) or ``pil``. Both apply timm's eval transform for the model
    (``timm.data.resolve_data_config`` + ``create_transform``: resize shorter side to
    ``size / crop_pct``, centre crop, mean/std, interpolation — nothing retyped). ``pil`` runs it
    per image through PIL exactly as timm users do; ``tensor`` runs the same steps batched on
    the device: the resize is done per axis (width, then height) with antialiased
    interpolation rounded to 8 bits after each pass, as PIL does, and crop/normalise are timm's
    own transform objects applied to the tensor. It matches PIL to within 2/255 per pixel
    (identical for > 99 % of values; tested) and is much faster for large batches.
``init_seed``
    Seed of the ``random-init`` weights (set in a forked RNG: the global RNG is untouched).

Layers: ``pooled`` (default) — timm's pre-logits image feature ``forward_head(x,
pre_logits=True)``: for EVA-02 the average of the final patch tokens followed by ``fc_norm``,
the representation EVA-02 is fine-tuned and evaluated with (the class token of a MIM-trained
EVA-02 is not trained for anything in particular); the read-out does not apply to it. And
``blocks.<i>`` — the residual stream after transformer block ``i`` (un-normalised), read with
timm's ``forward_intermediates(..., output_fmt='NLC', return_prefix_tokens=True)`` as
``(batch, 1 + patches, width)`` (class token first; register tokens of other EVA variants are
left out) and reduced by the read-out: ``cls``/``pooled`` → class token, ``mean`` → mean of the
patch tokens, ``flatten`` → all tokens, ``grid`` → patch tokens pooled to 2 × 2.
:meth:`Eva.encode_layers` gives several layers from one forward pass (e.g. LLM-VEM's blocks
0, 2, 4, 6, 8, 10).

Offline: pretrained weights are looked up in the Hugging Face cache (and torch hub's cache for
URL weights) first and loaded from the cached file without touching the network; only when
they are missing and the hub is reachable does timm download them. Otherwise a one-line
:class:`~brainharness.errors.WeightsUnavailable` says how to provide them.
"""
from __future__ import annotations

import difflib
import inspect
import json
import os
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from brainharness.backbone import Backbone, StimulusBatch
from brainharness.capabilities import FINE_TUNABLE, IMAGE_FEATURES
from brainharness.errors import ConfigError, DataError, HarnessError
from brainharness.features import apply_readout
from brainharness.params import Param
from brainharness.registry import register_backbone
from brainharness.weights import first_line as _first_line
from brainharness.weights import jsonable as _jsonable
from brainharness.weights import offline_reason as _offline_reason
from brainharness.weights import parse_weights, unavailable

DEFAULT_MODEL = "eva02_base_patch14_224.mim_in22k"
PREPROCESS_MODES = ("tensor", "pil")
# create_model arguments the plugin sets itself (weights, preprocessing, RGB input, outputs)
_RESERVED_KWARGS = {"pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "features_only",
                    "out_indices", "feature_cls", "pretrained_strict", "cache_dir", "device", "dtype", "in_chans",
                    "use_naflex", "scriptable", "exportable", "no_jit"}
_ARCH_CACHE: dict[str, dict] = {}  # (model name, kwargs) → block count and token layout






def _tuples(x):
    """YAML/JSON lists → tuples for timm's keyword arguments."""
    if isinstance(x, list):
        return tuple(_tuples(v) for v in x)
    if isinstance(x, dict):
        return {k: _tuples(v) for k, v in x.items()}
    return x




def _eva_models() -> list[str]:
    import timm

    return [n for n in timm.list_models(module="eva") if n.startswith("eva")]


def resize_like_pil(x, size, interpolation: str):
    """Resize a batch ``(N, C, H, W)`` of 8-bit values like torchvision's ``Resize(size)`` on a
    PIL image: ``size`` an int (shorter side, aspect kept) or ``(h, w)``; antialiased
    ``bilinear``/``bicubic``, one axis at a time (width first) with the result rounded and
    clipped to 8 bits after each pass, as PIL's resampler does. Returns float values in [0, 255].
    """
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    if isinstance(size, int) or len(size) == 1:
        short = size if isinstance(size, int) else size[0]
        # torchvision's rule for a scalar size: the shorter side becomes ``short``, the other truncated
        oh, ow = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
    else:
        oh, ow = size
    x = x.float()
    if ow != w:
        x = F.interpolate(x, size=(h, ow), mode=interpolation, antialias=True, align_corners=False)
        x = x.round_().clamp_(0, 255)
    if oh != h:
        x = F.interpolate(x, size=(oh, ow), mode=interpolation, antialias=True, align_corners=False)
        x = x.round_().clamp_(0, 255)
    return x


@register_backbone("eva")
class Eva(Backbone):
    """timm EVA / EVA-02: ``pooled`` (pre-logits feature) and ``blocks.<i>`` token read-outs."""

    family = "eva"
    modalities = ("image",)
    layers_doc = "pooled (default), blocks.0..N-1 (eva02_base: N = 12)"
    provides = (IMAGE_FEATURES, FINE_TUNABLE)
    default_weights = "pretrained"  # the model name's timm tag: mim_in22k for the default model
    version = "1"

    params = {**Backbone.params,
              "model": Param(None, str, nonempty=True, doc=f"timm EVA model name[.tag] (null: {DEFAULT_MODEL})"),
              "model_kwargs": Param(None, dict, doc="timm.create_model arguments (e.g. img_size, depth)"),
              "preprocess": Param("tensor", choices=PREPROCESS_MODES,
                                  doc="timm's eval transform batched on tensors, or per image through PIL"),
              "init_seed": Param(0, int, doc="seed of random-init weights")}

    def configure(self, p):
        import timm
        from timm.models import get_arch_pretrained_cfgs, get_pretrained_cfg, split_model_name_tag

        model, weights, preprocess = p["model"], p["weights"], p["preprocess"]
        self.preprocess_mode, self.init_seed = preprocess, p["init_seed"]
        self.model_kwargs = self._check_kwargs(p["model_kwargs"])

        # 1. the architecture and the tag that gives its preprocessing (and pretrained weights)
        self.model = model or DEFAULT_MODEL
        arch, tag = split_model_name_tag(self.model)
        names = _eva_models()
        if arch not in names:
            close = difflib.get_close_matches(arch, names, n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}" if close else \
                " (see timm.list_models('eva*', module='eva'))"
            raise ConfigError(f"eva: unknown timm EVA model {self.model!r}{hint}")
        self.arch = arch
        tags = [split_model_name_tag(n)[1] for n in get_arch_pretrained_cfgs(arch)]
        default_tag = get_pretrained_cfg(arch).tag if tags else None
        if tag and tag not in tags:
            raise ConfigError(f"eva: {tag!r} is not a timm pretrained tag of {arch!r} (tags: {', '.join(tags) or 'none'})")
        tag = tag or default_tag
        self.spec = parse_weights(weights, f"{arch}.{tag}" if tag else None)
        if self.spec.source == "pretrained":
            w_arch, w_tag = split_model_name_tag(self.spec.id) if "." in self.spec.id else (arch, self.spec.id)
            if w_arch != arch:
                raise ConfigError(f"eva: weights {self.spec.id!r} are for {w_arch!r}, not {arch!r}; set model: "
                                  f"{self.spec.id} instead")
            if w_tag not in tags:
                raise ConfigError(f"eva: {w_tag!r} is not a timm pretrained tag of {arch!r} "
                                  f"(tags: {', '.join(tags) or 'none'})")
            tag = w_tag
            self.spec = replace(self.spec, id=f"{arch}.{tag}")
        self.name = f"{arch}.{tag}" if tag else arch  # what timm.create_model gets
        self.local_file: str | None = self._local_file() if self.spec.source == "local" else None

        # 2. what follows from it before any weights are loaded: layers, tokens, preprocessing
        self.overlay: dict = {}
        if "img_size" in self.model_kwargs:
            from timm.layers import to_2tuple

            self.overlay["input_size"] = (3, *to_2tuple(_tuples(self.model_kwargs["img_size"])))
        self.arch_info = self._architecture()
        self.n_blocks = self.arch_info["depth"]
        self.has_cls = self.arch_info["has_cls"]
        pcfg = timm.models.resolve_pretrained_cfg(self.name, pretrained_cfg_overlay=self.overlay or None).to_dict()
        self.data_config = _jsonable(timm.data.resolve_data_config({}, pretrained_cfg=pcfg))
        self._transform = timm.data.create_transform(**self.data_config, is_training=False)
        if preprocess == "tensor":
            self._check_tensor_transform()
        layer = p["layer"] or self.default_layer()
        if self.readout in ("cls", "pooled") and not self.has_cls and layer != "pooled" and layer in self.layers():
            raise ConfigError(f"eva: {self.name} has no class token; use readout mean, flatten or grid")
        self._model = None

    # -- metadata ---------------------------------------------------------------------
    @classmethod
    def describe(cls) -> dict:
        return {**super().describe(), "weights": f"pretrained ({DEFAULT_MODEL}), local:<path>, random-init"}

    @staticmethod
    def _check_kwargs(kwargs) -> dict:
        from timm.models.eva import Eva as TimmEva

        if kwargs is None:
            return {}
        if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
            raise ConfigError(f"eva: model_kwargs must be a mapping of timm.create_model arguments, got {kwargs!r}")
        reserved = sorted(set(kwargs) & _RESERVED_KWARGS)
        if reserved:
            raise ConfigError(f"eva: model_kwargs may not set {', '.join(reserved)} (the plugin sets them; use "
                              "the weights option for checkpoints)")
        accepted = set(inspect.signature(TimmEva.__init__).parameters) - {"self", "device", "dtype", "in_chans"}
        unknown = sorted(set(kwargs) - accepted)
        if unknown:
            hints = [m for u in unknown for m in difflib.get_close_matches(u, accepted, n=1)]
            hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
            raise ConfigError(f"eva: unknown model_kwargs {', '.join(unknown)}{hint}")
        return _jsonable(kwargs)

    def _architecture(self) -> dict:
        """Block count and token layout, from timm building the model on the meta device."""
        import timm
        import torch

        key = json.dumps([self.name, self.model_kwargs], sort_keys=True)
        if key not in _ARCH_CACHE:
            try:
                with torch.random.fork_rng(devices=[]), torch.device("meta"):
                    m = timm.create_model(self.name, pretrained=False, pretrained_cfg_overlay=self.overlay or None,
                                          **_tuples(self.model_kwargs))
            except Exception as e:  # noqa: BLE001 - bad architecture arguments
                raise ConfigError(f"eva: timm cannot build {self.name} with model_kwargs {self.model_kwargs}: "
                                  f"{_first_line(e)}") from None
            _ARCH_CACHE[key] = {"depth": len(m.blocks), "num_prefix_tokens": int(m.num_prefix_tokens),
                                "has_cls": getattr(m, "cls_token", None) is not None, "embed_dim": int(m.embed_dim),
                                "grid": list(m.patch_embed.grid_size)}
        return _ARCH_CACHE[key]

    def _check_tensor_transform(self) -> None:
        import torchvision.transforms as T
        from timm.data import MaybeToTensor

        for step in self._transform.transforms:
            if isinstance(step, T.Resize):
                if step.max_size is not None or step.interpolation.value not in ("bilinear", "bicubic"):
                    break
            elif not isinstance(step, (T.CenterCrop, MaybeToTensor, T.ToTensor, T.Normalize)):
                break
        else:
            return
        raise ConfigError(f"eva: timm's transform for {self.name} has a step the tensor preprocessing does not "
                          f"reproduce ({type(step).__name__}); set preprocess: pil")

    def _local_file(self) -> str:
        path = Path(self.spec.id)
        if path.is_file():
            return str(path)
        for name in ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors"):
            if (path / name).is_file():
                cfg = path / "config.json"
                if cfg.is_file():
                    try:
                        saved = json.loads(cfg.read_text()).get("architecture")
                    except (OSError, ValueError) as e:
                        raise ConfigError(f"eva: cannot read {cfg}: {_first_line(e)}") from None
                    if saved and saved != self.arch:
                        raise ConfigError(f"eva: {path} holds a {saved!r} checkpoint, not {self.arch!r}; set model")
                return str(path / name)
        raise ConfigError(f"eva: local folder {path} has no model.safetensors or pytorch_model.bin "
                          "(timm's Hugging Face layout); or point weights at the checkpoint file")

    def layers(self) -> list[str]:
        return ["pooled"] + [f"blocks.{i}" for i in range(self.n_blocks)]

    def default_layer(self) -> str:
        return "pooled"

    def weights_info(self) -> dict:
        info = {**self.spec.info(), "model": self.name}
        if self.spec.source == "pretrained":
            cached = self._cached_pretrained()
            info["hub"] = self._pretrained_cfg().get("hf_hub_id") or self._pretrained_cfg().get("url")
            if info["revision"] is None and cached and Path(cached).parent.parent.name == "snapshots":
                info["revision"] = Path(cached).parent.name  # the cached snapshot's commit
        return info

    def identity(self) -> dict:
        import timm

        out = {**super().identity(), "model": self.name, "model_kwargs": self.model_kwargs,
               "preprocess": {"mode": self.preprocess_mode, **self.data_config}, "timm": timm.__version__}
        if self.spec.source == "random-init":
            out["init_seed"] = self.init_seed
        return out

    def describe_instance(self) -> dict:
        return {**super().describe_instance(), "model": self.name, "model_kwargs": self.model_kwargs,
                "preprocess": {"mode": self.preprocess_mode, **self.data_config}}

    # -- loading ----------------------------------------------------------------------
    def _pretrained_cfg(self) -> dict:
        import timm

        return timm.models.resolve_pretrained_cfg(self.name, pretrained_cfg_overlay=self.overlay or None).to_dict()

    def _cached_pretrained(self) -> str | None:
        """The pretrained checkpoint if timm's sources are already cached here (no network)."""
        from timm.models import _hub

        cfg = self._pretrained_cfg()
        if cfg.get("file"):
            return cfg["file"] if os.path.isfile(cfg["file"]) else None
        hub = cfg.get("hf_hub_id")
        if hub and _hub.has_hf_hub():
            from huggingface_hub import try_to_load_from_cache

            repo, _, rev = hub.partition("@")
            filename = cfg.get("hf_hub_filename") or _hub.HF_WEIGHTS_NAME
            safe = getattr(_hub, "_get_safe_alternatives", lambda f: [])
            for name in [*safe(filename), filename]:
                hit = try_to_load_from_cache(repo, name, revision=self.spec.revision or rev or None)
                if isinstance(hit, str):
                    return hit
            return None
        if cfg.get("url"):
            import torch

            path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg["url"]).path)
            return str(path) if path.is_file() else None
        return None

    def _create(self):
        import timm

        kw = _tuples(self.model_kwargs)
        src = self.spec.source
        if src == "random-init":
            return timm.create_model(self.name, pretrained=False, pretrained_cfg_overlay=self.overlay or None, **kw)
        if src == "local":
            try:
                return timm.create_model(self.name, pretrained=True,
                                         pretrained_cfg_overlay={**self.overlay, "file": self.local_file}, **kw)
            except Exception as e:  # noqa: BLE001 - any loader failure is a bad checkpoint for this model
                what = f"{self.name} with model_kwargs {self.model_kwargs}" if kw else self.name
                raise ConfigError(f"eva: cannot load checkpoint {self.local_file} as {what}: {_first_line(e)}") from e
        # a pretrained tag: from the cache without the network when it is there
        how = (f"download it once where there is network (timm.create_model('{self.name}', pretrained=True)) "
               "into the Hugging Face cache (HF_HOME)")
        try:
            cached = self._cached_pretrained()
            if cached:
                return timm.create_model(self.name, pretrained=True,
                                         pretrained_cfg_overlay={**self.overlay, "file": cached}, **kw)
            cfg = self._pretrained_cfg()
            overlay = dict(self.overlay)
            if cfg.get("hf_hub_id"):
                host = "huggingface.co"
                try:
                    from huggingface_hub import constants

                    host = urlparse(constants.ENDPOINT).hostname or host
                except ImportError:
                    pass
                if self.spec.revision:
                    overlay["hf_hub_id"] = f"{cfg['hf_hub_id'].partition('@')[0]}@{self.spec.revision}"
            else:
                host = urlparse(cfg.get("url") or "https://huggingface.co").hostname
            reason = _offline_reason(host)
            if reason:
                raise OSError(f"not in the local cache and {reason}")
            return timm.create_model(self.name, pretrained=True, pretrained_cfg_overlay=overlay or None, **kw)
        except Exception as e:  # noqa: BLE001
            raise unavailable(f"eva {self.name}", self.spec, e, how) from e

    def setup(self) -> None:
        import timm
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.init_seed)  # only random-init weights depend on it
            model = self._create()
        got = _jsonable(timm.data.resolve_model_data_config(model))
        if got != self.data_config:
            raise HarnessError(f"eva: timm's data config {got} differs from the expected {self.data_config} used "
                               "in the cache key (plugin bug)")
        self._model = model.eval().requires_grad_(False).to(self.torch_device())

    @property
    def torch_model(self):
        """The loaded timm model (loaded on first use), e.g. to save its ``state_dict``."""
        self.ensure_ready()
        return self._model

    # -- running ----------------------------------------------------------------------
    def pixels(self, images: np.ndarray, device=None):
        """uint8 (N, H, W, 3) → the model's input batch through timm's eval transform."""
        import torch

        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise DataError(f"eva: images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        device = device or self.torch_device()
        if self.preprocess_mode == "pil":
            from PIL import Image

            return torch.stack([self._transform(Image.fromarray(im)) for im in images]).to(device)
        import torchvision.transforms as T

        x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2)
        scaled = False  # 0..255 until the ToTensor step, as in the PIL pipeline
        for step in self._transform.transforms:
            if isinstance(step, T.Resize):
                x = resize_like_pil(x, step.size, step.interpolation.value)
            elif isinstance(step, T.CenterCrop):
                x = step(x)
            elif isinstance(step, T.Normalize):
                x = step(x)
            else:  # MaybeToTensor / ToTensor
                x, scaled = x.float() / 255.0, True
        assert scaled, "timm transform without a ToTensor step"
        return x.contiguous()

    def encode(self, batch: StimulusBatch, layer: str) -> np.ndarray:
        return self.encode_layers(batch, [layer])[layer]

    def block_readouts(self, x, indices: list[int], model=None, final: bool = False) -> tuple[list, object]:
        """Read-outs of blocks ``indices`` for pixel tensor ``x`` → ``([tensor per block], final
        features or None)``; differentiable (callers choose ``no_grad``). ``model``: a copy of
        this backbone's network, e.g. one being fine-tuned (default: its own); ``final``: also
        run to the end for the pooled read-out."""
        import torch

        m = model if model is not None else self._model
        prefix = self.arch_info["num_prefix_tokens"] > 0
        opts = dict(indices=indices, output_fmt="NLC", return_prefix_tokens=prefix)
        if final:
            last, inter = m.forward_intermediates(x, **opts) if indices else (m.forward_features(x), [])
        else:
            last, inter = None, m.forward_intermediates(x, intermediates_only=True, stop_early=True, **opts)
        outs = []
        for item in inter:
            patches, pre = item if prefix else (item, None)
            # (batch, tokens, width): the class token first, then the patches in raster order
            tokens = torch.cat([pre[:, :1], patches], 1) if self.has_cls else patches
            outs.append(apply_readout(tokens.float(), self.readout, has_cls=self.has_cls))
        return outs, last

    def encode_layers(self, batch: StimulusBatch, layers) -> dict[str, np.ndarray]:
        """Features of ``batch`` at each of ``layers`` from one forward pass → ``{layer: array}``."""
        import torch

        layers = list(dict.fromkeys(layers))
        if not layers:
            return {}
        bad = [layer for layer in layers if layer not in self.layers()]
        if bad:
            raise ConfigError(f"eva: unknown layer(s) {', '.join(map(repr, bad))} (readable: pooled, "
                              f"blocks.0..{self.n_blocks - 1})")
        self.ensure_ready()
        x = self.pixels(batch.images)
        idx = sorted({int(layer.split(".", 1)[1]) for layer in layers if layer != "pooled"})
        with torch.no_grad(), self.autocast():
            outs, final = self.block_readouts(x, idx, final="pooled" in layers)
            out = dict(zip((f"blocks.{i}" for i in idx), outs))
            if final is not None:
                out["pooled"] = self._model.forward_head(final, pre_logits=True)
        return {layer: out[layer].float().cpu().numpy() for layer in layers}
