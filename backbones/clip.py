"""CLIP image/text towers through open_clip.

Options (besides the base ``layer``, ``readout``, ``batch_size``, ``device``, ``half``):

``model``
    An open_clip model name (``open_clip.list_models()``), default ``ViT-B-32``.
``weights``
    ``pretrained`` (the model's default tag: ``openai`` where it exists, else its first tag),
    ``pretrained:<tag>`` (``open_clip.list_pretrained_tags_by_model(model)``),
    ``local:<file>`` (a ``torch.save(model.state_dict())`` file or an open_clip training
    checkpoint, loaded by ``open_clip.create_model_and_transforms(model, pretrained=<file>)``),
    ``local:<dir>`` (open_clip's own ``local-dir`` format: ``open_clip_config.json`` with the
    model and preprocessing config, plus the weights), or ``random-init``.
``model_config``
    A custom architecture ``{embed_dim, vision_cfg, text_cfg, ...}`` in open_clip's config
    format (tiny models for tests and the demo). It is registered with
    ``open_clip.add_model_config`` under a name derived from its content; ``model`` then only
    labels it.
``quick_gelu``
    Force the QuickGELU activation on/off. Default: what the pretrained tag was trained with
    (open_clip's ``openai`` tags use QuickGELU, the plain ``ViT-B-32`` config does not), else
    the model config's own setting.
``init_seed``
    Seed of the ``random-init`` weights (set in a forked RNG: the global RNG is untouched).

Layers: ``embedding`` — the projected, pooled image embedding of ``encode_image``
(unnormalised; the default) — and, for ViT towers, ``blocks.<i>`` — the residual stream after
visual transformer block ``i``, read through open_clip's ``forward_intermediates`` as
``(batch, 1 + patches, width)`` (class token first) and reduced by the read-out.

Preprocessing is open_clip's inference transform for the loaded model (size, mean/std,
interpolation, resize mode from the tag, the ``local-dir`` config or open_clip's defaults),
applied per image through PIL exactly as open_clip users do; it is part of the cache key. A
``local:<file>`` checkpoint gets open_clip's default preprocessing (what
``create_model_and_transforms(model, pretrained=<file>)`` gives); save in the ``local-dir``
format to carry other statistics.

Offline: pretrained tags are looked up in open_clip's own caches (the Hugging Face hub cache,
``~/.cache/clip``) first and loaded from there without touching the network; only when the
file is missing and the network is reachable does open_clip download it. Otherwise a one-line
:class:`~brainharness.errors.WeightsUnavailable` says how to provide the weights.
"""
from __future__ import annotations

import atexit
import difflib
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from brainharness.backbone import Backbone, StimulusBatch
from brainharness.capabilities import IMAGE_FEATURES, TEXT_FEATURES
from brainharness.errors import ConfigError, DataError, HarnessError
from brainharness.features import apply_readout
from brainharness.params import Param
from brainharness.registry import register_backbone
from brainharness.weights import first_line as _first_line
from brainharness.weights import jsonable as _jsonable
from brainharness.weights import offline_reason as _offline_reason
from brainharness.weights import parse_weights, unavailable

DEFAULT_MODEL = "ViT-B-32"
_CONFIG_DIR: Path | None = None  # where custom model configs are written for open_clip






def register_model_config(cfg: dict, label: str = "custom") -> str:
    """Register ``cfg`` with open_clip (``add_model_config``) under a content-derived name."""
    global _CONFIG_DIR
    import open_clip

    blob = json.dumps(_jsonable(cfg), sort_keys=True).encode()
    name = f"bh-{re.sub(r'[^A-Za-z0-9_.-]+', '-', label)}-{hashlib.sha256(blob).hexdigest()[:12]}"
    if name not in open_clip.list_models():
        if _CONFIG_DIR is None:
            _CONFIG_DIR = Path(tempfile.mkdtemp(prefix="brainharness-open_clip-"))
            atexit.register(shutil.rmtree, _CONFIG_DIR, True)
        path = _CONFIG_DIR / f"{name}.json"
        path.write_bytes(blob)
        open_clip.add_model_config(path)
    return name




