"""BLIP-2 through Hugging Face transformers: vision encoder, Q-Former, projections, language model.

Options (besides the base ``layer``, ``batch_size``, ``device``, ``half``):

``model``
    A Hugging Face hub id. Default ``Salesforce/blip2-opt-2.7b`` (``variant: generation``) or
    ``Salesforce/blip2-itm-vit-g`` (``variant: retrieval``). With ``local:`` or ``random-init``
    weights it only labels the model (and, with ``itm`` in it, picks the retrieval variant).
``weights``
    ``pretrained`` — ``from_pretrained(model)`` (from the local Hugging Face cache without the
    network when it is there); ``pretrained:<hub id>[@<revision>]`` — another hub id / revision;
    ``local:<dir>`` — a folder written by ``save_pretrained`` (the model *and* its
    ``Blip2Processor``; :meth:`Blip2.save_pretrained` writes both), loaded with
    ``from_pretrained(<dir>)``, the path users use; ``random-init`` — the architecture of
    ``config`` with random weights (tests, demo; seeded by ``init_seed``).
``config``
    A ``Blip2Config`` as a dict (``vision_config``, ``qformer_config``, ``text_config``,
    ``num_query_tokens``, … — what ``Blip2Config.to_dict()`` gives, or just the keys that differ
    from the defaults), or a ``Blip2Config``. Only with ``random-init`` (a checkpoint carries its
    own config). Default: transformers' ``Blip2Config()`` (the ViT-g and Q-Former of
    ``blip2-opt-2.7b`` with ``OPTConfig()``'s default language model).
``variant``
    ``generation`` (``Blip2ForConditionalGeneration``) or ``retrieval``
    (``Blip2ForImageTextRetrieval``: vision/text projections into the 256-d image-text space).
    Default: from the checkpoint's ``architectures`` for ``local:``, else ``retrieval`` when the
    hub id contains ``itm``, else ``generation``.
``readout``
    As in the base class, but the default here is ``flatten``: the Q-Former query outputs
    (32×768 for the real model) are the decoding target of seed 000, kept whole. Set another
    read-out for ``vision`` (flattened, the ViT-g tokens are 257×1408).
``init_seed``
    Seed of the ``random-init`` weights (in a forked RNG: the global RNG is untouched).

``random-init`` is the library's initialisation with two exceptions. transformers zeroes the
learned queries (checkpoints always overwrite them), which would make every query output of an
image the same; they are drawn as BLIP-2's own training code does, N(0,
``qformer_config.initializer_range``). ``image_token_index`` is set to the offline tokenizer's
``<image>`` token and, for the retrieval variant, ``qformer_config.use_qformer_text_input`` is
turned on (the text path needs it); the resolved config is part of the cache key.

Layers (``(batch, tokens, width)`` before the read-out):

``qformer`` (default)
    Q-Former outputs of the learned queries, ``(B, num_query_tokens, qformer hidden)``; no
    class token (``cls``/``pooled`` take the first query, ``mean`` averages all of them; no
    ``grid``).
``vision``
    The vision encoder's last hidden state (after its post-layernorm), class token first;
    ``pooled`` is the library's ``pooler_output``.
``language_projection`` (generation)
    The query outputs projected into the language model's input space (what ``generate``
    prepends to the prompt), ``(B, num_query_tokens, LM hidden)``.
``image_embeds`` (retrieval)
    ``normalize(vision_projection(query outputs))``, ``(B, num_query_tokens, 256)``, exactly as
    ``Blip2ForImageTextRetrieval`` computes ``image_embeds``.

Text (:meth:`Blip2.encode_text`, retrieval variant only): the Q-Former text path — BERT
embeddings, the Q-Former without queries, the ``[CLS]`` state, ``text_projection``, L2
normalised — as ``Blip2ForImageTextRetrieval`` computes ``text_embeds``.

Captioning: :attr:`Blip2.model` (the loaded transformers model), :attr:`Blip2.processor`,
:attr:`Blip2.tokenizer` and :meth:`Blip2.generate_from_query_embeds`, which feeds (predicted)
query outputs through ``language_projection`` into the language model's ``generate`` as
``Blip2ForConditionalGeneration.generate`` does after the Q-Former.

Preprocessing is the checkpoint's own ``BlipImageProcessor`` (size, resample, mean/std from its
config, never retyped) applied to the uint8 images; its config is part of the cache key. For
``random-init`` a ``BlipImageProcessor`` is built with the library's defaults and the config's
image size, and a small WordPiece tokenizer (lower-case letters, digits, punctuation; special
tokens at the ids the config names) is built offline with the ``tokenizers`` library;
:meth:`Blip2.save_pretrained` stores both with the model, so ``local:`` reloads are identical.

Offline: pretrained weights are looked up in the Hugging Face cache first
(``local_files_only``); when they are not there and the hub cannot be reached
(``HF_HUB_OFFLINE`` or a 3 s probe) a one-line :class:`~brainharness.errors.WeightsUnavailable`
says how to provide them, without waiting on network time-outs.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from brainharness.backbone import READOUTS, Backbone, StimulusBatch
from brainharness.capabilities import (IMAGE_FEATURES, IMAGE_TEXT_RETRIEVAL, QUERY_CAPTIONER, QUERY_TOKENS,
                                       TEXT_FEATURES, Offer)
from brainharness.errors import ConfigError, DataError, WeightsUnavailable
from brainharness.features import apply_readout
from brainharness.params import Param, check_value
from brainharness.registry import register_backbone
from brainharness.weights import first_line as _first_line
from brainharness.weights import jsonable as _jsonable
from brainharness.weights import parse_weights

from .blip2_hub import cached_commit, from_hub
from .blip2_random_init import check_config, random_init_processor

GENERATION_ID = "Salesforce/blip2-opt-2.7b"
RETRIEVAL_ID = "Salesforce/blip2-itm-vit-g"
VARIANTS = ("generation", "retrieval")
_CLASSES = {"generation": "Blip2ForConditionalGeneration", "retrieval": "Blip2ForImageTextRetrieval"}


@register_backbone("blip2")
class Blip2(Backbone):
    """BLIP-2 (transformers): Q-Former query outputs (default), vision tokens, projections."""

    family = "blip2"
    modalities = ("image", "text")
    layers_doc = "qformer (default), vision, language_projection (generation) | image_embeds (retrieval)"
    provides = (IMAGE_FEATURES, QUERY_TOKENS,
                Offer(QUERY_CAPTIONER, lambda p: Blip2.variant_for(p) == "generation", "variant: generation"),
                Offer(TEXT_FEATURES, lambda p: Blip2.variant_for(p) == "retrieval", "variant: retrieval"),
                Offer(IMAGE_TEXT_RETRIEVAL, lambda p: Blip2.variant_for(p) == "retrieval", "variant: retrieval"))
    default_weights = "pretrained"
    version = "1"

    params = {**Backbone.params,
              "readout": Param("flatten", choices=READOUTS, doc="how a layer's tokens become one feature vector"),
              "model": Param(None, str, nonempty=True,
                             doc=f"Hugging Face hub id (null: {GENERATION_ID}, or {RETRIEVAL_ID} for retrieval)"),
              "variant": Param(None, str, choices=VARIANTS, doc="generation or retrieval (null: from the model)"),
              "config": Param(None, dict, doc="Blip2Config fields (weights: random-init only)"),
              "init_seed": Param(0, int, doc="seed of random-init weights")}

    def configure(self, p):
        model, weights, config = p["model"], p["weights"], p["config"]
        self.init_seed = p["init_seed"]
        self.spec, self.model_id, self.local_dir, self.variant = self._identify(model, weights, p["variant"])
        if self.spec.source == "pretrained" and model is not None and self.spec.id != model:
            raise ConfigError(f"blip2: model {model!r} and weights {weights!r} name different checkpoints; "
                              "give one of them")
        if config is not None and self.spec.source != "random-init":
            raise ConfigError("blip2: 'config' only goes with weights: random-init (a checkpoint carries its own)")
        self.config_dict = check_config(config) if self.spec.source == "random-init" else None
        self._model = None
        self._processor = None
        self._blip_config = None  # random-init: the resolved Blip2Config

    # -- metadata ---------------------------------------------------------------------
    @classmethod
    def describe(cls) -> dict:
        return {**super().describe(),
                "weights": f"pretrained ({GENERATION_ID}; {RETRIEVAL_ID}), local:<dir>, random-init"}

    def layers(self) -> list[str]:
        extra = "language_projection" if self.variant == "generation" else "image_embeds"
        return ["qformer", "vision", extra]

    def default_layer(self) -> str:
        return "qformer"

    @staticmethod
    def _identify(model, weights, variant) -> tuple:
        """``(weights spec, model label, local folder or None, variant)`` from the options, without
        loading anything (a local folder's ``config.json`` names its variant)."""
        for key, value in (("model", model), ("variant", variant)):  # also reached from raw config specs
            check_value(Blip2.owner(), key, Blip2.params[key], value)
        spec = parse_weights(weights, model or (RETRIEVAL_ID if variant == "retrieval" else GENERATION_ID))
        # the label of the model: the hub id, the local folder's name, or (random-init) model or "custom"
        model_id = spec.id if spec.source == "pretrained" else (model or "custom")
        local_dir = Path(spec.id) if spec.source == "local" else None
        if local_dir is not None:
            model_id = model or local_dir.name
            variant = Blip2._local_variant(local_dir, variant)
        return spec, model_id, local_dir, variant or ("retrieval" if "itm" in model_id.lower() else "generation")

    @classmethod
    def variant_for(cls, params: dict) -> str:
        """The variant a backbone built from ``params`` has (what its declared capabilities depend on)."""
        return cls._identify(params.get("model"), params.get("weights"), params.get("variant"))[3]

    @staticmethod
    def _local_variant(local_dir: Path, variant: str | None) -> str:
        cfg_file = local_dir / "config.json"
        if not local_dir.is_dir() or not cfg_file.is_file():
            raise ConfigError(f"blip2: weights local:{local_dir} must be a folder written by save_pretrained "
                              "(config.json, weights and the processor files)")
        try:
            archs = json.loads(cfg_file.read_text()).get("architectures") or []
        except (OSError, ValueError) as e:
            raise ConfigError(f"blip2: cannot read {cfg_file}: {_first_line(e)}") from None
        found = [v for v, cls in _CLASSES.items() if cls in archs]
        if variant is not None and found and variant not in found:
            raise ConfigError(f"blip2: {local_dir} holds a {archs[0]}, not the {variant} variant "
                              f"({_CLASSES[variant]})")
        if variant is None and not found:
            raise ConfigError(f"blip2: cannot tell the variant of {local_dir} (architectures: {archs}); "
                              "set variant: generation or retrieval")
        return variant or found[0]

    def weights_info(self) -> dict:
        info = {**self.spec.info(), "model": self.model_id, "variant": self.variant}
        if self.spec.source == "pretrained":
            info["commit"] = cached_commit(self.spec.id, self.spec.revision)
        return info

    def preprocess(self) -> dict:
        """The image processor's config (class, size, resample, mean/std, …): part of the cache key."""
        ip = self.processor.image_processor
        cfg = {k: v for k, v in ip.to_dict().items() if not k.startswith("_") and k != "processor_class"}
        return _jsonable({**cfg, "class": type(ip).__name__})

    def identity(self) -> dict:
        import transformers

        preprocess = self.preprocess()  # first: loading the processor fills the cache the commit is read from
        out = {**super().identity(), "variant": self.variant, "model": self.model_id,
               "preprocess": preprocess, "transformers": transformers.__version__}
        if self.spec.source == "random-init":
            cfg = self.blip_config().to_dict()
            cfg.pop("transformers_version", None)
            out.update(config=_jsonable(cfg), init_seed=self.init_seed)
        return out

    def describe_instance(self) -> dict:
        try:
            preprocess = self.preprocess()
        except WeightsUnavailable:
            preprocess = None  # the run itself reports it (and records the failure)
        return {**super().describe_instance(), "model": self.model_id, "variant": self.variant,
                "preprocess": preprocess}

    # -- loading ----------------------------------------------------------------------
    def _how(self) -> str:
        return (f"download it once where there is network ({_CLASSES[self.variant]}.from_pretrained("
                f"'{self.spec.id}') and Blip2Processor.from_pretrained) into the Hugging Face cache (HF_HOME)")

    def blip_config(self):
        """The ``Blip2Config`` of ``random-init`` (with the offline tokenizer's image token id)."""
        if self._blip_config is None:
            self._random_processor()
        return self._blip_config

    def _random_processor(self):
        self._blip_config, self._processor = random_init_processor(self.config_dict, self.variant)
        return self._processor

    def _load_processor(self):
        from transformers import Blip2Processor

        if self.spec.source == "random-init":
            return self._random_processor()
        if self.spec.source == "local":
            try:
                return Blip2Processor.from_pretrained(str(self.local_dir), local_files_only=True)
            except Exception as e:  # noqa: BLE001
                raise ConfigError(f"blip2: cannot load the processor from {self.local_dir} ({_first_line(e)}); save "
                                  "it next to the model (Blip2.save_pretrained or processor.save_pretrained)") from e
        return from_hub(Blip2Processor.from_pretrained, self.spec, self._how())

    @property
    def processor(self):
        """The ``Blip2Processor`` (image processor + tokenizer); loaded without the weights."""
        if self._processor is None:
            self._processor = self._load_processor()
        return self._processor

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def model(self):
        """The loaded transformers model (loads the weights on first use)."""
        self.ensure_ready()
        return self._model

    # -- the model parts the declared capabilities promise (brainharness.capabilities) --------
    @property
    def num_query_tokens(self) -> int:
        return int(self.model.config.num_query_tokens)

    @property
    def language_projection(self):
        return self.model.language_projection  # generation variant (and language_model)

    @property
    def language_model(self):
        return self.model.language_model

    @property
    def vision_projection(self):
        return self.model.vision_projection  # retrieval variant (and the three below)

    @property
    def text_projection(self):
        return self.model.text_projection

    @property
    def embeddings(self):
        return self.model.embeddings

    @property
    def qformer(self):
        return self.model.qformer

    def setup(self) -> None:
        import torch
        import transformers

        self.processor  # first: fails fast (and cheaply) when the checkpoint is missing
        cls = getattr(transformers, _CLASSES[self.variant])
        if self.spec.source == "random-init":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.init_seed)
                model = cls(self.blip_config())
                std = model.config.qformer_config.initializer_range
                with torch.no_grad():
                    model.query_tokens.normal_(0.0, std)  # BLIP-2's init; the library zeroes them
        elif self.spec.source == "local":
            try:
                model = cls.from_pretrained(str(self.local_dir), local_files_only=True, dtype=torch.float32)
            except Exception as e:  # noqa: BLE001
                raise ConfigError(f"blip2: cannot load {self.local_dir} as {cls.__name__}: {_first_line(e)}") from e
        else:
            model = from_hub(cls.from_pretrained, self.spec, self._how(), dtype=torch.float32)
        self._model = model.eval().requires_grad_(False).to(self.torch_device())

    def save_pretrained(self, path: str | Path) -> Path:
        """Write the model and its processor with ``save_pretrained`` (a ``local:`` checkpoint)."""
        path = Path(path)
        self.model.save_pretrained(path)
        self.processor.save_pretrained(path)
        return path

    # -- running ----------------------------------------------------------------------
    def pixels(self, images: np.ndarray):
        """uint8 (N, H, W, 3) → ``pixel_values`` on the device, through the checkpoint's image processor."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise DataError(f"blip2: images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        out = self.processor.image_processor(images=list(images), return_tensors="pt",
                                             input_data_format="channels_last")
        return out["pixel_values"].to(self.torch_device(), dtype=self.model.dtype)

    def query_outputs(self, pixel_values):
        """Vision encoder then Q-Former, as the library's ``get_image_features`` / ``forward``:
        → (vision last hidden state, vision pooled output, query outputs (B, Q, H))."""
        import torch

        m = self.model
        vision = m.vision_model(pixel_values=pixel_values, return_dict=True)
        image_embeds = vision.last_hidden_state
        mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        query_tokens = m.query_tokens.expand(image_embeds.shape[0], -1, -1)
        q = m.qformer(query_embeds=query_tokens, encoder_hidden_states=image_embeds, encoder_attention_mask=mask,
                      return_dict=True).last_hidden_state
        return vision.last_hidden_state, vision.pooler_output, q

    def encode(self, batch: StimulusBatch, layer: str) -> np.ndarray:
        import torch

        self.ensure_ready()
        if layer not in self.layers():
            raise ConfigError(f"blip2: unknown layer {layer!r} (readable: {', '.join(self.layers())})")
        if self.readout == "grid" and layer != "vision":
            raise ConfigError(f"blip2: the grid read-out needs the patch tokens of the vision layer; {layer!r} "
                              "holds query tokens")
        x = self.pixels(batch.images)
        m = self.model
        with torch.no_grad(), self.autocast():
            if layer == "vision":
                vision = m.vision_model(pixel_values=x, return_dict=True)
                tokens = vision.pooler_output if self.readout == "pooled" else vision.last_hidden_state
                return apply_readout(tokens.float(), self.readout, has_cls=True).float().cpu().numpy()
            _, _, q = self.query_outputs(x)
            if layer == "language_projection":
                q = m.language_projection(q.to(m.language_projection.weight.dtype))
            elif layer == "image_embeds":
                q = torch.nn.functional.normalize(m.vision_projection(q.to(m.vision_projection.weight.dtype)), dim=-1)
            return apply_readout(q.float(), self.readout, has_cls=False).float().cpu().numpy()

    def encode_text(self, texts: list[str]) -> np.ndarray:
        """Normalised projected text embeddings of the Q-Former text path (retrieval variant)
        → (len(texts), image_text_hidden_size)."""
        import torch

        if self.variant != "retrieval":
            raise ConfigError(f"blip2: text embeddings need the retrieval variant (e.g. model: {RETRIEVAL_ID}, "
                              f"or variant: retrieval); {self.model_id} is the generation variant")
        self.ensure_ready()
        m, texts = self.model, list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise DataError("blip2: encode_text takes a list of strings")
        max_len = min(m.config.qformer_config.max_position_embeddings, self.tokenizer.model_max_length)
        chunks = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[i:i + self.batch_size], padding=True, truncation=True, max_length=max_len,
                                 return_tensors="pt", return_token_type_ids=False).to(self.torch_device())
            with torch.no_grad(), self.autocast():
                emb = m.embeddings(input_ids=enc["input_ids"])
                out = m.qformer(query_embeds=emb, query_length=0, attention_mask=enc["attention_mask"],
                                return_dict=True).last_hidden_state
                cls = out[:, 0, :].to(m.text_projection.weight.dtype)
                chunks.append(torch.nn.functional.normalize(m.text_projection(cls), dim=-1).float().cpu())
        if not chunks:
            return np.zeros((0, int(m.config.image_text_hidden_size)), dtype=np.float32)
        return torch.cat(chunks).numpy()

    def generate_from_query_embeds(self, query_embeds, prompt: str | None = None, **generate_kwargs) -> list[str]:
        """Captions from Q-Former query outputs (e.g. predicted from the brain).

        ``query_embeds``: (B, num_query_tokens, qformer hidden), or flattened (B, Q·H) as the
        ``qformer`` layer with the ``flatten`` read-out gives; numpy or torch. They go through
        ``language_projection`` and are prepended to the prompt (default: just BOS) as
        ``Blip2ForConditionalGeneration.generate`` does; ``generate_kwargs`` go to the language
        model's ``generate`` (e.g. ``max_new_tokens``, ``num_beams``). Returns the decoded new
        text of each row (special tokens skipped, stripped).
        """
        import torch

        if self.variant != "generation":
            raise ConfigError("blip2: captions need the generation variant (e.g. model: Salesforce/blip2-opt-2.7b)")
        m = self.model
        cfg = m.config
        n_q, width = cfg.num_query_tokens, cfg.qformer_config.hidden_size
        q = torch.as_tensor(np.asarray(query_embeds) if not torch.is_tensor(query_embeds) else query_embeds)
        if q.ndim == 2 and q.shape[1] == n_q * width:
            q = q.reshape(len(q), n_q, width)
        if q.ndim != 3 or q.shape[1:] != (n_q, width):
            raise DataError(f"blip2: query embeddings must be (batch, {n_q}, {width}) or (batch, {n_q * width}), "
                            f"got {tuple(q.shape)}")
        if not torch.isfinite(q).all():
            raise DataError("blip2: query embeddings contain NaN or inf")
        if prompt is None:
            if cfg.text_config.bos_token_id is None:
                raise ConfigError("blip2: the language model has no BOS token; give a prompt")
            prompt_ids = [cfg.text_config.bos_token_id]
        else:
            prompt_ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        device = self.torch_device()
        lm = m.language_model
        captions: list[str] = []
        for i in range(0, len(q), self.batch_size):
            chunk = q[i:i + self.batch_size].to(device, torch.float32)
            b = len(chunk)
            with torch.no_grad(), self.autocast():
                projected = m.language_projection(chunk.to(m.language_projection.weight.dtype))
                ids = torch.tensor([prompt_ids], dtype=torch.long, device=device).repeat(b, 1)
                text_embeds = m.get_input_embeddings()(ids)
                inputs_embeds = torch.cat([projected.to(text_embeds.dtype), text_embeds], 1)
                inputs = {"inputs_embeds": inputs_embeds,
                          "attention_mask": torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=device)}
                prefix = 0
                if not lm.config.is_encoder_decoder and cfg.image_token_index is not None:
                    # as the library: image placeholder ids + prompt ids, so the prompt is known to
                    # generate (repetition penalties etc.); the output then starts with them
                    image_ids = torch.full((b, n_q), cfg.image_token_index, dtype=torch.long, device=device)
                    inputs["input_ids"] = torch.cat([image_ids, ids], 1)
                    prefix = inputs["input_ids"].shape[1]
                out = lm.generate(**inputs, **generate_kwargs)
            captions += [t.strip() for t in self.tokenizer.batch_decode(out[:, prefix:], skip_special_tokens=True)]
        return captions
