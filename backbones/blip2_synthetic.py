"""A small BLIP-2 trained here on synthetic scenes: the offline stand-in for BLIP-2's weights.

Seed 000 reads BLIP-2's Q-Former outputs (``Salesforce/blip2-opt-2.7b``), its language model
and its image-text space (``Salesforce/blip2-itm-vit-g``). Without those weights a
``random-init`` BLIP-2 gives query outputs that say little about a scene and captions that are
noise, so the demo could not show captioning at all. This module trains the *same
transformers classes* (``Blip2ForImageTextRetrieval`` and ``Blip2ForConditionalGeneration``,
small config) on synthetic scenes and their captions, once, and caches both checkpoints with
``save_pretrained``; they are then loaded through :class:`brainharness.backbones.blip2.Blip2` with
``weights: local:<dir>`` — the path users load saved checkpoints with. The backbone
``blip2-synthetic`` (:class:`SyntheticBlip2`) does both: train-or-load, then ``local:``.

Training data
    Scenes drawn by :mod:`brainharness.datasets.synthetic`'s generator (``make_scene`` / ``render`` /
    ``make_captions``) with a **corpus seed of its own** (``corpus.seed``, default 1000003), one
    new scene per training example (``steps × batch_size`` scenes, one of its 5 captions each).
    They are *not* stimuli of any experiment: the synthetic dataset draws its stimuli with the
    dataset seed, so the captioner never sees a test (or training) image — the analogue of
    BLIP-2's pre-training corpus being disjoint from NSD. (The image-encoder pre-training uses yet
    other corpus scenes.)
Model and recipe (BLIP-2's, shrunk)
    BLIP-2 starts from a pretrained, then frozen, image encoder. Here the small ViT is first
    pre-trained for ``vision_steps`` on other corpus scenes to regress each scene's content —
    the generator's category features (presence, count, size and position of faces, bodies,
    word signs and objects; the place's layout), standardised — from the mean of its output
    tokens (a linear head, discarded), then frozen. One Q-Former — learned queries,
    cross-attention, text path — is shared by both models and trained for ``steps`` jointly with
    (a) the image-text contrastive loss of ``Blip2ForImageTextRetrieval`` (its similarity: max
    over queries of the cosine between ``vision_projection`` of the query outputs and
    ``text_projection`` of the text ``[CLS]``; symmetric InfoNCE, learned temperature) and
    (b) the language-modelling loss that ``Blip2ForConditionalGeneration.forward`` computes
    itself from ``labels`` (caption tokens + EOS; query placeholders and BOS masked);
    ``language_projection`` and the small OPT language model train from scratch with it.
    AdamW, one-cycle learning-rate schedules, seeded, on the CPU with ``num_threads`` threads
    (default 1: these matrices are tiny, and on a shared 2-core machine OpenMP's barriers make
    two threads 5–20× slower than one).
Cache
    ``<cache_dir>/captioners/<key>/{retrieval,generation}/`` (+ ``captioner.json``), ``key`` =
    hash of this module's :data:`VERSION`, the generator's version, the corpus, the resolved
    model config, the training options and the torch / transformers versions. Built in
    ``<key>.partial/`` with a checkpoint every ``checkpoint_every`` steps (an interrupted
    training resumes from it), renamed into place when complete, under a file lock (concurrent
    workers wait for one trainer). ``brainharness cache clear captioners`` deletes them (the
    next run retrains); plain ``cache clear`` removes the feature cache only.

Every result records it: the backbone's ``weights`` are ``local`` with ``trained_on`` saying
"synthetic scenes …, not pretrained BLIP-2". The demo's caption scores therefore measure how
much of a synthetic scene survives brain → Q-Former space → this small language model; they
are not comparable with the paper's numbers (see ``configs/seed000.yaml``).
"""
from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

from brainharness.backbones.blip2 import Blip2

from brainharness.cache import cache_path
from brainharness.errors import ConfigError
from brainharness.params import Param
from brainharness.registry import register_backbone
from brainharness.threads import torch_threads