@register_backbone("clip")
class Clip(Backbone):
    """open_clip CLIP: ``embedding`` (projected image embedding) and ``blocks.<i>`` of the ViT."""

    family = "clip"
    modalities = ("image", "text")
    layers_doc = "embedding, blocks.0..N-1 (ViT towers)"
    provides = (IMAGE_FEATURES, TEXT_FEATURES)  # open_clip CLIP models always have a text tower
    default_weights = "pretrained"  # the model's default tag: openai for ViT-B-32
    version = "1"

    params = {**Backbone.params,
              "model": Param(None, str, nonempty=True, doc=f"open_clip model name (null: {DEFAULT_MODEL})"),
              "model_config": Param(None, dict, doc="a custom open_clip model config: embed_dim, vision_cfg, text_cfg"),
              "quick_gelu": Param(None, bool, doc="QuickGELU activations (null: as the tag or config says)"),
              "init_seed": Param(0, int, doc="seed of random-init weights")}

    def configure(self, p):
        import open_clip

        model, weights, model_config, quick_gelu = p["model"], p["weights"], p["model_config"], p["quick_gelu"]
        self.init_seed = p["init_seed"]
        self.local_dir: Path | None = None

        # 1. the architecture: a custom config, a built-in name, or a local-dir checkpoint
        if model_config is not None:
            self._check_config(model_config)
            self.model = model or "custom"
            self.model_name = register_model_config(model_config, self.model)
        else:
            self.model = model or DEFAULT_MODEL
            self.model_name = self.model.replace("/", "-")  # as open_clip looks names up
            if self.model_name not in open_clip.list_models():
                close = difflib.get_close_matches(self.model_name, open_clip.list_models(), n=3)
                hint = f"; did you mean {', '.join(repr(c) for c in close)}" if close else \
                    " (see open_clip.list_models())"
                raise ConfigError(f"clip: unknown open_clip model {self.model!r}{hint}")
        tags = open_clip.list_pretrained_tags_by_model(self.model_name)
        default_tag = "openai" if "openai" in tags else (tags[0] if tags else None)
        if (weights or "pretrained") == "pretrained" and default_tag is None:
            raise ConfigError(f"clip: model {self.model!r} has no open_clip pretrained tags; "
                              "set weights: local:<path> or random-init")
        self.spec = parse_weights(weights, default_tag)
        self.tag_cfg: dict = {}
        if self.spec.source == "pretrained":
            if self.spec.revision:
                raise ConfigError(f"clip: open_clip tags have no revisions ({self.spec.id}@{self.spec.revision})")
            if self.spec.id not in tags:
                raise ConfigError(f"clip: {self.spec.id!r} is not an open_clip pretrained tag of {self.model!r} "
                                  f"(tags: {', '.join(tags) or 'none'})")
            self.tag_cfg = open_clip.get_pretrained_cfg(self.model_name, self.spec.id)
        if self.spec.source == "local" and Path(self.spec.id).is_dir():
            cfg_file = Path(self.spec.id) / "open_clip_config.json"
            if not cfg_file.is_file():
                raise ConfigError(f"clip: local folder {self.spec.id} has no open_clip_config.json "
                                  "(open_clip's local-dir format); or point weights at the checkpoint file")
            if model is not None or model_config is not None:
                raise ConfigError("clip: a local-dir checkpoint carries its own model config; drop 'model' and "
                                  "'model_config'")
            self.local_dir = Path(self.spec.id)
            self.model = self.local_dir.name
            self.model_name = f"local-dir:{self.local_dir}"
        self.arch = self._architecture()

        # 2. what follows from it, before any weights are loaded: layers and preprocessing
        vision = self.arch["vision_cfg"]
        self.n_blocks = vision.get("layers", 12) if not vision.get("timm_model_name") \
            and isinstance(vision.get("layers", 12), int) else 0
        self.quick_gelu = (quick_gelu if quick_gelu is not None else
                           bool(self.tag_cfg.get("quick_gelu", False)) if self.tag_cfg else
                           bool(self.arch.get("quick_gelu", False)))
        self.preprocess_cfg = self._expected_preprocess()
        self._model = self._transform = self._tokenizer = None

    # -- metadata ---------------------------------------------------------------------
    @classmethod
    def describe(cls) -> dict:
        return {**super().describe(), "weights": "pretrained (ViT-B-32: openai), local:<path>, random-init"}

    @staticmethod
    def _check_config(cfg) -> None:
        from open_clip.model import CLIPTextCfg, CLIPVisionCfg

        if not isinstance(cfg, dict) or not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
            raise ConfigError("clip: model_config must be an open_clip model config with embed_dim, vision_cfg "
                              "and text_cfg")
        for key, dc in (("vision_cfg", CLIPVisionCfg), ("text_cfg", CLIPTextCfg)):
            try:
                dc(**cfg[key])
            except TypeError as e:
                raise ConfigError(f"clip: model_config.{key}: {_first_line(e)}") from None

    def _architecture(self) -> dict:
        import open_clip

        if self.local_dir is not None:
            try:
                raw = json.loads((self.local_dir / "open_clip_config.json").read_text())
            except (OSError, ValueError) as e:
                raise ConfigError(f"clip: cannot read {self.local_dir}/open_clip_config.json: {_first_line(e)}")
            if "model_cfg" not in raw:
                raise ConfigError(f"clip: {self.local_dir}/open_clip_config.json has no 'model_cfg'")
            self._local_preprocess = raw.get("preprocess_cfg", {})
            return raw["model_cfg"]
        return open_clip.get_model_config(self.model_name)

    def _expected_preprocess(self) -> dict:
        """The inference preprocessing open_clip will attach to the model, known before loading
        (checked against the loaded model in :meth:`setup`)."""
        from dataclasses import asdict

        from open_clip.transform import PreprocessCfg, merge_preprocess_dict
        from open_clip.utils import to_2tuple

        pp = asdict(PreprocessCfg())
        if self.tag_cfg:
            pp = merge_preprocess_dict(pp, self.tag_cfg)
        elif self.local_dir is not None:
            pp = merge_preprocess_dict(pp, self._local_preprocess)
        vision = self.arch["vision_cfg"]
        size = vision.get("image_size", 224)
        # create_model copies the tower's image_size: a 2-tuple for ViT/timm, as given for ResNets
        pp["size"] = size if isinstance(vision.get("layers"), (list, tuple)) and not vision.get("timm_model_name") \
            else to_2tuple(size)
        return _jsonable(pp)

    def layers(self) -> list[str]:
        return ["embedding"] + [f"blocks.{i}" for i in range(self.n_blocks)]

    def default_layer(self) -> str:
        return "embedding"

    def weights_info(self) -> dict:
        return {**self.spec.info(), "model": self.model}

    def identity(self) -> dict:
        import open_clip

        out = {**super().identity(), "model": self.model, "model_config": _jsonable(self.arch),
               "quick_gelu": self.quick_gelu, "preprocess": self.preprocess_cfg,
               "open_clip": open_clip.__version__}
        if self.spec.source == "random-init":
            out["init_seed"] = self.init_seed
        return out

    def describe_instance(self) -> dict:
        return {**super().describe_instance(), "model": self.model, "preprocess": self.preprocess_cfg}

    # -- loading ----------------------------------------------------------------------
    def _cached_pretrained(self) -> str | None:
        """The tag's checkpoint if open_clip's caches already hold it (no network)."""
        from open_clip import pretrained as ocp

        cfg = self.tag_cfg
        if cfg.get("file"):
            return cfg["file"] if os.path.isfile(cfg["file"]) else None
        if cfg.get("hf_hub") and ocp.has_hf_hub():
            from huggingface_hub import try_to_load_from_cache

            repo, filename = os.path.split(cfg["hf_hub"])
            filename = filename or ocp.HF_WEIGHTS_NAME
            safe = getattr(ocp, "_get_safe_alternatives", lambda f: [])
            for name in [*safe(filename), filename]:
                hit = try_to_load_from_cache(repo, name)
                if isinstance(hit, str):
                    return hit
            return None
        if cfg.get("url"):
            path = Path("~/.cache/clip").expanduser() / os.path.basename(cfg["url"])
            return str(path) if path.is_file() else None
        return None

    def _create(self):
        import open_clip

        kw: dict = dict(pretrained_image=False, pretrained_text=False)
        if self.quick_gelu:
            kw["force_quick_gelu"] = True
        elif self.arch.get("quick_gelu"):
            kw["quick_gelu"] = False  # model kwargs override the config
        src, ident = self.spec.source, self.spec.id
        if src == "random-init":
            return open_clip.create_model_and_transforms(self.model_name, pretrained=None, **kw)
        if src == "local":
            try:
                if self.local_dir is not None:
                    return open_clip.create_model_and_transforms(self.model_name, **kw)
                return open_clip.create_model_and_transforms(self.model_name, pretrained=ident, **kw)
            except Exception as e:  # noqa: BLE001 - any loader failure is a bad checkpoint for this model
                raise ConfigError(f"clip: cannot load checkpoint {ident} as {self.model!r}: {_first_line(e)}") from e
        # pretrained tag: from open_clip's cache without the network when it is there
        how = (f"download it once where there is network (open_clip.create_model('{self.model_name}', "
               f"pretrained='{ident}')) into the Hugging Face cache (HF_HOME)")
        cached = self._cached_pretrained()
        try:
            if cached:
                pp = self.tag_cfg
                return open_clip.create_model_and_transforms(
                    self.model_name, pretrained=cached, image_mean=pp.get("mean"), image_std=pp.get("std"),
                    image_interpolation=pp.get("interpolation"), image_resize_mode=pp.get("resize_mode"), **kw)
            host = "huggingface.co"
            if self.tag_cfg.get("hf_hub"):
                try:
                    from huggingface_hub import constants

                    host = re.sub(r"^https?://", "", constants.ENDPOINT).split("/")[0].split(":")[0]
                except ImportError:
                    pass
            elif self.tag_cfg.get("url"):
                host = re.sub(r"^https?://", "", self.tag_cfg["url"]).split("/")[0]
            reason = _offline_reason(host)
            if reason:
                raise OSError(f"not in the local cache and {reason}")
            return open_clip.create_model_and_transforms(self.model_name, pretrained=ident, **kw)
        except Exception as e:  # noqa: BLE001
            raise unavailable(f"clip {self.model}", self.spec, e, how) from e

    def setup(self) -> None:
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.init_seed)  # only random-init weights depend on it
            model, _, transform = self._create()
        got = _jsonable(dict(model.visual.preprocess_cfg))
        if got != self.preprocess_cfg:
            raise HarnessError(f"clip: open_clip preprocessing {got} differs from the expected "
                               f"{self.preprocess_cfg} used in the cache key (plugin bug)")
        self._model = model.eval().requires_grad_(False).to(self.torch_device())
        self._transform = transform

    @property
    def torch_model(self):
        """The loaded open_clip model (loaded on first use), e.g. to save its ``state_dict``."""
        self.ensure_ready()
        return self._model

    # -- running ----------------------------------------------------------------------
    def pixels(self, images: np.ndarray):
        """uint8 (N, H, W, 3) → the model's input tensor through open_clip's own transform."""
        import torch
        from PIL import Image

        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise DataError(f"clip: images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        return torch.stack([self._transform(Image.fromarray(im)) for im in images])

    def encode(self, batch: StimulusBatch, layer: str) -> np.ndarray:
        return self.encode_layers(batch, [layer])[layer]

    def encode_layers(self, batch: StimulusBatch, layers: list[str]) -> dict[str, np.ndarray]:
        """Several layers from one preprocessing and one forward pass."""
        import torch

        self.ensure_ready()
        x = self.pixels(batch.images).to(self.torch_device())
        out = {}
        blocks = {int(layer.split(".", 1)[1]): layer for layer in layers if layer != "embedding"}
        with torch.no_grad(), self.autocast():
            if "embedding" in layers:
                out["embedding"] = self._model.encode_image(x)
            if blocks:
                order = sorted(blocks)
                res = self._model.visual.forward_intermediates(
                    x, indices=order, stop_early=True, intermediates_only=True, output_fmt="NLC",
                    output_extra_tokens=True)
                for i, prefix, patches in zip(order, res["image_intermediates_prefix"], res["image_intermediates"]):
                    # (batch, tokens, width): the class token first, then the patches in raster order
                    tokens = torch.cat([prefix, patches], 1)
                    out[blocks[i]] = apply_readout(tokens.float(), self.readout, has_cls=True)
        return {layer: out[layer].float().cpu().numpy() for layer in layers}

    def encode_text(self, texts: list[str]) -> np.ndarray:
        """Projected text embeddings (``encode_text``), **unnormalised** → (len(texts), embed_dim)."""
        import torch

        self.ensure_ready()
        if self._tokenizer is None:
            import open_clip

            try:
                self._tokenizer = open_clip.get_tokenizer(self.model_name)
            except Exception as e:  # noqa: BLE001 - HF tokenizers need the hub or its cache
                raise unavailable(f"clip {self.model}", self.spec, e,
                                  "its tokenizer is not in the Hugging Face cache") from e
        texts = list(texts)
        chunks = []
        for i in range(0, len(texts), self.batch_size):
            tokens = self._tokenizer(texts[i:i + self.batch_size]).to(self.torch_device())
            with torch.no_grad(), self.autocast():
                chunks.append(self._model.encode_text(tokens).float().cpu())
        if not chunks:
            return np.zeros((0, int(self.arch["embed_dim"])), dtype=np.float32)
        return torch.cat(chunks).numpy()
