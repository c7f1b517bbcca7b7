"""Stage 2 of ``aligned_encoding`` (seed 004): the model pieces and the fine-tuning loop.

:func:`finetune` trains a private copy of the backbone's torch module (partly unfrozen,
:func:`trainable_names`) with the stage-1 voxel head (:class:`VoxelHead`) and the text-alignment
projection, loss ``MSE + λ · InfoNCE`` (:func:`info_nce`); see :mod:`brainharness.tasks.aligned_encoding`.
"""
from __future__ import annotations

import copy
import fnmatch

import numpy as np

from brainharness.errors import ConfigError
from brainharness.metrics import encoding_scores
from brainharness.readout import ridge_model
from brainharness.task import TaskContext, column_scale

_POST_BLOCK = ("norm.", "fc_norm.", "head.", "attn_pool.", "head_drop.")  # modules after the blocks
_PIXEL_CACHE_BYTES = 2**30  # keep a split's preprocessed pixels in memory below this size
_TORCH_CLASSES: dict[str, type] = {}  # torch.nn.Module subclasses, defined on first use (torch stays lazy)


def finetune(p: dict, ctx: TaskContext, backbone, blocks: list[int], s1: dict, keep: np.ndarray, align=None,
             text_info: dict | None = None) -> dict:
    """Stage 2 from the stage-1 result ``s1``: fine-tune a private copy of the backbone's module
    (:func:`trainable_names`), the voxel head and, with ``align = (normalised text embeddings of
    the stage-1 rows, their text-group ids)``, the alignment projection W (ridge init), keeping
    the validation-selected epoch (or the last of ``epochs``). ``text_info`` goes into the
    details."""
    import torch
    import torch.nn.functional as F

    device = backbone.torch_device()
    torch.manual_seed(ctx.seed)
    rng = np.random.default_rng(ctx.seed)
    train, val = s1["train"], s1["val"]

    # the model: a private copy of the backbone's module, partly unfrozen
    model = copy.deepcopy(backbone.torch_model).to(device).eval().requires_grad_(False)
    names = trainable_names(model, blocks, p["unfreeze"], p["freeze"])
    params = dict(model.named_parameters())
    for n in names:
        params[n].requires_grad_(True)
    encode = BlockFeatures(model, blocks, backbone)
    head = s1["head"].torch_module(device, trainable=bool(p["train_head"]))

    # the alignment projection W (ridge init onto the text embeddings), only with the alignment term
    lam = float(p["lam"])
    proj = text = groups = None
    if align is not None:
        emb, groups_np = align
        W = ridge_map(s1["head"].standardise_numpy(s1["X_tr"]), emb, p, ctx.device)
        proj = torch.nn.Linear(W.shape[0], W.shape[1], bias=False).to(device)
        with torch.no_grad():
            proj.weight.copy_(torch.as_tensor(W.T))
        text = torch.as_tensor(emb, device=device)
        groups = torch.as_tensor(groups_np, device=device)

    head_lr = float(p["head_lr"] if p["head_lr"] is not None else p["lr"])
    extra = ([*head.parameters()] if p["train_head"] else []) + ([*proj.parameters()] if proj else [])
    param_groups = [g for g in ({"params": [params[n] for n in names], "lr": float(p["lr"])},
                                {"params": extra, "lr": head_lr}) if g["params"]]
    if not param_groups:
        raise ConfigError("aligned_encoding: stage 2 has nothing to train (no unfrozen parameter, "
                          "train_head false, λ = 0)")
    opt = torch.optim.AdamW(param_groups, weight_decay=float(p["weight_decay"]))
    warmup_steps = float(p["warmup_epochs"]) * -(-len(train.stim_ids) // int(p["batch_size"]))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warmup_steps)
                                              if warmup_steps > 0 else 1.0)
    trainables = {**{f"model.{n}": params[n] for n in names},
                  **{f"head.{n}": q for n, q in head.named_parameters()},
                  **({f"proj.{n}": q for n, q in proj.named_parameters()} if proj else {})}

    bs = int(p["batch_size"])
    tr_pix = Pixels(backbone, ctx.stimuli, train.stim_ids, device)
    va_pix = Pixels(backbone, ctx.stimuli, val.stim_ids, device)
    Y = torch.as_tensor(train.averaged[:, keep], device=device)

    def predict(pix: "Pixels") -> np.ndarray:
        with torch.no_grad():
            return torch.cat([head(encode(pix.batch(np.arange(i, min(i + bs, len(pix))))))
                              for i in range(0, len(pix), bs)]).cpu().numpy()

    fixed = p["epochs"] is not None
    n_epochs = int(p["epochs"] if fixed else p["max_epochs"])
    val0 = s1["scorer"](predict(va_pix))
    history = [{"epoch": 0, "loss": None, "mse": None, "nce": None, "validation_score": val0}]
    best_score, best_epoch, best_state, bad = val0, 0, _snapshot(trainables), 0
    for epoch in range(1, n_epochs + 1):
        order = rng.permutation(len(train.stim_ids))
        sums = np.zeros(3)
        for i in range(0, len(order), bs):
            rows = np.sort(order[i:i + bs])
            f = encode(tr_pix.batch(rows))
            mse = F.mse_loss(head(f, dropout=float(p["dropout"])), Y[rows])
            loss, nce = mse, torch.zeros(())
            if proj is not None and len(rows) > 1:
                nce = info_nce(proj(head.standardise(f)), text[rows], groups[rows], float(p["tau"]))
                loss = mse + lam * nce
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            sums += np.array([loss.item(), mse.item(), nce.item()]) * len(rows)
        score = s1["scorer"](predict(va_pix))
        sums /= len(order)
        history.append({"epoch": epoch, "loss": sums[0], "mse": sums[1], "nce": sums[2] if proj else None,
                        "validation_score": score})
        if fixed:
            best_score, best_epoch = score, epoch
        elif score > best_score:
            best_score, best_epoch, best_state, bad = score, epoch, _snapshot(trainables), 0
        else:
            bad += 1
            if bad >= int(p["patience"]):
                break
    if not fixed:
        _restore(trainables, best_state)

    def predict_ids(ids) -> np.ndarray:
        return predict(Pixels(backbone, ctx.stimuli, np.asarray(ids), device))

    n_trainable = sum(params[n].numel() for n in names)
    details = {"trainable_backbone_params": n_trainable, "trainable_backbone_tensors": len(names),
               "trainable_examples": names[:6], "text": text_info or {}, "stage2_validation_score": best_score,
               "selected_epoch": best_epoch, "epoch_selection": "fixed (epochs)" if fixed else
               f"best validation score, patience {p['patience']}, at most {p['max_epochs']} epochs"}
    return {"predict": predict_ids, "history": history, "best_epoch": best_epoch, "epochs_run": len(history) - 1,
            "val_score": best_score, "details": details}


