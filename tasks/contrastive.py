"""Stage 2 of seed 000 (paper §2.2, eq. 1): contrastive fine-tuning of the brain model.

The brain model is the stage-1 ridge map (voxels → Q-Former query outputs, ``Q × H``) as a
torch linear layer, initialised from the ridge coefficients and intercept. A learned linear
``brain_projection`` (``H → D``) maps each of its ``Q`` output tokens into the image-text space
of a BLIP-2 retrieval model (``Blip2ForImageTextRetrieval``, e.g. ``Salesforce/blip2-itm-vit-g``);
the loss is eq. 1::

    L = λ1·MSE(b, i) + λ2·InfoNCE(b, t) + λ3·InfoNCE(i, t)

* ``b`` — the brain model's output; ``i`` — the stimulus's true query outputs (the stage-1
  target). ``mse`` picks the MSE term: ``plain`` — the mean of ``(b − i)²`` over every element,
  as the seed's code (``F.mse_loss``); ``normalised`` — that divided by the training targets' mean
  variance, so λ1 does not depend on the embedding's scale; ``ridge`` (the default; not in the
  paper) — normalised plus stage 1's ridge penalty
  ``Σ_t α_t‖w_t‖² / (rows · targets)`` with each target's GCV-chosen α, so the ridge solution
  stays the MSE term's minimum. Without it, gradient steps on the MSE alone walk away from the
  regularised solution toward an over-fitted one: on the synthetic seed-000 data, MSE alone
  (λ2 = λ3 = 0) raised the validation MSE from 0.472 to 0.531 in 10 epochs (0.472–0.480 with
  the penalty), so the MSE term was not the anchor to stage 1 that eq. 1 means it to be.
* ``t`` — the caption's text embedding from the retrieval model's Q-Former text path (BERT
  embeddings → Q-Former without queries → ``[CLS]`` → ``text_projection``, L2-normalised), as
  ``Blip2ForImageTextRetrieval`` computes ``text_embeds``.
* InfoNCE is BLIP-2's image-text contrastive loss: similarity of a query-token embedding set
  and a text = max over the ``Q`` tokens of the cosine (``normalize(brain_projection(b))`` for
  the brain, ``normalize(vision_projection(i))`` for the image — the library's ``image_embeds``
  of the true query outputs), divided by a learned temperature; cross-entropy in both
  directions, optional label smoothing (the seed's code used 0.1); every image of a batch is a
  different stimulus (one random caption each), so the positives are the diagonal.
* Trainable, as in the paper: the brain model (its learning rate × ``brain_lr_factor``, the
  seed's code used 1/5), ``brain_projection``, the temperature, and — for the λ3 term, "to
  prevent catastrophic forgetting" — the Q-Former text path (``embeddings``, ``qformer``,
  ``text_projection``) and ``vision_projection`` (``train_text_path: false`` freezes them). They
  are **copies**: the retrieval backbone itself is never modified.
* ``brain_projection`` starts as a copy of ``vision_projection`` (``projection_init``), so
  epoch 0 of stage 2 *is* stage 1 read through BLIP-2's own image-text head; ``random``
  starts it as a fresh ``nn.Linear`` as the seed's code did; ``tied`` *is* the (trainable copy
  of) ``vision_projection``: the brain must then predict query outputs that BLIP-2's own head
  reads as matching the caption, instead of aligning through a private projection. On the
  synthetic seed-000 data (validation part, λ1 = λ2 = λ3 = 1, 30 epochs) tied reached a higher
  validation retrieval (mean top-1 of the four directions 0.096 vs 0.081) at a lower
  validation MSE (0.56 vs 0.63).

:func:`train_stage2` runs AdamW (``lr_schedule``, gradient clipping) over seeded
batches; with a validation part it evaluates eq. 1 and its terms on it (first caption of each
image) and Table 1's four top-1 accuracies among all validation images before training (epoch 0)
and after every epoch, keeps the weights of the epoch with the best ``select_on`` (lowest
``loss`` = eq. 1's total, as the seed's code, or one term: ``brain_text``, ``mse``,
``image_text``; highest ``retrieval`` = the mean of the four accuracies) and stops after
``patience`` epochs without improvement (at most ``max_epochs``); with ``epochs=N`` it trains exactly N epochs (the refit on the whole training
split at the validation-selected epoch count).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np

from brainharness.errors import ConfigError, DataError
from brainharness.params import Param

SELECT_ON = ("loss", "brain_text", "mse", "image_text", "retrieval")
MSE_KINDS = ("plain", "normalised", "ridge")
MAXIMISED = ("retrieval",)  # validation accuracy: higher is better; the loss terms: lower
STAGE2_PARAMS = {
    "lambda_mse": Param(1.0, ge=0, doc="λ1 of eq. 1: MSE to the true query outputs"),
    "lambda_brain_text": Param(1.0, ge=0, doc="λ2: InfoNCE brain ↔ caption"),
    "lambda_image_text": Param(1.0, ge=0, doc="λ3: InfoNCE image ↔ caption"),
    "lr": Param(1e-4, gt=0, doc="stage-2 learning rate (AdamW)"),
    "brain_lr_factor": Param(0.2, gt=0, doc="learning rate of the brain map, × lr"),
    "weight_decay": Param(0.0, ge=0, doc="AdamW weight decay"),
    "temperature": Param(0.07, gt=0, doc="initial InfoNCE temperature"),
    "learn_temperature": Param(True, doc="train the temperature"),
    "label_smoothing": Param(0.1, ge=0, lt=1, doc="InfoNCE label smoothing"),
    "batch_size": Param(64, ge=2, doc="stage-2 batch size (negatives: the rest of the batch)"),
    "max_epochs": Param(30, ge=1, doc="stage-2 epochs at most"),
    "patience": Param(5, ge=1, doc="epochs without improvement before stopping"),
    "grad_clip": Param(1.0, ge=0, doc="gradient-norm clip (0: none)"),
    "train_text_path": Param(True, doc="train the Q-Former text path and projections too (false: frozen)"),
    "projection_init": Param("vision_projection", choices=("vision_projection", "random", "tied"),
                             doc="brain_projection: a copy of vision_projection, random, or vision_projection itself"),
    "max_text_tokens": Param(64, ge=2, doc="caption tokens kept"),
    "select_on": Param("loss", choices=SELECT_ON, doc="validation score that picks the epoch"),
    "mse": Param("ridge", choices=MSE_KINDS,
                 doc="MSE term: plain mean (the seed's code), ÷ target variance, or that + stage 1's ridge penalty"),
    "lr_schedule": Param("constant", choices=("constant", "cosine"),
                         doc="learning rate: constant, or cosine decay to 0 over max_epochs (the seed's code)"),
}
STAGE2_SPACE = {
    "lambda_mse": {"low": 0.1, "high": 10.0, "log": True},
    "lambda_brain_text": {"low": 0.1, "high": 10.0, "log": True},
    "lambda_image_text": {"low": 0.01, "high": 10.0, "log": True},
    "lr": {"low": 1e-5, "high": 1e-2, "log": True},
    "temperature": {"low": 0.01, "high": 0.2, "log": True},
}


def check_stage2(owner: str, p: dict) -> None:
    """The rule across the stage-2 parameters (each is checked by its Param)."""
    if p["lambda_mse"] + p["lambda_brain_text"] + p["lambda_image_text"] == 0:
        raise ConfigError(f"{owner}: at least one of lambda_mse, lambda_brain_text, lambda_image_text must be > 0")


@dataclass
class Paired:
    """Rows of one part of the training split: standardised voxels, true query outputs, captions."""

    x: np.ndarray  # (n, voxels) float32
    y: np.ndarray  # (n, Q·H) float32
    captions: list[list[str]]

    def __post_init__(self):
        if not (len(self.x) == len(self.y) == len(self.captions)):
            raise DataError(f"stage 2: {len(self.x)} brain rows, {len(self.y)} targets, {len(self.captions)} "
                            "caption lists")
        empty = [i for i, c in enumerate(self.captions) if not c]
        if empty:
            raise DataError(f"stage 2 needs a caption for every training image; row {empty[0]} has none")


@dataclass
class Stage2Result:
    model: object  # Stage2Model
    best_epoch: int
    history: list = field(default_factory=list)
    seconds: float = 0.0


def _torch():
    import torch

    return torch


def stage2_model_class():
    torch = _torch()
    nn, F = torch.nn, torch.nn.functional

    class Stage2Model(nn.Module):
        """Brain model + projection + (copied) BLIP-2 text path and image head."""

        def __init__(self, coef, intercept, shape: tuple[int, int], retrieval, p: dict):
            super().__init__()
            self.shape = tuple(shape)
            q, h = self.shape
            coef = torch.as_tensor(coef, dtype=torch.float32)
            intercept = torch.as_tensor(intercept, dtype=torch.float32)
            if coef.ndim != 2 or coef.shape[1] != q * h or intercept.shape != (q * h,):
                raise DataError(f"stage 2: ridge coefficients {tuple(coef.shape)} / intercept "
                                f"{tuple(intercept.shape)} do not map onto {q}×{h} query outputs")
            vp = retrieval.vision_projection
            if vp.in_features != h:
                raise ConfigError(f"stage 2: the retrieval model's Q-Former width is {vp.in_features}, the brain "
                                  f"model predicts {h}-wide query outputs; use a retrieval model with the same "
                                  "Q-Former width as the feature backbone")
            self.brain = nn.Linear(coef.shape[0], q * h)
            with torch.no_grad():
                self.brain.weight.copy_(coef.T)
                self.brain.bias.copy_(intercept)
            self.vision_projection = copy.deepcopy(vp).float()
            self.brain_projection = {"vision_projection": lambda: copy.deepcopy(vp).float(),
                                     "random": lambda: nn.Linear(h, vp.out_features),
                                     "tied": lambda: self.vision_projection}[p["projection_init"]]()
            self.embeddings = copy.deepcopy(retrieval.embeddings).float()
            self.qformer = copy.deepcopy(retrieval.qformer).float()
            self.text_projection = copy.deepcopy(retrieval.text_projection).float()
            self.log_temp = nn.Parameter(torch.tensor(float(np.log(p["temperature"]))),
                                         requires_grad=bool(p["learn_temperature"]))

        def brain_queries(self, x):
            return self.brain(x).reshape(len(x), *self.shape)

        def text_embeds(self, input_ids, attention_mask):
            out = self.qformer(query_embeds=self.embeddings(input_ids=input_ids), query_length=0,
                               attention_mask=attention_mask, return_dict=True).last_hidden_state
            return F.normalize(self.text_projection(out[:, 0, :]), dim=-1)

        def shared(self, queries, projection):
            return F.normalize(projection(queries), dim=-1)

        def param_groups(self, p: dict) -> list[dict]:
            text = [*self.embeddings.parameters(), *self.qformer.parameters(), *self.text_projection.parameters(),
                    *self.vision_projection.parameters()]
            for t in text:
                t.requires_grad_(bool(p["train_text_path"]))
            groups = [{"params": list(self.brain.parameters()), "lr": p["lr"] * p["brain_lr_factor"]}]
            if self.brain_projection is not self.vision_projection:  # tied: trained with the text path
                groups.append({"params": list(self.brain_projection.parameters()), "lr": p["lr"]})
            if p["train_text_path"]:
                groups.append({"params": text, "lr": p["lr"]})
            if p["learn_temperature"]:
                groups.append({"params": [self.log_temp], "lr": p["lr"]})
            return groups

    return Stage2Model


def query_text_similarity(queries, texts):
    """BLIP-2's image-text similarity: max over query tokens of the dot product.

    ``queries`` (n, Q, D), ``texts`` (m, D), both L2-normalised → (n, m). numpy or torch.
    """
    if isinstance(queries, np.ndarray):
        return np.einsum("nqd,md->nqm", queries, texts).max(1)
    torch = _torch()
    return torch.einsum("nqd,md->nqm", queries, texts).max(1).values


def info_nce(queries, texts, log_temp, smoothing: float):
    """Symmetric InfoNCE of paired rows (row k of ``queries`` ↔ row k of ``texts``)."""
    torch = _torch()
    F = torch.nn.functional
    sim = query_text_similarity(queries, texts) / log_temp.exp()
    target = torch.arange(len(sim), device=sim.device)
    return (F.cross_entropy(sim, target, label_smoothing=smoothing)
            + F.cross_entropy(sim.T, target, label_smoothing=smoothing)) / 2


def eq1(model, x, y, ids, mask, p: dict, target_var: float, penalty=None) -> tuple:
    """Eq. 1 on one batch → (total, {mse, brain_text, image_text}).

    ``penalty`` = (per-target ridge α, training rows): the MSE term becomes stage 1's ridge
    objective per target and row, Σ(b − i)² + α·‖w‖², so the ridge solution is its minimum.
    """
    b = model.brain_queries(x)
    return eq1_terms(model, b, y.reshape(b.shape), model.text_embeds(ids, mask), p, target_var, penalty)


def eq1_terms(model, b, i, t, p: dict, target_var: float, penalty=None) -> tuple:
    """Eq. 1 from the brain's query outputs ``b``, the true ones ``i`` and text embeddings ``t``."""
    mse = ((b - i) ** 2).mean() / target_var
    if penalty is not None:
        alphas, n_rows = penalty
        w = model.brain.weight  # (targets, voxels)
        mse = mse + (alphas * w.pow(2).sum(1)).sum() / (n_rows * w.shape[0] * target_var)
    bt = info_nce(model.shared(b, model.brain_projection), t, model.log_temp, p["label_smoothing"])
    it = info_nce(model.shared(i, model.vision_projection), t, model.log_temp, p["label_smoothing"])
    total = p["lambda_mse"] * mse + p["lambda_brain_text"] * bt + p["lambda_image_text"] * it
    return total, {"mse": mse, "brain_text": bt, "image_text": it}


