"""Checks for the exercises of chapter 3 (DDPM): each takes the reader's function.

Every check compares with :mod:`imagen_edu.diffusion` on random inputs and returns a
:class:`imagen_edu.exercises.Result`.
"""

from __future__ import annotations

import torch

from . import run_check
from ..diffusion import GaussianDiffusion, beta_schedule


def _close(a, b, what: str, atol: float = 1e-5) -> None:
    assert isinstance(a, torch.Tensor), f"{what}: expected a torch.Tensor, got {type(a).__name__}"
    assert a.shape == b.shape, f"{what}: expected shape {tuple(b.shape)}, got {tuple(a.shape)}"
    err = (a.double() - b.double()).abs().max().item()
    assert err <= atol, f"{what}: largest difference from the reference is {err:.3g}"


def check_q_sample(fn, verbose: bool = True):
    """``fn(x0 (B, D), t (B,) long, noise (B, D), alphas_cumprod (T,)) -> x_t (B, D)``, Eq. (4) of Ho et al."""
    def body():
        g = torch.Generator().manual_seed(3)
        diff = GaussianDiffusion("linear", 100)
        x0, eps = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(6, 4, generator=g, dtype=torch.float64)
        t = torch.tensor([0, 3, 20, 50, 80, 99])
        _close(fn(x0, t, eps, diff.alphas_cumprod.clone()), diff.q_sample(x0, t, eps), "x_t")
    return run_check("q_sample (closed form)", body,
                     "x_t = sqrt(abar_t) * x0 + sqrt(1 - abar_t) * noise, with abar_t = alphas_cumprod[t] "
                     "reshaped to (B, 1) so it broadcasts", verbose=verbose)


def check_posterior_mean(fn, verbose: bool = True):
    """``fn(x0 (B, D), xt (B, D), t (B,) long with t >= 1, betas (T,)) -> mean (B, D)``, Eq. (7)."""
    def body():
        g = torch.Generator().manual_seed(4)
        diff = GaussianDiffusion("cosine", 100)
        x0, xt = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
        t = torch.tensor([1, 2, 40, 77, 99])
        _close(fn(x0, xt, t, diff.betas.clone()), diff.q_posterior(x0, xt, t)[0], "posterior mean")
    return run_check("posterior mean", body,
                     "mean = sqrt(abar_{t-1}) beta_t / (1 - abar_t) * x0 + sqrt(alpha_t) (1 - abar_{t-1}) / "
                     "(1 - abar_t) * x_t, where abar_{t-1} = cumprod(1 - betas)[t - 1]", verbose=verbose)


def check_cosine_schedule(fn, verbose: bool = True):
    """``fn(T) -> betas (T,)``: the cosine schedule with s = 0.008, betas clipped at 0.999 (Eq. 17)."""
    def body():
        for T in (10, 100, 1000):
            _close(fn(T), beta_schedule("cosine", T), f"betas for T={T}", atol=1e-6)
    return run_check("cosine schedule", body,
                     "f(t) = cos((t/T + s) / (1 + s) * pi / 2) ** 2 for t = 0..T; beta_t = 1 - f(t) / f(t-1); "
                     "then clamp(max=0.999); return float64", verbose=verbose)


def check_ddim_step(fn, verbose: bool = True):
    """``fn(xt, eps_hat, abar_t, abar_prev) -> x_prev``: one deterministic DDIM step (eta = 0).

    ``abar_t`` and ``abar_prev`` are Python floats; tensors are ``(B, D)``. No clipping.
    """
    def body():
        g = torch.Generator().manual_seed(5)
        diff = GaussianDiffusion("linear", 50)
        xt, eps = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
        for t, t_prev in ((49, 30), (10, 9), (3, -1)):
            tt, tp = torch.full((4,), t), torch.full((4,), t_prev)
            ref = diff.ddim_step(diff.predict_x0_from_eps(xt, tt, eps), eps, tt, tp, eta=0.0)
            ab = diff.alphas_cumprod[t].item()
            ab_prev = diff.alphas_cumprod[t_prev].item() if t_prev >= 0 else 1.0
            _close(fn(xt, eps, ab, ab_prev), ref, f"x_prev for t={t} -> {t_prev}")
    return run_check("DDIM step", body,
                     "x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t); "
                     "x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev) eps", verbose=verbose)


# ---------------------------------------------------------------------------------------------
# Reference solutions: the chapter's hidden solution cells and the appendix render these with
# imagen_edu.viz.show_source, and each one passes the check of the same name.
# ---------------------------------------------------------------------------------------------
def solution_q_sample(x0, t, noise, alphas_cumprod):
    """Eq. ch3-eq-closed-form (Eq. (4) of Ho et al.): ``x0 (B, D)``, ``t (B,)`` -> ``x_t (B, D)``;
    the per-example abar_t is reshaped to ``(B, 1)`` so that it broadcasts over D."""
    ab = alphas_cumprod[t].view(-1, 1)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def solution_posterior_mean(x0, xt, t, betas):
    """Eq. ch3-eq-posterior (Eq. (7) of Ho et al.): the mean of q(x_{t-1} | x_t, x_0), a weighted
    sum of x_0 and x_t, for indices ``t >= 1``."""
    ab = torch.cumprod(1 - betas, 0)
    abt, abp = ab[t].view(-1, 1), ab[t - 1].view(-1, 1)
    bt = betas[t].view(-1, 1)
    return abp.sqrt() * bt / (1 - abt) * x0 + (1 - bt).sqrt() * (1 - abp) / (1 - abt) * xt


def solution_cosine_schedule(T: int, s: float = 0.008) -> torch.Tensor:
    """Eq. ch3-eq-cosine (Eq. (17) of Nichol and Dhariwal): ``(T,)`` float64 betas from the ratios of
    consecutive f(t) = cos^2(((t/T + s) / (1 + s)) pi/2), clipped at 0.999."""
    u = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((u + s) / (1 + s) * torch.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=0.999)


def solution_ddim_step(xt, eps_hat, abar_t: float, abar_prev: float):
    """Eq. ch3-eq-ddim with eta = 0: estimate x_0 from the predicted noise, then move it to the
    earlier noise level with the *same* noise direction (no fresh noise)."""
    x0_hat = (xt - (1 - abar_t) ** 0.5 * eps_hat) / abar_t ** 0.5
    return abar_prev ** 0.5 * x0_hat + (1 - abar_prev) ** 0.5 * eps_hat
