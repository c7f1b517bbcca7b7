"""Seed 002's unit analysis (Schwettmann et al.) on a decoder-only language model, in torch.

Units are the MLP neurons of chosen decoder layers: the input of each layer's output matrix
``fc2`` (OPT, as in BLIP-2's ``opt`` checkpoints), i.e. the activations ``A`` that ``W_out``
turns into the layer's MLP output (the paper's eq. 3, ``m = W_out A``). A unit is addressed by a
*flat index* ``l·F + k`` over the chosen layers (``F`` units each), in their given order.

* :func:`attribution` — eq. 2, ``g_{k,c} = Σ_p Z_p^k · ∂y^c/∂Z_p^k`` summed over the prefix
  positions ``p`` (the visual prefix), on the token ``c`` predicted next after the whole input
  (its logit ``y^c``): one forward and one backward pass per batch of inputs.
* :func:`greedy_caption`, :func:`caption_attribution` — the caption an input generates greedily, and
  eq. 2 on each of its tokens, teacher-forced (one backward pass per caption position).
* :func:`token_probability` — ``p(c)`` with a set of units zeroed at the prefix positions (per
  input its own set): the ablation of §3.3. First order, zeroing unit ``k`` changes ``y^c`` by
  ``≈ −g_k`` — what ``tests/test_neurons.py`` checks.
* :func:`decode_units` — §2.2, ``decoder(W_out^k)``: each unit's output weights through the
  unembedding (``project_out`` first where the model has one), its most probable tokens.
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from brainharness.errors import ConfigError


def decoder_layers(lm) -> list:
    """The decoder layers of an OPT causal language model (``OPTForCausalLM``)."""
    decoder = getattr(getattr(lm, "model", None), "decoder", None)
    layers = getattr(decoder, "layers", None)
    if layers is None or not all(getattr(layer, "fc2", None) is not None for layer in layers):
        raise ConfigError(f"neurons: the language model {type(lm).__name__} is not an OPT decoder (MLP units are "
                          "read at each layer's fc2 input)")
    return list(layers)


def resolve_layers(lm, layers) -> list[int]:
    """``layers``: null (all), or indices (negative from the end) → sorted distinct indices."""
    n = len(decoder_layers(lm))
    if layers is None:
        return list(range(n))
    out = []
    for i in layers:
        if not -n <= int(i) < n:
            raise ConfigError(f"neurons: layer {i} out of range (the language model has {n} layers)")
        out.append(int(i) % n)
    return sorted(set(out))


def n_units(lm, layers: list[int]) -> int:
    """Units per chosen layer (the MLP width)."""
    return int(decoder_layers(lm)[layers[0]].fc2.in_features)


@contextmanager
def _hooks(lm, layers: list[int], fn):
    """``fn(slot, x)`` on the input of each chosen layer's ``fc2`` (returns a replacement or None)."""
    mods = decoder_layers(lm)
    handles = [mods[li].fc2.register_forward_pre_hook(lambda _m, args, slot=s: _replace(args, fn(slot, args[0])))
               for s, li in enumerate(layers)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _replace(args, new):
    return None if new is None else (new, *args[1:])


def _logits(lm, embeds):
    import torch

    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    return lm(inputs_embeds=embeds, attention_mask=mask).logits[:, -1, :].float()


def attribution(lm, embeds, layers: list[int], positions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eq. 2 for inputs ``embeds`` (B, T, d) → ``(g (B, len(layers)·F), c (B,), p(c) (B,))``.

    ``c`` is each input's most probable next token; ``g`` sums ``Z·∂y^c/∂Z`` over ``positions``."""
    import torch

    embeds = embeds.detach().clone().requires_grad_(True)
    b, t = embeds.shape[:2]
    acts = []

    def keep(_slot, x):
        acts.append(x)

    with torch.enable_grad(), _hooks(lm, layers, keep):
        logits = _logits(lm, embeds)
        c = logits.argmax(-1)
        y = logits.gather(1, c[:, None]).sum()  # each row's own logit; rows do not interact
        grads = torch.autograd.grad(y, acts)
    pos = torch.as_tensor(list(positions), device=embeds.device)
    g = [(a * gr).reshape(b, t, -1)[:, pos, :].sum(1) for a, gr in zip(acts, grads)]
    prob = torch.softmax(logits.detach(), -1).gather(1, c[:, None])[:, 0]
    return (torch.cat(g, 1).detach().float().cpu().numpy(), c.cpu().numpy(), prob.cpu().numpy())


def greedy_caption(lm, embeds, max_new_tokens: int, eos: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The caption each input generates greedily after ``embeds`` (B, T, d) → ``(tokens (B, n), lengths (B,))``:
    ``tokens[i, :lengths[i]]`` are its tokens before ``eos`` (padded with ``eos`` or 0 after; ``n`` ≥ 1)."""
    import torch

    b = embeds.shape[0]
    emb = lm.get_input_embeddings()
    out = torch.zeros(b, max_new_tokens, dtype=torch.long, device=embeds.device)
    lengths = torch.full((b,), max_new_tokens, dtype=torch.long, device=embeds.device)
    x = embeds
    with torch.no_grad():
        for t in range(max_new_tokens):
            nxt = _logits(lm, x).argmax(-1)
            out[:, t] = nxt
            if eos is not None:
                ended = (nxt == eos) & (lengths == max_new_tokens)
                lengths[ended] = t
                if bool((lengths < max_new_tokens).all()):
                    break
            x = torch.cat([x, emb(nxt[:, None]).to(x.dtype)], 1)
    n = max(int(lengths.max()), 1)
    return out[:, :n].cpu().numpy(), lengths.cpu().numpy()


def caption_attribution(lm, embeds, layers: list[int], positions, tokens, lengths) -> np.ndarray:
    """Eq. 2 on every token of a caption, teacher-forced: inputs ``embeds`` (B, T, d) followed by
    ``tokens`` (B, n), ``lengths`` (B,) → ``g`` (B, n, len(layers)·F), float32.

    ``g[i, t]`` sums ``Z·∂y/∂Z`` over ``positions`` (of ``embeds``; the caption's own positions are not
    summed) for the logit of ``tokens[i, t]`` at the position that predicts it (the last of ``embeds``
    for ``t = 0``: :func:`attribution`'s g when the token is c). One forward pass, one backward pass per
    caption position (rows do not interact: their logits are summed); zero past ``lengths[i]``."""
    import torch

    ids = torch.as_tensor(np.asarray(tokens, dtype=np.int64), device=embeds.device)
    b, t0, n = embeds.shape[0], embeds.shape[1], ids.shape[1]
    x = torch.cat([embeds.detach(), lm.get_input_embeddings()(ids).to(embeds.dtype)], 1).requires_grad_(True)
    live = torch.as_tensor(np.arange(n)[None, :] < np.asarray(lengths)[:, None], device=embeds.device)
    pos = torch.as_tensor(list(positions), device=embeds.device)
    acts, g = [], np.zeros((b, n, 0), dtype=np.float32)

    def keep(_slot, a):
        acts.append(a)

    with torch.enable_grad(), _hooks(lm, layers, keep):
        mask = torch.ones(x.shape[:2], dtype=torch.long, device=x.device)
        logits = lm(inputs_embeds=x, attention_mask=mask).logits[:, t0 - 1:t0 - 1 + n, :].float()
        y = logits.gather(2, ids[..., None])[..., 0] * live  # (B, n): each token's logit where it is predicted
        per_t = []
        for t in range(n):
            grads = torch.autograd.grad(y[:, t].sum(), acts, retain_graph=t < n - 1)
            per_t.append(torch.cat([(a * gr).reshape(b, x.shape[1], -1)[:, pos, :].sum(1)
                                    for a, gr in zip(acts, grads)], 1).detach().float().cpu().numpy())
        g = np.stack(per_t, 1) if per_t else g
    return g * live.cpu().numpy()[..., None]


def token_probability(lm, embeds, layers: list[int], positions, tokens, units=None, logit: bool = False) -> np.ndarray:
    """``p(tokens[i])`` at the last position of input ``i`` with ``units[i]`` (flat indices;
    None: nothing) zeroed at ``positions`` → (B,); ``logit``: the logit ``y`` instead."""
    import torch

    b, t = embeds.shape[:2]
    f = n_units(lm, layers)
    keep = torch.ones(b, len(layers) * f, dtype=embeds.dtype, device=embeds.device)
    for i, u in enumerate(units if units is not None else []):
        keep[i, torch.as_tensor(np.asarray(u, dtype=np.int64), device=embeds.device)] = 0
    pos = torch.as_tensor(list(positions), device=embeds.device)

    def ablate(slot, x):  # OPT flattens (B, T, F) to (B·T, F) inside the layer; keep the shape it has
        v = x.reshape(b, t, -1).clone()
        v[:, pos, :] *= keep[:, None, slot * f:(slot + 1) * f].to(v.dtype)
        return v.reshape(x.shape)

    with torch.no_grad(), _hooks(lm, layers, ablate):
        logits = _logits(lm, embeds)
    tok = torch.as_tensor(np.asarray(tokens, dtype=np.int64), device=logits.device)
    return (logits if logit else torch.softmax(logits, -1)).gather(1, tok[:, None])[:, 0].cpu().numpy()


def decode_units(lm, layers: list[int], units, top: int) -> np.ndarray:
    """§2.2: ``decoder(W_out^k)`` of each flat unit index → the ``top`` token ids, (len(units), top)."""
    import torch

    mods = decoder_layers(lm)
    f = n_units(lm, layers)
    units = np.asarray(units, dtype=np.int64).reshape(-1)
    if not len(units):
        return np.zeros((0, top), dtype=np.int64)
    with torch.no_grad():
        vecs = torch.stack([mods[layers[u // f]].fc2.weight[:, u % f] for u in units])
        project = getattr(lm.model.decoder, "project_out", None)
        if project is not None:
            vecs = project(vecs)
        logits = vecs.float() @ lm.get_output_embeddings().weight.float().T
        return logits.topk(top, dim=-1).indices.cpu().numpy()


def top_units(g: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` flat indices of largest ``g`` per row (order: largest first) → (B, k)."""
    k = min(int(k), g.shape[1])
    idx = np.argpartition(-g, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(g, idx, 1).argsort(1)[:, ::-1]
    return np.take_along_axis(idx, order, 1)


def rank_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of rows ``a[i]`` and ``b[i]`` (no tie correction: g values are continuous)."""
    ra = a.argsort(1).argsort(1).astype(np.float64)
    rb = b.argsort(1).argsort(1).astype(np.float64)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    return (ra * rb).sum(1) / np.sqrt((ra ** 2).sum(1) * (rb ** 2).sum(1))


def overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|A_i ∩ B_i| / k for top-k sets (B, k) → (B,)."""
    return np.array([len(set(x) & set(y)) / max(len(x), 1) for x, y in zip(a.tolist(), b.tolist())])