log = logging.getLogger(__name__)

VERSION = "1"

# A small BLIP-2 (what ``Blip2Config.from_dict`` takes). 64 px images, 8 query tokens × 64.
DEFAULT_CONFIG = {
    "num_query_tokens": 8,
    "image_text_hidden_size": 64,
    "vision_config": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
                      "num_attention_heads": 4, "image_size": 64, "patch_size": 8, "initializer_range": 0.02},
    "qformer_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                       "num_attention_heads": 8, "cross_attention_frequency": 1, "encoder_hidden_size": 128,
                       "vocab_size": 1024, "max_position_embeddings": 128, "initializer_range": 0.08,
                       "use_qformer_text_input": True},
    "text_config": {"model_type": "opt", "vocab_size": 1024, "hidden_size": 64, "word_embed_proj_dim": 64,
                    "ffn_dim": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
                    "max_position_embeddings": 128},
}
DEFAULT_CORPUS = {"seed": 1000003, "image_size": 64}
VISION_OFFSET, STATS_OFFSET = 10**8, 2 * 10**8  # corpus indices of the pre-training and statistics scenes
DEFAULT_TRAIN = {"steps": 600, "batch_size": 32, "lr": 3e-3, "vision_steps": 300, "vision_lr": 1e-3,
                 "weight_decay": 0.05, "warmup": 0.1,
                 "temperature": 0.07, "max_caption_tokens": 48, "seed": 0, "num_threads": 1,
                 "checkpoint_every": 100}
VARIANT_DIRS = ("retrieval", "generation")


def _merge(base: dict, over: dict | None, where: str) -> dict:
    """``base`` updated with ``over`` (nested one level for the *_config mappings); unknown keys raise."""
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if where in ("train", "corpus") and k not in base:
            raise ConfigError(f"blip2-synthetic: unknown {where} option {k!r} (known: {', '.join(base)})")
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


def resolve(config: dict | None = None, corpus: dict | None = None, train: dict | None = None) -> dict:
    """The validated specification of one captioner (what its cache key is made of)."""
    for name, value in (("config", config), ("corpus", corpus), ("train", train)):
        if value is not None and not isinstance(value, dict):
            raise ConfigError(f"blip2-synthetic: {name} must be a mapping, got {type(value).__name__}")
    cfg = _merge(DEFAULT_CONFIG, config, "config")
    cfg.setdefault("qformer_config", {})["use_qformer_text_input"] = True  # both models share the text path
    crp = _merge(DEFAULT_CORPUS, corpus, "corpus")
    trn = _merge(DEFAULT_TRAIN, train, "train")
    for k in ("steps", "vision_steps", "batch_size", "max_caption_tokens", "checkpoint_every", "num_threads",
              "seed"):
        v = trn[k]
        low = 0 if k in ("seed", "vision_steps") else 1
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            raise ConfigError(f"blip2-synthetic: train.{k} must be an integer ≥ {low}, got {v!r}")
    if trn["steps"] < 10 or 0 < trn["vision_steps"] < 10:
        raise ConfigError("blip2-synthetic: train.steps must be ≥ 10 and train.vision_steps 0 or ≥ 10")
    if trn["batch_size"] < 2:
        raise ConfigError("blip2-synthetic: train.batch_size must be ≥ 2 (the contrastive loss needs negatives)")
    for k in ("lr", "vision_lr", "temperature"):
        if not isinstance(trn[k], (int, float)) or not trn[k] > 0:
            raise ConfigError(f"blip2-synthetic: train.{k} must be > 0, got {trn[k]!r}")
    if not 0 <= float(trn["warmup"]) < 1 or float(trn["weight_decay"]) < 0:
        raise ConfigError("blip2-synthetic: train.warmup must be in [0, 1) and train.weight_decay ≥ 0")
    if not isinstance(crp["seed"], int) or not isinstance(crp["image_size"], int) or crp["image_size"] < 8:
        raise ConfigError(f"blip2-synthetic: corpus needs an integer seed and image_size ≥ 8, got {crp}")
    return {"config": cfg, "corpus": crp, "train": trn}


