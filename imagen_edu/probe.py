"""A linear probe: what a frozen text encoder's states say about where each object goes (chapter 2b).

Read without any image: for every two-object caption ``A RELATION B``, take the encoder's state
at each object's shape word and ask a linear classifier which side of the other that object is
on (left or right for ``left of`` / ``right of``, top or bottom for ``above`` / ``below``). The
side is a product of two things the caption says, the object's order ``o = +-1`` and the
relation's sign ``r = +-1`` (chapter 5, Eq. ch5-eq-side), so a state that has not mixed in the
relation word cannot tell it: a causal model's state at the first object has not read the
relation yet and scores 50 % there. A high score says the side is *linearly* readable, which is
what a U-Net's cross-attention can use.

:func:`side_probe` fits one logistic regression per axis on the states of a fixed random 80 % of
the captions and reports the accuracy on the other 20 % (and on the captions with a held-out
colour-shape pair, none of which is in the fit).

Readable is not the same as loud. :func:`variance_share` asks how much of the states' spread
(after the per-token LayerNorm a U-Net applies before cross-attention) each label explains: the
between-class share of the total sum of squares. A direction a probe can find with a tuned
classifier may still be a tiny share of each state, and a U-Net that learns from a denoising loss
picks up large directions first.
"""

from __future__ import annotations

import random

import torch

from .data.captions import all_captions

__all__ = ["AXES", "side_labels", "object_states", "fit_logistic", "side_probe", "between_share", "variance_share"]

#: each relation's axis and the side of the first object on it (+1: left / top, -1: right / bottom)
AXES: dict[str, tuple[str, int]] = {"left of": ("horizontal", 1), "right of": ("horizontal", -1),
                                    "above": ("vertical", 1), "below": ("vertical", -1)}


def side_labels(relation: str) -> tuple[int, int]:
    """``(first, second)``: 1 if that object is on the left (top) of the other, else 0."""
    first = AXES[relation][1] > 0
    return int(first), int(not first)


@torch.no_grad()
def object_states(encoder, captions, offset: int, batch_size: int = 256) -> torch.Tensor:
    """The states at the two shape words of each two-object caption: ``(N, 2, D)`` float32.

    ``encoder.encode(texts) -> (states (B, T, D), mask)``; its tokens must be the caption's words
    in order after ``offset`` leading tokens (1 for a ``<bos>``, 0 for none). In ``a C1 S1 REL a
    C2 S2`` the shape words are word 2 and the last word.
    """
    out = []
    for i in range(0, len(captions), batch_size):
        chunk = captions[i:i + batch_size]
        states, _ = encoder.encode(chunk)
        rows = []
        for b, text in enumerate(chunk):
            n = len(text.split())
            rows.append(torch.stack([states[b, offset + 2], states[b, offset + n - 1]]))
        out.append(torch.stack(rows).float().cpu())
    return torch.cat(out)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, *, steps: int = 300, weight_decay: float = 1e-3, seed: int = 0):
    """A standardised logistic regression ``p(y=1|x) = sigmoid(w . (x - mu) / sd + b)``; returns ``predict``.

    ``x (N, D)`` float, ``y (N,)`` in {0, 1}. Full-batch L-BFGS on the mean log loss plus
    ``weight_decay |w|^2``. ``predict(x) -> (N,)`` bool.
    """
    mu, sd = x.mean(0), x.std(0).clamp(min=1e-6)
    z = (x - mu) / sd
    g = torch.Generator().manual_seed(seed)
    w = (0.01 * torch.randn(x.shape[1], generator=g)).requires_grad_()
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")
    yf = y.float()

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, yf) + weight_decay * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    w, b = w.detach(), b.detach()
    return lambda q: ((q - mu) / sd) @ w + b > 0