# -- the model pieces -----------------------------------------------------------------
def trainable_names(model, blocks: list[int], unfreeze, freeze) -> list[str]:
    """Parameter names stage 2 trains: ``unfreeze`` (``all`` = every parameter feeding the read
    blocks; or block indices and name globs) minus the ``freeze`` globs."""
    last = max(blocks)
    feeding = []
    for n, _ in model.named_parameters():
        if n.startswith("blocks."):
            if int(n.split(".")[1]) <= last:
                feeding.append(n)
        elif not n.startswith(_POST_BLOCK):
            feeding.append(n)
    if unfreeze == "all":
        chosen = feeding
    else:
        pats = [f"blocks.{u}.*" if isinstance(u, int) else u for u in unfreeze]
        chosen = [n for n in feeding if any(fnmatch.fnmatchcase(n, q) for q in pats)]
        unknown = [u for u, q in zip(unfreeze, pats) if not any(fnmatch.fnmatchcase(n, q) for n, _ in
                                                                model.named_parameters())]
        if unknown:
            raise ConfigError(f"aligned_encoding: unfreeze entry {unknown[0]!r} matches no parameter of the model")
    return [n for n in chosen if not any(fnmatch.fnmatchcase(n, q) for q in freeze)]


class BlockFeatures:
    """``Eva.block_readouts`` of a fine-tuned copy of the network, concatenated (differentiable)."""

    def __init__(self, model, blocks: list[int], backbone):
        self.model, self.blocks, self.backbone = model, list(blocks), backbone

    def __call__(self, x):
        import torch

        outs, _ = self.backbone.block_readouts(x, self.blocks, model=self.model)
        return torch.cat([o.flatten(1) for o in outs], 1)


class VoxelHead:
    """Standardise → linear → (optional PCA basis) → voxels; numpy arrays, fitted by ridge."""

    def __init__(self, mu, sd, weight, bias, basis=None, offset=None):
        self.mu, self.sd, self.weight, self.bias, self.basis, self.offset = mu, sd, weight, bias, basis, offset
        self.in_dim = len(mu)

    @classmethod
    def fit_ridge(cls, X: np.ndarray, Y: np.ndarray, p: dict, device) -> "VoxelHead":
        mu, sd = column_scale(X)  # constant and single-row columns: sd = inf → 0 (brainharness.task.standardise)
        sd = sd.astype(np.float32)
        Xs = ((X - mu) / sd).astype(np.float32)
        basis = offset = None
        target = Y
        if p["voxel_pca"]:
            k = int(p["voxel_pca"])
            if k > min(Y.shape):
                raise ConfigError(f"aligned_encoding: voxel_pca {k} exceeds min(rows, voxels) = {min(Y.shape)}")
            offset = Y.mean(0)
            _, _, vt = np.linalg.svd((Y - offset).astype(np.float64), full_matrices=False)
            basis = vt[:k].astype(np.float32)  # (k, voxels), orthonormal rows
            target = ((Y - offset) @ basis.T).astype(np.float32)
        W = ridge_map(Xs, target, p, device, bias=True)
        return cls(mu.astype(np.float32), sd, W[0], W[1], basis, offset.astype(np.float32) if offset is not None
                   else None)

    def standardise_numpy(self, X):
        return ((X - self.mu) / self.sd).astype(np.float32)

    def predict_numpy(self, X: np.ndarray) -> np.ndarray:
        out = self.standardise_numpy(X) @ self.weight + self.bias
        return out @ self.basis + self.offset if self.basis is not None else out

    def torch_module(self, device, trainable: bool):
        if "head" not in _TORCH_CLASSES:
            _TORCH_CLASSES["head"] = _torch_head_class()
        return _TORCH_CLASSES["head"](self, device, trainable)