class TextBatcher:
    """Tokenises captions with the retrieval model's tokenizer (cached per caption)."""

    def __init__(self, tokenizer, max_tokens: int, device):
        self.tok, self.max, self.device = tokenizer, max_tokens, device

    def __call__(self, texts: list[str]):
        enc = self.tok(list(texts), padding=True, truncation=True, max_length=self.max, return_tensors="pt",
                       return_token_type_ids=False)
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)


def _pick_captions(captions: list[list[str]], rows: np.ndarray, rng: np.random.Generator | None) -> list[str]:
    if rng is None:  # validation: the first caption, the same every epoch
        return [captions[r][0] for r in rows]
    return [captions[r][int(rng.integers(len(captions[r])))] for r in rows]


def evaluate(model, data: Paired, texts: TextBatcher, p: dict, target_var: float, device) -> dict:
    """Eq. 1 and its parts on ``data`` (eval mode, first caption of each image), batch-averaged;
    and top-1 accuracy among all of ``data``'s rows in Table 1's four directions
    (``top1_brain_image`` … ``top1_text_brain``), ``retrieval`` = their mean."""
    torch = _torch()
    F = torch.nn.functional
    model.eval()
    n, bs = len(data.x), p["batch_size"]
    sums, count = {"loss": 0.0, "mse": 0.0, "brain_text": 0.0, "image_text": 0.0}, 0
    brain, shared, text = [], [], []
    with torch.no_grad():
        for start in range(0, n, bs):
            rows = np.arange(start, min(start + bs, n))
            x = torch.as_tensor(data.x[rows], device=device)
            y = torch.as_tensor(data.y[rows], device=device)
            b = model.brain_queries(x)
            t = model.text_embeds(*texts(_pick_captions(data.captions, rows, None)))
            brain.append(b.flatten(1))
            shared.append(model.shared(b, model.brain_projection))
            text.append(t)
            if len(rows) < 2:
                continue  # a contrastive term needs two rows
            total, parts = eq1_terms(model, b, y.reshape(b.shape), t, p, target_var)
            sums["loss"] += float(total) * len(rows)
            for k, v in parts.items():
                sums[k] += float(v) * len(rows)
            count += len(rows)
        out = {k: v / max(count, 1) for k, v in sums.items()}
        b = F.normalize(torch.cat(brain), dim=-1)
        i = F.normalize(torch.as_tensor(data.y, device=device), dim=-1)
        bt = query_text_similarity(torch.cat(shared), torch.cat(text))
        hits = lambda sim: float((sim.argmax(1) == torch.arange(n, device=sim.device)).float().mean())
        top1 = {"top1_brain_image": hits(b @ i.T), "top1_image_brain": hits(i @ b.T),
                "top1_brain_text": hits(bt), "top1_text_brain": hits(bt.T)}
    return {**out, **top1, "retrieval": float(np.mean(list(top1.values())))}