def side_probe(encoder, offset: int, *, seed: int = 0, test_fraction: float = 0.2) -> dict:
    """Linear-probe accuracy of each object's side from ``encoder``'s states, per axis.

    Returns ``{"horizontal": {"test": acc, "heldout": acc}, "vertical": {...}, "first_object": acc,
    "second_object": acc, "n_fit": ..., "n_test": ...}``: ``first_object`` / ``second_object`` are
    the test accuracies at each position over both axes (a causal encoder's first object sits at
    0.5). Captions with a held-out pair are never fitted on.
    """
    caps = [c for c in all_captions() if c.relation is not None]
    seen = [c for c in caps if not c.heldout]
    held = [c for c in caps if c.heldout]
    random.Random(seed).shuffle(seen)
    n_test = int(round(test_fraction * len(seen)))
    split = {"fit": seen[n_test:], "test": seen[:n_test], "heldout": held}
    feats = {k: object_states(encoder, [c.text for c in v], offset) for k, v in split.items()}
    labels = {k: torch.tensor([side_labels(c.relation) for c in v]) for k, v in split.items()}
    axis = {k: [AXES[c.relation][0] for c in v] for k, v in split.items()}
    out: dict = {"n_fit": len(split["fit"]), "n_test": n_test}
    correct = {"test": torch.zeros(n_test, 2, dtype=torch.bool)}
    for name in ("horizontal", "vertical"):
        sel = {k: torch.tensor([a == name for a in axis[k]]) for k in split}
        x = feats["fit"][sel["fit"]].reshape(-1, feats["fit"].shape[-1])
        y = labels["fit"][sel["fit"]].reshape(-1)
        predict = fit_logistic(x, y, seed=seed)
        out[name] = {}
        for k in ("test", "heldout"):
            f, l = feats[k][sel[k]], labels[k][sel[k]]
            hit = predict(f.reshape(-1, f.shape[-1])).reshape(l.shape) == l.bool()
            out[name][k] = round(hit.float().mean().item(), 4)
            if k == "test":
                correct["test"][sel[k]] = hit
    out["first_object"] = round(correct["test"][:, 0].float().mean().item(), 4)
    out["second_object"] = round(correct["test"][:, 1].float().mean().item(), 4)
    return out


@torch.no_grad()
def between_share(x: torch.Tensor, labels: torch.Tensor) -> float:
    """``R^2`` of ``labels (N,)`` in ``x (N, D)``: ``sum_k n_k |mean_k - mean|^2 / sum_i |x_i - mean|^2``,
    the between-class share of the total sum of squares, in [0, 1]."""
    mean = x.mean(0)
    total = (x - mean).square().sum()
    between = sum((labels == k).sum() * (x[labels == k].mean(0) - mean).square().sum() for k in labels.unique())
    return float(between / total)


def variance_share(encoder, offset: int) -> dict:
    """Share of the object words' state variance explained by each label, per axis: ``R^2`` in [0, 1].

    For every two-object caption, the LayerNormed states at the four object words (colour and
    shape of each object) are labelled by their ``order`` (first or second object) and their
    ``side`` (left/top or right/bottom; the product of the order and the relation's sign).
    ``R^2`` is :func:`between_share`. Returns ``{"horizontal": {"order": r2, "side": r2}, "vertical": {...}}``.
    """
    caps = [c for c in all_captions() if c.relation is not None]
    texts = [c.text for c in caps]
    out: dict = {}
    rows, order, side, axis = [], [], [], []
    for i in range(0, len(texts), 256):
        states, _ = encoder.encode(texts[i:i + 256])
        states = torch.nn.functional.layer_norm(states.float().cpu(), states.shape[-1:])
        for b, c in enumerate(caps[i:i + 256]):
            n = len(c.text.split())
            first, second = side_labels(c.relation)
            for pos, o, s in ((1, 0, first), (2, 0, first), (n - 2, 1, second), (n - 1, 1, second)):
                rows.append(states[b, offset + pos])
                order.append(o)
                side.append(s)
                axis.append(AXES[c.relation][0])
    x, order, side = torch.stack(rows), torch.tensor(order), torch.tensor(side)
    for name in ("horizontal", "vertical"):
        sel = torch.tensor([a == name for a in axis])
        out[name] = {label: round(between_share(x[sel], lab[sel]), 4) for label, lab in (("order", order), ("side", side))}
    return out
