"""Checked exercises of chapter 2b (``book/02b_t5_encoder.ipynb``).

Each check takes the reader's function, compares it with the package on a few inputs and prints
PASS or FAIL with a hint; it returns a truthy/falsy :class:`Result`. A function that still raises
``NotImplementedError`` is reported as not attempted (a FAIL, never an error).
"""

from __future__ import annotations

import math

import torch

from . import Result, run_check
from ..probe import fit_logistic
from ..t5 import relative_position_bucket, span_corruption

__all__ = ["check_span_corruption", "check_position_bucket", "check_logistic_probe", "probe_data"]


def _call(fn, *args):
    """``fn(*args)``, with a stub that still raises ``NotImplementedError`` named as not attempted."""
    try:
        return fn(*args)
    except NotImplementedError:
        raise AssertionError("not attempted yet (the function raises NotImplementedError)") from None


def check_span_corruption(fn, verbose: bool = True) -> Result:
    """``fn(tokens, spans, sentinels) -> (inputs, targets)``: T5's span corruption with the spans
    given, ``spans`` a sorted list of non-overlapping ``(start, length)``. In the input each span
    becomes the next sentinel; the target lists, span after span, its sentinel and its tokens, and
    ends with one more sentinel (Raffel et al. Section 3.1.4; no ``<eos>`` here)."""

    def check():
        s = [90, 91, 92, 93, 94, 95, 96, 97]
        toks = [10, 11, 12, 13, 14, 10, 15, 16]        # a red circle left of a blue square
        got = _call(fn, toks, [(1, 1), (4, 2)], s)
        assert isinstance(got, tuple) and len(got) == 2, "return a tuple (inputs, targets)"
        want = ([10, 90, 12, 13, 91, 15, 16], [90, 11, 91, 14, 10, 92])
        assert [list(map(int, g)) for g in got] == [list(w) for w in want], \
            f"for 'a red circle left of a blue square' with spans [(1, 1), (4, 2)] got {got}, expected {want}"
        g = torch.Generator().manual_seed(0)
        for trial in range(40):
            n = int(torch.randint(2, 16, (1,), generator=g))
            toks = torch.randint(10, 40, (n,), generator=g).tolist()
            density = float(torch.empty(1).uniform_(0.1, 0.6, generator=g))
            inp, tgt = span_corruption(toks, s, noise_density=density, mean_span_length=1.5, generator=g)
            spans = _spans_from_targets(toks, inp, tgt, s)
            got = _call(fn, list(toks), spans, s)
            assert [list(map(int, x)) for x in got] == [inp, tgt], \
                f"tokens {toks}, spans {spans}: got {got}, the package's format is {(inp, tgt)}"

    return run_check("span corruption", check, "walk through the tokens: copy kept tokens into the input; at "
                     "span i put sentinels[i] in the input and sentinels[i] + the span's tokens in the target; "
                     "end the target with sentinels[len(spans)]", verbose=verbose)


def _spans_from_targets(tokens, inputs, targets, sentinels) -> list[tuple[int, int]]:
    """The spans of a package example, read from its target (each sentinel's segment is one span)."""
    where = set(sentinels)
    lengths, cur = [], None
    for t in targets:
        if t in where:
            if cur is not None:
                lengths.append(cur)
            cur = 0
        else:
            cur += 1
    spans, pos, i = [], 0, 0
    for t in inputs:
        if t in where:
            spans.append((pos, lengths[i]))
            pos += lengths[i]
            i += 1
        else:
            pos += 1
    assert pos == len(tokens) and i == len(lengths)
    return spans


def check_position_bucket(fn, verbose: bool = True) -> Result:
    """``fn(rel, bidirectional, num_buckets, max_distance) -> buckets``: T5's relative-position
    bucket of each signed distance ``rel = j - i`` (a long tensor), Eq. (ch2b-eq-bucket)."""

    def check():
        rel = torch.arange(-300, 301)
        for bidirectional in (True, False):
            for nb, md in ((32, 128), (16, 32), (8, 16)):
                got = _call(fn, rel.clone(), bidirectional, nb, md)
                assert isinstance(got, torch.Tensor), f"return a torch.Tensor, got {type(got).__name__}"
                want = relative_position_bucket(rel, bidirectional=bidirectional, num_buckets=nb, max_distance=md)
                assert tuple(got.shape) == tuple(want.shape), f"expected shape {tuple(want.shape)}"
                bad = (got.long() != want).nonzero().flatten()
                assert bad.numel() == 0, (
                    f"bidirectional={bidirectional}, num_buckets={nb}, max_distance={md}: {bad.numel()} distances "
                    f"differ, e.g. j - i = {int(rel[bad[0]])}: got {int(got[bad[0]])}, expected {int(want[bad[0]])}")

    return run_check("relative position bucket", check, "bidirectional: half the buckets per direction, keys "
                     "after the query (j - i > 0) in the upper half; causal: only the past, distance max(i - j, 0); "
                     "then n/2 exact buckets and log-spaced ones up to max_distance, clamped to the last",
                     verbose=verbose)