def train_stage2(coef, intercept, shape, retrieval_model, tokenizer, train: Paired, p: dict, *,
                 val: Paired | None = None, epochs: int | None = None, seed: int = 0, device="cpu",
                 progress: bool = False, alphas=None) -> Stage2Result:
    """Fit stage 2 from the ridge map (``coef`` (voxels, Q·H), ``intercept``; ``alphas``: its
    per-target α, for ``mse: ridge``).

    With ``val``: early stopping on eq. 1 over ``val`` (epoch 0 = the initial model), the best
    epoch's weights kept. With ``epochs``: exactly that many epochs, no validation.
    """
    torch = _torch()
    from tqdm.auto import tqdm

    if (val is None) == (epochs is None):
        raise ConfigError("train_stage2: give either a validation part or a fixed number of epochs")
    if len(train.x) < 2:
        raise DataError("stage 2 needs at least two training images")
    start_time = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if torch.device(device).type == "cuda" else []):
        torch.manual_seed(seed)
        model = stage2_model_class()(coef, intercept, shape, retrieval_model, p).to(device)
        opt = torch.optim.AdamW(model.param_groups(p), lr=p["lr"], weight_decay=p["weight_decay"])
        texts = TextBatcher(tokenizer, p["max_text_tokens"], device)
        target_var = 1.0 if p["mse"] == "plain" else float(np.mean(train.y.var(0))) or 1.0
        penalty = None
        if p["mse"] == "ridge":
            if alphas is None:
                raise ConfigError("stage 2: mse: ridge needs the stage-1 ridge's per-target alphas")
            penalty = (torch.as_tensor(np.asarray(alphas), dtype=torch.float32, device=device), len(train.x))
        x_all = torch.as_tensor(train.x, device=device)
        y_all = torch.as_tensor(train.y, device=device)
        history: list[dict] = []
        best = (np.inf, 0, None)
        if val is not None:
            first = evaluate(model, val, texts, p, target_var, device)
            history.append({"epoch": 0, **{f"val_{k}": v for k, v in first.items()}})
            best = (_criterion(first, p), 0, _snapshot(model))
        n_epochs = epochs if epochs is not None else p["max_epochs"]
        bs = min(p["batch_size"], len(train.x))
        sched = lr_schedule(opt, p, p["max_epochs"] * (len(train.x) // bs))
        for epoch in tqdm(range(1, n_epochs + 1), desc="stage 2", disable=not progress):
            model.train()
            rng = np.random.default_rng([seed, epoch])
            order = rng.permutation(len(train.x))
            sums, n_batches = {"loss": 0.0, "mse": 0.0, "brain_text": 0.0, "image_text": 0.0}, 0
            for s in range(0, len(order) - bs + 1, bs):  # full batches only: equal-sized contrastive sets
                rows = np.sort(order[s:s + bs])
                total, parts = eq1(model, x_all[rows], y_all[rows],
                                   *texts(_pick_captions(train.captions, rows, rng)), p, target_var, penalty)
                opt.zero_grad(set_to_none=True)
                total.backward()
                if p["grad_clip"]:
                    torch.nn.utils.clip_grad_norm_([q for g in opt.param_groups for q in g["params"]], p["grad_clip"])
                opt.step()
                sched.step()
                with torch.no_grad():
                    model.log_temp.clamp_(float(np.log(1e-3)), float(np.log(0.5)))
                sums["loss"] += float(total.detach())
                for k, v in parts.items():
                    sums[k] += float(v.detach())
                n_batches += 1
            row = {"epoch": epoch, **{f"train_{k}": v / max(n_batches, 1) for k, v in sums.items()},
                   "temperature": float(model.log_temp.detach().exp())}
            if val is not None:
                scores = evaluate(model, val, texts, p, target_var, device)
                row.update({f"val_{k}": v for k, v in scores.items()})
                if _criterion(scores, p) < best[0]:
                    best = (_criterion(scores, p), epoch, _snapshot(model))
                history.append(row)
                if epoch - best[1] >= p["patience"]:
                    break
            else:
                history.append(row)
        best_epoch = n_epochs if val is None else best[1]
        if val is not None:
            model.load_state_dict(best[2])
        model.eval()
    return Stage2Result(model, best_epoch, history, time.perf_counter() - start_time)


def lr_schedule(opt, p: dict, total_steps: int):
    """``cosine``: the seed's ``get_cosine_schedule_with_warmup`` without warm-up — lr × ½(1 + cos(π·step /
    total)), total = ``max_epochs`` of steps in the selection run *and* the refit, so a refit for the
    selected number of epochs follows the selection run's curve. ``constant``: lr throughout."""
    torch = _torch()
    if p["lr_schedule"] == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    total = max(int(total_steps), 1)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 * (1 + np.cos(np.pi * min(step, total) / total)))


def _criterion(scores: dict, p: dict) -> float:
    """The validation number an epoch is selected on, as lower-is-better."""
    value = scores[p["select_on"]]
    return -value if p["select_on"] in MAXIMISED else value


def _snapshot(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def encode_texts(model, tokenizer, texts: list[str], p: dict, device, batch_size: int = 256) -> np.ndarray:
    """Stage-2 text embeddings (the fine-tuned text path), (len(texts), D) normalised."""
    torch = _torch()
    batcher = TextBatcher(tokenizer, p["max_text_tokens"], device)
    model.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(texts), batch_size):
            out.append(model.text_embeds(*batcher(texts[s:s + batch_size])).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, model.text_projection.out_features), np.float32)


def brain_outputs(model, x: np.ndarray, device, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Stage-2 brain model on standardised voxels → (query outputs (n, Q·H), shared embeds (n, Q, D))."""
    torch = _torch()
    model.eval()
    qs, shared = [], []
    with torch.no_grad():
        for s in range(0, len(x), batch_size):
            b = model.brain_queries(torch.as_tensor(x[s:s + batch_size], device=device))
            qs.append(b.flatten(1).float().cpu())
            shared.append(model.shared(b, model.brain_projection).float().cpu())
    return torch.cat(qs).numpy(), torch.cat(shared).numpy()


def projected_images(model, y: np.ndarray, device, batch_size: int = 512) -> np.ndarray:
    """True query outputs ``y`` (n, Q·H) in the stage-2 shared space: ``normalize(vision_projection(i))``
    per token, (n, Q, D) — the image side of the seed's code's image ↔ brain retrieval after stage 2."""
    torch = _torch()
    model.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(y), batch_size):
            i = torch.as_tensor(y[s:s + batch_size], device=device).reshape(-1, *model.shape)
            out.append(model.shared(i, model.vision_projection).float().cpu())
    return torch.cat(out).numpy()