def _torch_head_class():
    import torch

    class TorchHead(torch.nn.Module):
        def __init__(self, h: VoxelHead, device, trainable: bool):
            super().__init__()
            t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32), device=device)  # noqa: E731
            self.register_buffer("mu", t(h.mu))
            self.register_buffer("sd", t(h.sd))
            self.linear = torch.nn.Linear(*h.weight.shape).to(device)
            with torch.no_grad():
                self.linear.weight.copy_(t(h.weight).T)
                self.linear.bias.copy_(t(h.bias))
            self.linear.requires_grad_(trainable)
            self.pca = h.basis is not None
            if self.pca:
                self.register_buffer("basis", t(h.basis))
                self.register_buffer("offset", t(h.offset))

        def standardise(self, f):
            return (f - self.mu) / self.sd

        def forward(self, f, dropout: float = 0.0):
            x = self.standardise(f)
            # seed 004's dropout, on the head's input while training (predictions never drop)
            out = self.linear(torch.nn.functional.dropout(x, dropout) if dropout > 0 else x)
            return out @ self.basis + self.offset if self.pca else out

    return TorchHead


def ridge_map(X: np.ndarray, Y: np.ndarray, p: dict, device, bias: bool = False):
    """Ridge ``X → Y`` with a per-target α by the task's CV rule (``cv``) → weights (and bias)."""
    model = ridge_model(p, device).fit(X, Y)
    W = model.coef_.float().cpu().numpy()
    return (W, model.intercept_.float().cpu().numpy()) if bias else W


def info_nce(image, text, groups, tau: float):
    """Text-anchored InfoNCE: each text against every image of the batch; same-text images are positives."""
    import torch.nn.functional as F

    logits = F.normalize(text, dim=1) @ F.normalize(image, dim=1).T / tau
    positive = (groups[:, None] == groups[None, :]).float()
    target = positive / positive.sum(1, keepdim=True)
    return -(target * logits.log_softmax(1)).sum(1).mean()


class ValidationScorer:
    """The selection score on the validation part: median normalised R² (median R² without NC)."""

    def __init__(self, Y: np.ndarray, nc: np.ndarray | None, threshold: float):
        self.Y, self.nc, self.threshold = Y, nc, threshold
        self.metric = "median_nc_r2" if nc is not None else "median_r2"

    def __call__(self, pred: np.ndarray) -> float:
        _, scores, _ = encoding_scores(pred, self.Y, self.nc, {}, self.threshold)
        value = scores.get(self.metric)
        if value is None:  # no voxel above the NC threshold on the validation part
            value = scores["median_r2"]
        return float(value)


class Pixels:
    """Preprocessed model inputs of ``ids`` (kept in memory when small), by row positions."""

    def __init__(self, backbone, stimuli, ids: np.ndarray, device):
        self.backbone, self.stimuli, self.ids, self.device = backbone, stimuli, np.asarray(ids), device
        size = 4 * len(self.ids) * int(np.prod(backbone.data_config["input_size"]))
        self.cached = None
        if size <= _PIXEL_CACHE_BYTES:
            import torch

            self.cached = torch.cat([self._load(np.arange(i, min(i + 256, len(self.ids))))
                                     for i in range(0, len(self.ids), 256)]) if len(self.ids) else None

    def __len__(self) -> int:
        return len(self.ids)

    def _load(self, rows: np.ndarray):
        return self.backbone.pixels(self.stimuli.images(self.ids[rows]), self.device)

    def batch(self, rows: np.ndarray):
        return self.cached[rows] if self.cached is not None else self._load(rows)


def _snapshot(tensors: dict) -> dict:
    return {k: v.detach().clone() for k, v in tensors.items()}


def _restore(tensors: dict, state: dict) -> None:
    import torch

    with torch.no_grad():
        for k, v in tensors.items():
            v.copy_(state[k])