def probe_data(seed: int = 0, n_fit: int = 600, n_test: int = 400, dim: int = 32):
    """Features of a side probe, made up: ``(x_fit, y_fit, x_test, y_test)``.

    ``y`` in {0, 1} is the side; ``x (N, dim)`` holds it in one direction of feature space, on
    features of very different scales, plus Gaussian noise, so a linear read-out scores well
    above 0.5 but not 1.
    """
    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(dim, generator=g)
    scale = torch.logspace(-1, 1, dim)[torch.randperm(dim, generator=g)]
    offset = 3 * torch.randn(dim, generator=g)

    def draw(n):
        y = torch.randint(0, 2, (n,), generator=g)
        x = (2 * y[:, None] - 1) * 0.15 * direction + torch.randn(n, dim, generator=g)
        return x * scale + offset, y

    x_fit, y_fit = draw(n_fit)
    x_test, y_test = draw(n_test)
    return x_fit, y_fit, x_test, y_test


def check_logistic_probe(fn, verbose: bool = True) -> Result:
    """``fn(x_fit (N, D), y_fit (N,), x_test (M, D)) -> (M,)`` predicted sides (bool or 0/1): a
    logistic-regression probe fitted on ``(x_fit, y_fit)``. Its test accuracy must be within 0.03
    of ``probe.fit_logistic``'s on the same data."""

    def check():
        for seed in (0, 1):
            x_fit, y_fit, x_test, y_test = probe_data(seed)
            got = _call(fn, x_fit.clone(), y_fit.clone(), x_test.clone())
            got = torch.as_tensor(got)
            assert tuple(got.shape) == (len(x_test),), f"return one prediction per test row, shape {(len(x_test),)}"
            acc = (got.long().flatten() == y_test).float().mean().item()
            ref = (fit_logistic(x_fit, y_fit)(x_test).long() == y_test).float().mean().item()
            assert acc >= ref - 0.03, f"data {seed}: your probe scores {acc:.3f} on the test rows, " \
                                      f"fit_logistic {ref:.3f}"

    return run_check("logistic probe", check, "standardise each feature with the fit rows' mean and std, then "
                     "minimise the mean binary cross-entropy of sigmoid(z @ w + b) by gradient descent; predict "
                     "z @ w + b > 0", verbose=verbose)


# ---------------------------------------------------------------------------------------------
# Reference solutions: the chapter's hidden solution cells and the appendix render these with
# imagen_edu.viz.show_source, and each one passes the check of the same name.
# ---------------------------------------------------------------------------------------------
def solution_span_corruption(tokens, spans, sentinels):
    """Walk through the tokens once. A kept token goes to the input; span ``i`` puts
    ``sentinels[i]`` in the input (one token for the whole span) and ``sentinels[i]`` followed by
    the span's tokens in the target. The target ends with the next unused sentinel, which tells the
    decoder that nothing more was dropped."""
    inputs, targets, pos = [], [], 0
    for i, (start, length) in enumerate(spans):
        inputs += tokens[pos:start]
        inputs.append(sentinels[i])
        targets += [sentinels[i], *tokens[start:start + length]]
        pos = start + length
    inputs += tokens[pos:]
    targets.append(sentinels[len(spans)])
    return inputs, targets


def solution_position_bucket(rel, bidirectional, num_buckets, max_distance):
    """Eq. (ch2b-eq-bucket). Bidirectional: keys after the query take the upper half of the
    buckets, and the distance is ``|j - i|``; causal: only the past is possible, distance
    ``max(i - j, 0)``, all buckets. Of the ``n`` buckets of one direction the first ``n/2`` are
    exact distances; a larger distance ``d`` gets ``n/2 + floor(log(d / (n/2)) / log(max_distance /
    (n/2)) * n/2)``, capped at ``n - 1``."""
    n = num_buckets // 2 if bidirectional else num_buckets
    if bidirectional:
        base = torch.where(rel > 0, n, 0)
        d = rel.abs()
    else:
        base = torch.zeros_like(rel)
        d = torch.clamp(-rel, min=0)
    exact = n // 2
    log_part = torch.log(d.float().clamp(min=1) / exact) / math.log(max_distance / exact) * (n - exact)
    far = torch.clamp(exact + log_part.long(), max=n - 1)
    return base + torch.where(d < exact, d, far)


def solution_logistic_probe(x_fit, y_fit, x_test, steps: int = 500, lr: float = 0.1):
    """Standardise with the fit rows' statistics (the features have very different scales), then
    fit ``w, b`` by full-batch Adam on the mean binary cross-entropy; a test row is side 1 when its
    logit ``z @ w + b`` is positive."""
    mu, sd = x_fit.mean(0), x_fit.std(0).clamp(min=1e-6)
    z = (x_fit - mu) / sd
    w = torch.zeros(z.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr)
    for _ in range(steps):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y_fit.float())
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return ((x_test - mu) / sd) @ w + b > 0