def captioner_key(spec: dict) -> tuple[str, dict]:
    import torch
    import transformers

    from brainharness.datasets.synthetic import SyntheticDataset

    parts = {"captioner": VERSION, "generator": SyntheticDataset.VERSION, **spec,
             "torch": torch.__version__.split("+")[0], "transformers": transformers.__version__}
    parts["train"] = {k: v for k, v in spec["train"].items() if k != "checkpoint_every"}
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20], parts


def default_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``<cache root>/captioners`` (:func:`brainharness.cache.cache_path`)."""
    return cache_path("captioners", cache_dir)


def corpus_example(seed: int, index: int, image_size: int) -> tuple[np.ndarray, list[str]]:
    """Scene ``index`` of the corpus: its uint8 image and its captions."""
    from brainharness.datasets.synthetic_captions import make_captions
    from brainharness.datasets.synthetic_scenes import make_scene, render, scene_rng

    scene = make_scene(scene_rng(seed, index, 0))
    return render(scene, image_size), make_captions(scene, scene_rng(seed, index, 1))


def ensure_captioner(spec: dict, cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder of the trained captioner of ``spec`` (see :func:`resolve`); trains it if needed."""
    key, parts = captioner_key(spec)
    root = default_root(cache_dir)
    final = root / key
    if (final / "captioner.json").exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{key}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (final / "captioner.json").exists():  # another worker may have finished it meanwhile
                partial = root / f"{key}.partial"
                _Trainer(spec, parts, partial).run()
                if final.exists():
                    shutil.rmtree(final)  # an incomplete leftover without captioner.json
                os.replace(partial, final)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return final


class _Trainer:
    """Two phases over one global step counter (so a checkpoint resumes either):
    ``vision_steps`` of image-encoder pre-training, then ``steps`` of Q-Former training."""

    def __init__(self, spec: dict, parts: dict, folder: Path):
        self.spec, self.parts, self.folder = spec, parts, folder
        self.t = spec["train"]

    def run(self) -> None:
        with torch_threads(self.t["num_threads"]):
            self._run()

    def _build(self):
        import torch

        from brainharness.datasets.synthetic_responses import N_CAT

        seed, t = self.t["seed"], self.t
        ret = Blip2(weights="random-init", config=self.spec["config"], variant="retrieval", init_seed=seed,
                    device="cpu")
        gen = Blip2(weights="random-init", config=self.spec["config"], variant="generation", init_seed=seed + 1,
                    device="cpu")
        R, G = ret.model, gen.model
        # one image encoder and one Q-Former (queries + cross-attention + text path) for both models
        G.vision_model, G.qformer, G.query_tokens = R.vision_model, R.qformer, R.query_tokens
        head = torch.nn.Linear(R.config.vision_config.hidden_size, N_CAT)
        log_temp = torch.nn.Parameter(torch.tensor(float(np.log(t["temperature"]))))
        params = [p for n, p in R.named_parameters() if not n.startswith("vision_model.")]
        params += list(G.language_projection.parameters()) + list(G.language_model.parameters()) + [log_temp]
        vision = list(R.vision_model.parameters()) + list(head.parameters())
        R.requires_grad_(False)
        for p in params + vision:
            p.requires_grad_(True)

        def schedule(opt, lr, total):  # ≥ 2 warm-up steps (and steps ≥ 10): OneCycleLR's phases never empty
            return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(total, 10),
                                                       pct_start=max(t["warmup"], 2 / max(total, 10)),
                                                       anneal_strategy="cos")

        opt_v = torch.optim.AdamW(vision, lr=t["vision_lr"], weight_decay=t["weight_decay"])
        opt = torch.optim.AdamW(params, lr=t["lr"], weight_decay=t["weight_decay"])
        return {"ret": ret, "gen": gen, "head": head, "log_temp": log_temp, "opt_v": opt_v,
                "sched_v": schedule(opt_v, t["vision_lr"], t["vision_steps"]), "opt": opt,
                "sched": schedule(opt, t["lr"], t["steps"])}

    def _scene(self, i: int):
        from brainharness.datasets.synthetic_scenes import make_scene, scene_rng

        return make_scene(scene_rng(self.spec["corpus"]["seed"], i, 0))

    def _scenes(self, first: int):
        """Images, captions and category features of corpus scenes first … first + B − 1."""
        from brainharness.datasets.synthetic_captions import make_captions
        from brainharness.datasets.synthetic_responses import category_features
        from brainharness.datasets.synthetic_scenes import render, scene_rng

        crp = self.spec["corpus"]
        images, captions, content = [], [], []
        for i in range(first, first + self.t["batch_size"]):
            scene = self._scene(i)
            images.append(render(scene, crp["image_size"]))
            captions.append(make_captions(scene, scene_rng(crp["seed"], i, 1)))
            content.append(category_features(scene))
        return np.stack(images), captions, np.stack(content)

    def _vision_loss(self, step: int, m: dict, stats):
        """Image-encoder pre-training: the scene's content (the generator's category features,
        standardised) regressed from the mean of the encoder's output tokens."""
        import torch

        images, _, cats = self._scenes(VISION_OFFSET + step * self.t["batch_size"])
        R = m["ret"].model
        tokens = R.vision_model(pixel_values=m["ret"].pixels(images), return_dict=True).last_hidden_state
        target = torch.as_tensor((cats - stats[0]) / stats[1], dtype=torch.float32)
        return torch.nn.functional.mse_loss(m["head"](tokens.mean(1)), target)

    def _batch(self, step: int, ret, gen):
        """Images and one caption each for Q-Former step ``step``: scenes step·B … step·B + B − 1."""
        import torch

        b = self.t["batch_size"]
        rng = np.random.default_rng([self.t["seed"], step])
        images, caps, _ = self._scenes(step * b)
        texts = [c[int(rng.integers(len(c)))] for c in caps]
        pixels = ret.pixels(images)
        m = self.t["max_caption_tokens"]
        rt = ret.tokenizer(texts, padding=True, truncation=True, max_length=m, return_tensors="pt",
                           return_token_type_ids=False)
        G, tok = gen.model, gen.tokenizer
        q = G.config.num_query_tokens
        enc = [x[:m] + [tok.eos_token_id] for x in tok(texts)["input_ids"]]
        width = q + max(map(len, enc))
        ids = torch.full((b, width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for k, x in enumerate(enc):
            ids[k, :q] = G.config.image_token_index  # the query outputs go here (the processor's layout)
            ids[k, q:q + len(x)] = torch.tensor(x)
            mask[k, :q + len(x)] = 1
            labels[k, q + 1:q + len(x)] = torch.tensor(x[1:])  # BOS is given, not predicted
        return pixels, rt, ids, mask, labels

    def _loss(self, batch, ret, gen, log_temp):
        import torch
        import torch.nn.functional as F
        from transformers.models.blip_2.modeling_blip_2 import (
            BaseModelOutputWithVisionQformerOutputs,
        )

        pixels, rt, ids, mask, labels = batch
        R, G = ret.model, gen.model
        with torch.no_grad():  # frozen image encoder
            image_embeds = R.vision_model(pixel_values=pixels, return_dict=True).last_hidden_state
        b = len(pixels)
        query = R.qformer(query_embeds=R.query_tokens.expand(b, -1, -1), encoder_hidden_states=image_embeds,
                          return_dict=True).last_hidden_state
        image_feats = F.normalize(R.vision_projection(query), dim=-1)
        text = R.qformer(query_embeds=R.embeddings(input_ids=rt["input_ids"]), query_length=0,
                         attention_mask=rt["attention_mask"], return_dict=True).last_hidden_state
        text_feats = F.normalize(R.text_projection(text[:, 0, :]), dim=-1)
        sim = torch.einsum("iqd,td->iqt", image_feats, text_feats).max(1).values / log_temp.exp()
        target = torch.arange(b)
        itc = (F.cross_entropy(sim, target) + F.cross_entropy(sim.T, target)) / 2
        # the library's own language-modelling loss, from the (trainable) query outputs
        image = BaseModelOutputWithVisionQformerOutputs(pooler_output=G.language_projection(query))
        lm = G(pixel_values=None, input_ids=ids, attention_mask=mask, labels=labels,
               mm_encoder_outputs={"image": image}).loss
        return itc, lm

    _STATE = ("head", "opt_v", "sched_v", "opt", "sched")

    def _save(self, path: Path, m: dict, done: int, history: list) -> None:
        import torch

        state = {"step": done, "history": history, "retrieval": m["ret"].model.state_dict(),
                 "language_projection": m["gen"].model.language_projection.state_dict(),
                 "language_model": m["gen"].model.language_model.state_dict(),
                 "log_temp": m["log_temp"].detach().clone(), "rng": torch.get_rng_state(),
                 **{k: m[k].state_dict() for k in self._STATE}}
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)

    def _load(self, path: Path, m: dict) -> tuple[int, list]:
        import torch

        state = torch.load(path, weights_only=True)
        m["ret"].model.load_state_dict(state["retrieval"])
        m["gen"].model.language_projection.load_state_dict(state["language_projection"])
        m["gen"].model.language_model.load_state_dict(state["language_model"])
        with torch.no_grad():
            m["log_temp"].copy_(state["log_temp"])
        for k in self._STATE:
            m[k].load_state_dict(state[k])
        torch.set_rng_state(state["rng"])
        return int(state["step"]), list(state["history"])

    def _run(self) -> None:
        import torch
        from tqdm.auto import tqdm

        self.folder.mkdir(parents=True, exist_ok=True)
        state_file = self.folder / "state.pt"
        t = self.t
        n_vision, total = t["vision_steps"], t["vision_steps"] + t["steps"]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(t["seed"])
            m = self._build()
            ret, gen, log_temp = m["ret"], m["gen"], m["log_temp"]
            start, history = 0, []
            if state_file.exists():
                start, history = self._load(state_file, m)
                log.info("blip2-synthetic: resuming the captioner training at step %d", start)
            # standardisation of the pre-training targets: from a fixed block of corpus scenes
            cats = np.concatenate([self._scenes(STATS_OFFSET + k * t["batch_size"])[2]
                                   for k in range(max(1, 512 // t["batch_size"]))]) if n_vision else np.zeros((1, 1))
            stats = (cats.mean(0), np.where(cats.std(0) > 0, cats.std(0), 1.0))
            t0 = time.perf_counter()
            window = []
            for step in tqdm(range(start, total), desc="blip2-synthetic captioner", initial=start, total=total,
                             disable=None):
                vision = step < n_vision
                ret.model.train()
                gen.model.train()
                if vision:
                    loss = self._vision_loss(step, m, stats)
                    opt, sched, parts = m["opt_v"], m["sched_v"], (loss.item(),)
                else:
                    ret.model.vision_model.eval()  # frozen from here on
                    itc, lm = self._loss(self._batch(step - n_vision, ret, gen), ret, gen, log_temp)
                    loss, opt, sched, parts = itc + lm, m["opt"], m["sched"], (itc.item(), lm.item())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                with torch.no_grad():
                    log_temp.clamp_(float(np.log(0.01)), float(np.log(0.5)))
                window.append(parts)
                done = step + 1
                if done % t["checkpoint_every"] == 0 or done in (n_vision, total):
                    mean = np.mean(window, axis=0)
                    entry = {"step": done, "phase": "vision" if vision else "qformer"}
                    entry.update({"content_mse": float(mean[0])} if vision else
                                 {"itc": float(mean[0]), "lm": float(mean[1]),
                                  "temperature": float(log_temp.detach().exp())})
                    history.append(entry)
                    window = []
                    log.info("blip2-synthetic step %d/%d: %s", done, total, entry)
                    if done < total:
                        self._save(state_file, m, done, history)
            seconds = time.perf_counter() - t0
        meta = {"what": "BLIP-2 (transformers classes, small config) trained by backbones.blip2_synthetic on synthetic "
                        "scenes; not pretrained BLIP-2 weights",
                "trained_on": (f"synthetic scenes (brainharness.datasets.synthetic generator v{self.parts['generator']}, corpus "
                               f"seed {self.spec['corpus']['seed']}, {total * t['batch_size']} scenes at "
                               f"{self.spec['corpus']['image_size']} px), disjoint from every experiment's stimuli"),
                "key_parts": self.parts, "history": history, "train_seconds_this_run": seconds}
        for variant, backbone in (("retrieval", ret), ("generation", gen)):
            backbone.model.eval()
            backbone.save_pretrained(self.folder / variant)
            (self.folder / variant / "captioner.json").write_text(json.dumps(meta, indent=2, default=str))
        state_file.unlink(missing_ok=True)
        (self.folder / "captioner.json").write_text(json.dumps(meta, indent=2, default=str))


@register_backbone("blip2-synthetic")
class SyntheticBlip2(Blip2):
    """BLIP-2 trained here on synthetic scenes (cached), loaded as ``local:<dir>``.

    Options: ``variant`` (``generation``, default, or ``retrieval``: the two checkpoints of one
    training), ``config`` / ``corpus`` / ``train`` (override :data:`DEFAULT_CONFIG`,
    :data:`DEFAULT_CORPUS`, :data:`DEFAULT_TRAIN`), ``cache_dir`` (the cache root; the runner sets the config's),
    and the ``blip2`` options ``layer``, ``readout``, ``batch_size``, ``device``, ``half``.
    Constructing it trains the captioner when it is not cached yet.
    """

    default_weights = "trained here on synthetic scenes (backbones.blip2_synthetic)"
    version = "1"

    params = {**{k: v for k, v in Blip2.params.items() if k not in ("weights", "model", "variant", "config")},
              "variant": Param("generation", choices=VARIANT_DIRS,
                               doc="generation or retrieval: the two checkpoints of one training"),
              "config": Param(None, dict, doc="overrides of DEFAULT_CONFIG (the BLIP-2 model trained here)"),
              "corpus": Param(None, dict, doc="overrides of DEFAULT_CORPUS (the synthetic training scenes)"),
              "train": Param(None, dict, doc="overrides of DEFAULT_TRAIN (steps, batch size, ...)")}

    def __init__(self, **params):
        for k in ("weights", "model"):
            if k in params:
                raise ConfigError(f"{self.owner()}: {k!r} is not an option (the weights are trained here); use "
                                  "the blip2 backbone with weights: local:<dir> for a saved checkpoint")
        super().__init__(**params)

    def configure(self, p):
        self.captioner_spec = resolve(p["config"], p["corpus"], p["train"])
        self.captioner_dir = ensure_captioner(self.captioner_spec, p["cache_dir"])
        self.captioner_meta = json.loads((self.captioner_dir / "captioner.json").read_text())
        self.weights = f"local:{self.captioner_dir / p['variant']}"
        super().configure({**p, "weights": self.weights, "config": None,
                           "model": f"blip2-synthetic-{self.captioner_dir.name[:8]}"})

    @classmethod
    def describe(cls) -> dict:
        return {**super().describe(), "weights": cls.default_weights}

    def weights_info(self) -> dict:
        return {**super().weights_info(), "trained_on": self.captioner_meta["trained_on"],
                "trainer": f"backbones.blip2_synthetic v{VERSION}", "pretrained": False}
