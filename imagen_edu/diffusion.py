"""Gaussian diffusion: schedules, the forward process, the losses and the samplers (chapter 3).

Derived in chapter 3 (``book/03_ddpm.ipynb`` and ``book/03b_ddpm_images.ipynb``), following

* Ho, Jain and Abbeel 2020, *Denoising Diffusion Probabilistic Models* (``ho2020denoising``):
  the forward process Eq. (2), its closed form Eq. (4), the posterior Eqs. (6)-(7), the
  reverse mean Eq. (11), the ELBO weight Eq. (12), the simple loss Eq. (14), Algorithms 1-2;
* Nichol and Dhariwal 2021, *Improved DDPM* (``nichol2021improved``): the cosine schedule
  Eq. (17), the clipped betas, and the clipped log-variance of the posterior;
* Song, Meng and Ermon 2021, *DDIM* (``song2021ddim``): the generalised step Eq. (12) with
  ``sigma`` from Eq. (16) and ``eta`` in [0, 1], over any increasing subsequence of steps;
* Salimans and Ho 2022 (``salimans2022progressive``): the v-parameterisation
  ``v = sqrt(abar) eps - sqrt(1 - abar) x0`` (their Section 4 and Appendix D);
* Hang et al. 2023 (``hang2023minsnr``): min-SNR-gamma loss weighting.

**Index convention.** Timesteps are 0-based integer indices ``t = 0 .. T-1`` as in the
improved-DDPM code: index ``t`` is the paper's step ``t + 1``. So ``q_sample(x0, t=0)`` is one
step of noise, ``alphas_cumprod[t] = prod_{s<=t} (1 - beta_s)`` and ``alphas_cumprod_prev[0] = 1``
(the clean data).

**Hooks for chapter 5.** Every model is called as ``model(x_t, t, **model_kwargs)``; a guidance
wrapper (classifier-free guidance) is just another callable with that signature. The
predicted ``x0`` passes through an optional ``x0_transform(x0, t)`` (dynamic thresholding)
before the optional static clip to [-1, 1].

Run ``python -m imagen_edu.diffusion bench --help`` for the sampler benchmark.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import torch
from torch import nn

from .profiles import torch_threads
from .unet import timestep_embedding

__all__ = [
    "SCHEDULES",
    "OBJECTIVES",
    "SAMPLERS",
    "beta_schedule",
    "GaussianDiffusion",
    "normal_kl",
    "timestep_subsequence",
    "make_moons",
    "make_swiss_roll",
    "ToyDenoiser",
    "fit",
    "clean_object_share",
    "shapes_unet_config",
    "train_shapes",
    "benchmark_samplers",
]

SCHEDULES = ("linear", "cosine")
OBJECTIVES = ("eps", "x0", "v")
SAMPLERS = ("ddpm", "ddim")
VARIANCES = ("fixed_small", "fixed_large")


# ---------------------------------------------------------------------------------------------
# Beta schedules
# ---------------------------------------------------------------------------------------------
def cosine_alpha_bar(u, s: float = 0.008) -> torch.Tensor:
    """The cosine schedule's ``abar(u) = f(u) / f(0)``, ``f(u) = cos^2(((u + s) / (1 + s)) pi / 2)``.

    Nichol & Dhariwal 2021, Eq. (17), in continuous time ``u = t / T`` in ``[0, 1]``:
    ``abar(0) = 1`` (no noise) and ``abar(1) ~ 0``. Derived in chapter 3, Eq. (ch3-eq-cosine);
    the discrete cosine betas (:func:`beta_schedule`) and chapter 5's noise-conditioning
    augmentation levels both read it. float64, the shape of ``u``.
    """
    u = torch.as_tensor(u, dtype=torch.float64)
    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    return f / math.cos(s / (1 + s) * math.pi / 2) ** 2


def beta_schedule(name: str, timesteps: int, *, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """The noise schedule ``beta_1 .. beta_T`` as a float64 tensor ``(T,)``.

    Derived in chapter 3, Eqs. (ch3-eq-linear) and (ch3-eq-cosine).

    * ``"linear"``: Ho et al. 2020 (Section 4) use betas linear from ``1e-4`` to ``0.02`` for
      ``T = 1000``. For other ``T`` both ends are multiplied by ``1000 / T`` (as in the
      improved-DDPM code), so the total amount of noise stays about the same (for ``T <= 20``
      the end would reach 1, so betas are clipped at ``max_beta`` here too).
    * ``"cosine"``: Nichol & Dhariwal 2021, Eq. (17): ``abar(t) = f(t) / f(0)`` with
      ``f(t) = cos^2(((t/T + s) / (1 + s)) pi/2)``, ``s = 0.008``, and
      ``beta_t = 1 - abar(t) / abar(t-1)`` clipped at ``max_beta = 0.999`` so that the last
      steps (where ``abar`` reaches 0) stay finite.
    """
    if not isinstance(timesteps, int) or isinstance(timesteps, bool) or timesteps < 1:
        raise ValueError(f"timesteps must be a positive int, got {timesteps!r}")
    if not isinstance(name, str) or name not in SCHEDULES:
        raise ValueError(f"unknown beta schedule {name!r}: expected one of {SCHEDULES}")
    if name == "linear":
        scale = 1000.0 / timesteps
        return torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64).clamp(max=max_beta)
    u = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = cosine_alpha_bar(u, s)
    betas = 1.0 - f[1:] / f[:-1]
    return betas.clamp(max=max_beta)


def timestep_subsequence(timesteps: int, steps) -> torch.Tensor:
    """The (decreasing) timestep indices a sampler visits, ``(S,)`` long.

    ``steps`` is an int ``1 <= steps <= T`` (evenly spaced indices from ``T-1`` down to 0,
    rounded; ``steps=1`` visits only ``T-1``), or an explicit sequence of distinct indices in
    ``[0, T)`` (any order; sorted decreasing here).
    """
    if isinstance(steps, (list, tuple, torch.Tensor)):
        seq = torch.as_tensor(list(steps) if not isinstance(steps, torch.Tensor) else steps).long().flatten()
        if seq.numel() < 1:
            raise ValueError("steps must contain at least one timestep index")
        if int(seq.min()) < 0 or int(seq.max()) >= timesteps:
            raise ValueError(f"timestep indices must lie in [0, {timesteps}), got min {int(seq.min())}, "
                             f"max {int(seq.max())}")
        if seq.unique().numel() != seq.numel():
            raise ValueError("timestep indices in steps must be distinct")
        return seq.sort(descending=True).values
    if not isinstance(steps, int) or isinstance(steps, bool):
        raise ValueError(f"steps must be an int in [1, {timesteps}] or a sequence of indices, got {steps!r}")
    if steps < 1 or steps > timesteps:
        raise ValueError(f"steps must be in [1, T={timesteps}], got {steps}")
    if steps == 1:
        return torch.tensor([timesteps - 1])
    seq = torch.linspace(timesteps - 1, 0, steps, dtype=torch.float64).round().long()
    return seq


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """Elementwise ``KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2)))`` in nats."""
    mean1, logvar1, mean2, logvar2 = (torch.as_tensor(a) for a in (mean1, logvar1, mean2, logvar2))
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


# ---------------------------------------------------------------------------------------------
# The diffusion process
# ---------------------------------------------------------------------------------------------
class GaussianDiffusion:
    """A Gaussian diffusion process with ``T`` steps: forward noising, losses and samplers.

    Derived in chapter 3. The schedule quantities are kept in float64 (``betas``, ``alphas``,
    ``alphas_cumprod``, ``alphas_cumprod_prev``, ``posterior_variance``,
    ``posterior_log_variance_clipped``, ``posterior_mean_coef1/2``, ``log_snr``), all ``(T,)``;
    they are cast to the data's dtype and device when used.

    Args:
        betas: a schedule name (``"linear"`` / ``"cosine"``) or a 1-D tensor of betas in (0, 1).
        timesteps: ``T`` (required with a schedule name; must equal ``len(betas)`` otherwise).
        objective: what the network predicts: ``"eps"`` (the noise, Ho et al.), ``"x0"`` (the
            clean data) or ``"v"`` (Salimans & Ho 2022).
        loss_weighting: ``None`` (the simple loss, Ho et al. Eq. 14) or ``"min_snr"``
            (Hang et al. 2023, with ``min_snr_gamma``).
        variance: the reverse variance ``sigma_t^2`` of ancestral sampling: ``"fixed_small"``
            (the posterior variance ``beta~_t``, Eq. 7) or ``"fixed_large"`` (``beta_t``). Ho et
            al. (Section 3.2) found both give similar samples.
    """

    def __init__(self, betas="linear", timesteps: int | None = None, *, objective: str = "eps",
                 loss_weighting: str | None = None, min_snr_gamma: float = 5.0,
                 variance: str = "fixed_small"):
        if isinstance(betas, str):
            if timesteps is None:
                raise ValueError("pass timesteps=T together with a schedule name")
            betas = beta_schedule(betas, timesteps)
        elif isinstance(betas, torch.Tensor):
            betas = betas.detach().to(torch.float64).cpu()
            if betas.dim() != 1 or betas.numel() < 1:
                raise ValueError(f"betas must be a 1-D tensor (T,), got shape {tuple(betas.shape)}")
            if timesteps is not None and timesteps != betas.numel():
                raise ValueError(f"timesteps={timesteps} does not match len(betas)={betas.numel()}")
            if not bool(((betas > 0) & (betas < 1)).all()):
                raise ValueError("every beta must lie in the open interval (0, 1)")
        else:
            raise TypeError(f"betas must be a schedule name {SCHEDULES} or a tensor, got {type(betas).__name__}")
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}: expected one of {OBJECTIVES}")
        if loss_weighting not in (None, "min_snr"):
            raise ValueError(f"unknown loss_weighting {loss_weighting!r}: expected None or 'min_snr'")
        if variance not in VARIANCES:
            raise ValueError(f"unknown variance {variance!r}: expected one of {VARIANCES}")
        if not min_snr_gamma > 0:
            raise ValueError(f"min_snr_gamma must be positive, got {min_snr_gamma}")
        self.objective, self.loss_weighting = objective, loss_weighting
        self.min_snr_gamma, self.variance = float(min_snr_gamma), variance
        self.num_timesteps = T = betas.numel()

        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, 0)                       # abar_t
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64),
                                              self.alphas_cumprod[:-1]])          # abar_{t-1}
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        # log SNR(t) = log(abar / (1 - abar)): decreasing in t
        self.log_snr = torch.log(self.alphas_cumprod) - torch.log1p(-self.alphas_cumprod)
        # Eq. (7) of Ho et al.: beta~_t = (1 - abar_{t-1}) / (1 - abar_t) * beta_t
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # beta~ at the first step is 0: its log is clipped to the next value (improved-DDPM code)
        pv = self.posterior_variance
        self.posterior_log_variance_clipped = torch.log(torch.cat([pv[1:2], pv[1:]]) if T > 1 else betas)
        # Eq. (7) of Ho et al.: mu~_t = coef1 * x0 + coef2 * x_t
        self.posterior_mean_coef1 = betas * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * self.alphas.sqrt() / (1.0 - self.alphas_cumprod)

    def __repr__(self) -> str:
        return (f"GaussianDiffusion(T={self.num_timesteps}, objective={self.objective!r}, "
                f"loss_weighting={self.loss_weighting!r}, variance={self.variance!r})")

    # --------------------------------------------------------------------- helpers
    def _check_t(self, t, batch: int, device=None) -> torch.Tensor:
        """Validate ``t``: an int or a long tensor ``(B,)`` of indices in ``[0, T)``."""
        if isinstance(t, bool):
            raise ValueError(f"t must be an int index or a tensor of them, got {t!r}")
        if isinstance(t, int):
            t = torch.full((batch,), t, dtype=torch.long, device=device)
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"t must be an int or a torch.Tensor of indices, got {type(t).__name__}")
        if t.is_floating_point() or t.is_complex():
            raise ValueError(f"t must hold integer timestep indices, got dtype {t.dtype}")
        if t.dim() == 0:
            t = t.expand(batch)
        if t.dim() != 1 or t.shape[0] != batch:
            raise ValueError(f"t must have shape (B,) = ({batch},), got {tuple(t.shape)}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_timesteps):
            raise ValueError(f"timestep indices must lie in [0, T={self.num_timesteps}) "
                             f"(index t is the paper's step t+1), got min {int(t.min())}, max {int(t.max())}")
        return t.long()

    @staticmethod
    def _extract(a: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``a[t]`` shaped ``(B, 1, ..., 1)`` to broadcast against ``x (B, ...)``, in x's dtype."""
        out = a[t.cpu()].to(device=x.device, dtype=x.dtype)
        return out.reshape(x.shape[0], *([1] * (x.dim() - 1)))

    @staticmethod
    def _check_same(a: torch.Tensor, b: torch.Tensor, what_a: str, what_b: str) -> None:
        if a.shape != b.shape:
            raise ValueError(f"{what_a} has shape {tuple(a.shape)} but {what_b} has shape "
                             f"{tuple(b.shape)}: they must match")

    def snr(self, t) -> torch.Tensor:
        """``SNR(t) = abar_t / (1 - abar_t)`` for indices ``t``, float64 ``(B,)``."""
        t = torch.as_tensor(t).long()
        return self.alphas_cumprod[t] / (1.0 - self.alphas_cumprod[t])

    # --------------------------------------------------------------------- forward process
    def q_step(self, x_prev: torch.Tensor, t, noise: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """One forward step ``x_t ~ q(x_t | x_{t-1}) = N(sqrt(1-beta_t) x_{t-1}, beta_t I)``, Eq. (2).

        ``x_prev (B, ...)`` is ``x_{t-1}`` (``x_0`` for index 0); ``noise`` like ``x_prev``.
        """
        t = self._check_t(t, x_prev.shape[0], x_prev.device)
        if noise is None:
            noise = torch.randn(x_prev.shape, generator=generator, dtype=x_prev.dtype).to(x_prev.device)
        self._check_same(noise, x_prev, "noise", "x_prev")
        beta = self._extract(self.betas, t, x_prev)
        return (1.0 - beta).sqrt() * x_prev + beta.sqrt() * noise

    def q_mean_variance(self, x0: torch.Tensor, t):
        """Mean and variance of ``q(x_t | x_0)``, Eq. (4): ``(sqrt(abar_t) x0, (1 - abar_t))``."""
        t = self._check_t(t, x0.shape[0], x0.device)
        return (self._extract(self.sqrt_alphas_cumprod, t, x0) * x0,
                self._extract(1.0 - self.alphas_cumprod, t, x0))

    def q_sample(self, x0: torch.Tensor, t, noise: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Jump straight to ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``, Eq. (4) of Ho et al.

        Derived in chapter 3, Eq. (ch3-eq-closed-form). ``x0 (B, ...)``, ``t (B,)`` indices,
        ``noise`` like ``x0`` (drawn if omitted). Returns ``x_t`` like ``x0``.
        """
        t = self._check_t(t, x0.shape[0], x0.device)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        self._check_same(noise, x0, "noise", "x0")
        return (self._extract(self.sqrt_alphas_cumprod, t, x0) * x0
                + self._extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise)

    def q_posterior(self, x0: torch.Tensor, xt: torch.Tensor, t):
        """The posterior ``q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I)``, Eqs. (6)-(7) of Ho et al.

        Derived in chapter 3, Eq. (ch3-eq-posterior). Returns ``(mean, variance)``: ``mean`` like
        ``x0`` and ``variance`` ``(B, 1, ..., 1)``. The log-variance, clipped at the first step
        where ``beta~ = 0``, is :meth:`posterior_log_variance`.
        """
        self._check_same(xt, x0, "x_t", "x0")
        t = self._check_t(t, x0.shape[0], x0.device)
        mean = (self._extract(self.posterior_mean_coef1, t, xt) * x0
                + self._extract(self.posterior_mean_coef2, t, xt) * xt)
        return mean, self._extract(self.posterior_variance, t, xt)

    def posterior_log_variance(self, t, like: torch.Tensor) -> torch.Tensor:
        """``log beta~_t`` clipped at index 0 (where ``beta~ = 0``), shaped to broadcast with ``like``."""
        t = self._check_t(t, like.shape[0], like.device)
        return self._extract(self.posterior_log_variance_clipped, t, like)

    # --------------------------------------------------------------------- parameterisations
    def predict_x0_from_eps(self, xt, t, eps):
        """``x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``: Eq. (4) solved for x0."""
        self._check_same(eps, xt, "eps", "x_t")
        t = self._check_t(t, xt.shape[0], xt.device)
        return (xt - self._extract(self.sqrt_one_minus_alphas_cumprod, t, xt) * eps) \
            / self._extract(self.sqrt_alphas_cumprod, t, xt)

    def predict_eps_from_x0(self, xt, t, x0):
        """``eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)``: Eq. (4) solved for eps."""
        self._check_same(x0, xt, "x0", "x_t")
        t = self._check_t(t, xt.shape[0], xt.device)
        return (xt - self._extract(self.sqrt_alphas_cumprod, t, xt) * x0) \
            / self._extract(self.sqrt_one_minus_alphas_cumprod, t, xt)

    def v_from(self, x0, eps, t):
        """The velocity ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0`` (Salimans & Ho 2022)."""
        self._check_same(eps, x0, "eps", "x0")
        t = self._check_t(t, x0.shape[0], x0.device)
        return (self._extract(self.sqrt_alphas_cumprod, t, x0) * eps
                - self._extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0)

    def predict_x0_from_v(self, xt, t, v):
        """``x0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v``."""
        self._check_same(v, xt, "v", "x_t")
        t = self._check_t(t, xt.shape[0], xt.device)
        return (self._extract(self.sqrt_alphas_cumprod, t, xt) * xt
                - self._extract(self.sqrt_one_minus_alphas_cumprod, t, xt) * v)

    def predict_eps_from_v(self, xt, t, v):
        """``eps = sqrt(1 - abar_t) x_t + sqrt(abar_t) v``."""
        self._check_same(v, xt, "v", "x_t")
        t = self._check_t(t, xt.shape[0], xt.device)
        return (self._extract(self.sqrt_one_minus_alphas_cumprod, t, xt) * xt
                + self._extract(self.sqrt_alphas_cumprod, t, xt) * v)

    def target(self, x0, eps, t):
        """What the network should output for this ``objective``: eps, x0 or v."""
        if self.objective == "eps":
            return eps
        if self.objective == "x0":
            return x0
        return self.v_from(x0, eps, t)

    # --------------------------------------------------------------------- reverse process
    def model_predictions(self, model: Callable, xt: torch.Tensor, t, *, model_kwargs: dict | None = None,
                          clip_denoised: bool = True,
                          x0_transform: Callable | None = None) -> dict:
        """Run ``model(x_t, t, **model_kwargs)`` and turn its output into ``x0`` and ``eps``.

        ``x0`` is passed through ``x0_transform(x0, t)`` (if given; e.g. dynamic thresholding in
        chapter 5), then clipped to [-1, 1] if ``clip_denoised``; ``eps`` is then recomputed from
        that ``x0`` so both stay consistent with ``x_t``.

        Returns a dict with ``model_output``, ``pred_x0`` and ``pred_eps``, each like ``x_t``.
        """
        t = self._check_t(t, xt.shape[0], xt.device)
        out = model(xt, t, **(model_kwargs or {}))
        if not isinstance(out, torch.Tensor):
            raise ValueError(f"the model must return a tensor like x_t, got {type(out).__name__}")
        if out.shape != xt.shape:
            raise ValueError(f"model output has shape {tuple(out.shape)} but x_t has shape "
                             f"{tuple(xt.shape)}: an {self.objective!r}-model must return a tensor like x_t")
        if self.objective == "eps":
            x0, eps = self.predict_x0_from_eps(xt, t, out), out
        elif self.objective == "x0":
            x0, eps = out, None
        else:
            x0, eps = self.predict_x0_from_v(xt, t, out), self.predict_eps_from_v(xt, t, out)
        changed = False
        if x0_transform is not None:
            x0 = x0_transform(x0, t)
            changed = True
        if clip_denoised:
            x0 = x0.clamp(-1.0, 1.0)
            changed = True
        if eps is None or changed:
            eps = self.predict_eps_from_x0(xt, t, x0)
        return {"model_output": out, "pred_x0": x0, "pred_eps": eps}

    def p_mean_variance(self, model: Callable, xt: torch.Tensor, t, *, model_kwargs: dict | None = None,
                        clip_denoised: bool = True, x0_transform: Callable | None = None) -> dict:
        """The reverse step ``p_theta(x_{t-1} | x_t) = N(mean, variance)``.

        Derived in chapter 3, Eq. (ch3-eq-reverse-mean). The mean is the posterior mean (Eq. 7)
        with the predicted ``x0`` plugged in; for an eps-model without clipping this equals
        Eq. (11) of Ho et al., ``(x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t)``. The
        variance is ``beta~_t`` (``fixed_small``) or ``beta_t`` (``fixed_large``).

        Returns a dict with ``mean``, ``variance``, ``log_variance`` (clipped), ``pred_x0``,
        ``pred_eps`` and ``model_output``.
        """
        t = self._check_t(t, xt.shape[0], xt.device)
        pred = self.model_predictions(model, xt, t, model_kwargs=model_kwargs,
                                      clip_denoised=clip_denoised, x0_transform=x0_transform)
        mean, var = self.q_posterior(pred["pred_x0"], xt, t)
        if self.variance == "fixed_small":
            logvar = self.posterior_log_variance(t, xt)
        else:  # beta_t, with the first step's beta~ (as in the improved-DDPM code)
            big = torch.cat([self.posterior_variance[1:2], self.betas[1:]]) if self.num_timesteps > 1 else self.betas
            var = self._extract(big, t, xt)
            logvar = var.log()
        return {"mean": mean, "variance": var, "log_variance": logvar, **pred}

    def elbo_weight(self, t) -> torch.Tensor:
        """The weight of ``||eps - eps_theta||^2`` in the ELBO term ``L_{t-1}``, Eq. (12) of Ho et al.

        ``beta_t^2 / (2 sigma_t^2 alpha_t (1 - abar_t))`` with ``sigma_t^2`` the model's variance.
        Infinite at index 0 with ``fixed_small`` (``beta~_0 = 0``). float64 ``(B,)``.
        """
        t = torch.as_tensor(t).long()
        if self.variance == "fixed_small":
            sig2 = self.posterior_variance[t]
        else:
            sig2 = self.betas[t]
        return self.betas[t] ** 2 / (2 * sig2 * self.alphas[t] * (1 - self.alphas_cumprod[t]))

    # --------------------------------------------------------------------- loss
    def loss_weights(self, t) -> torch.Tensor:
        """Per-example loss weights for ``t``, float64 ``(B,)``; ones unless ``loss_weighting="min_snr"``.

        Min-SNR-gamma (Hang et al. 2023): the x0-space weight is ``min(SNR, gamma)``; because
        ``||eps - eps^||^2 = SNR ||x0 - x0^||^2`` and ``||v - v^||^2 = (SNR + 1) ||x0 - x0^||^2``,
        the weight on the eps loss is ``min(SNR, gamma) / SNR`` and on the v loss
        ``min(SNR, gamma) / (SNR + 1)``.
        """
        t = torch.as_tensor(t).long()
        if self.loss_weighting is None:
            return torch.ones(t.shape, dtype=torch.float64)
        snr = self.snr(t)
        clipped = snr.clamp(max=self.min_snr_gamma)
        if self.objective == "eps":
            return clipped / snr
        if self.objective == "x0":
            return clipped
        return clipped / (snr + 1.0)

    def loss(self, model: Callable, x0: torch.Tensor, t=None, noise: torch.Tensor | None = None,
             model_kwargs: dict | None = None, *, generator: torch.Generator | None = None,
             reduction: str = "mean") -> torch.Tensor:
        """The training loss (Algorithm 1 of Ho et al.): ``w(t) * mean ||target - model(x_t, t)||^2``.

        Derived in chapter 3, Eq. (ch3-eq-simple-loss): with ``objective="eps"`` and no weighting
        this is ``L_simple``, Eq. (14). ``x0 (B, ...)``; ``t (B,)`` indices (uniform if omitted);
        ``noise`` like ``x0`` (drawn if omitted). ``reduction="none"`` gives the ``(B,)`` losses.
        """
        if not isinstance(x0, torch.Tensor) or x0.dim() < 2:
            raise ValueError(f"x0 must be a tensor (B, ...) with a batch dimension, got "
                             f"{getattr(x0, 'shape', type(x0).__name__)}")
        b = x0.shape[0]
        if t is None:
            t = torch.randint(0, self.num_timesteps, (b,), generator=generator).to(x0.device)
        t = self._check_t(t, b, x0.device)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        xt = self.q_sample(x0, t, noise)
        out = model(xt, t, **(model_kwargs or {}))
        if not isinstance(out, torch.Tensor) or out.shape != xt.shape:
            raise ValueError(f"model output has shape {tuple(getattr(out, 'shape', ()))} but x_t has "
                             f"shape {tuple(xt.shape)}: they must match")
        target = self.target(x0, noise, t)
        per_example = (out - target).pow(2).flatten(1).mean(1)
        per_example = per_example * self.loss_weights(t).to(device=x0.device, dtype=per_example.dtype)
        if reduction == "none":
            return per_example
        if reduction != "mean":
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        return per_example.mean()

    # --------------------------------------------------------------------- sampling
    def ddim_sigma(self, t, t_prev, eta: float) -> torch.Tensor:
        """``sigma`` of a DDIM step from index ``t`` to ``t_prev`` (``-1`` = clean data), Eq. (16) of Song et al.

        ``sigma = eta * sqrt((1 - abar_prev) / (1 - abar_t)) * sqrt(1 - abar_t / abar_prev)``.
        With ``eta = 1`` and ``t_prev = t - 1`` this is ``sqrt(beta~_t)``, the ancestral sampler's.
        float64 ``(B,)``.
        """
        ab, ab_prev = self._pair(torch.as_tensor(t).long(), torch.as_tensor(t_prev).long())
        return eta * ((1 - ab_prev) / (1 - ab)).sqrt() * (1 - ab / ab_prev).sqrt()

    def _pair(self, t: torch.Tensor, t_prev: torch.Tensor):
        ab = self.alphas_cumprod[t.cpu()]
        ab_prev = torch.where(t_prev.cpu() >= 0, self.alphas_cumprod[t_prev.cpu().clamp(min=0)],
                              torch.ones((), dtype=torch.float64))
        return ab, ab_prev

    def _randn(self, shape, generator, device, dtype):
        return torch.randn(shape, generator=generator, dtype=dtype).to(device)

    @torch.no_grad()
    def sample(self, model: Callable, shape: Sequence[int], *, sampler: str = "ddpm", steps=None,
               eta: float = 0.0, generator: torch.Generator | None = None, clip_denoised: bool = True,
               model_kwargs: dict | None = None, progress: bool = True, return_trajectory: bool = False,
               x0_transform: Callable | None = None, noise: torch.Tensor | None = None,
               device=None, dtype=torch.float32):
        """Generate samples ``(B, ...)`` from ``x_T ~ N(0, I)``.

        Derived in chapter 3, Eqs. (ch3-eq-ancestral) and (ch3-eq-ddim).

        * ``sampler="ddpm"``: ancestral sampling, Algorithm 2 of Ho et al.
          ``x_{t-1} = mean + sigma_t z`` (no noise at the last step). With ``steps < T`` it runs
          the *respaced* chain over the evenly spaced subsequence (Nichol & Dhariwal, Section 4):
          the same as DDIM with ``eta = 1`` (for ``fixed_small``).
        * ``sampler="ddim"``: Eq. (12) of Song et al., ``x_prev = sqrt(abar_prev) x0^ +
          sqrt(1 - abar_prev - sigma^2) eps^ + sigma z`` with ``sigma`` from Eq. (16) times
          ``eta`` in [0, 1]; ``eta = 0`` is deterministic given ``x_T``.

        Args:
            model: ``model(x_t, t (B,), **model_kwargs) -> (B, ...)`` predicting the objective.
                A classifier-free-guidance wrapper is any callable with this signature.
            shape: ``(B, ...)`` of the samples.
            steps: ``None`` (all ``T``), an int in ``[1, T]`` (evenly spaced), or explicit indices.
            eta: DDIM's noise scale in ``[0, 1]`` (ignored by ``ddpm``).
            generator: a ``torch.Generator`` for reproducible ``x_T`` and noise.
            clip_denoised: clip the predicted ``x0`` to [-1, 1] (image data live there).
            x0_transform: optional ``f(x0, t) -> x0`` applied to the predicted ``x0`` first
                (dynamic thresholding, chapter 5).
            noise: an explicit ``x_T`` of ``shape`` (instead of drawing one).
            progress: show a tqdm bar.
            return_trajectory: also return the stacked states ``(S + 1, B, ...)``, from ``x_T``
                to the output, and the stacked predicted ``x0`` ``(S, B, ...)``.

        Returns:
            ``x_0`` ``(B, ...)``, or ``(x_0, {"xt": ..., "pred_x0": ..., "timesteps": ...})``
            with ``return_trajectory=True``.
        """
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}: expected one of {SAMPLERS}")
        if not isinstance(eta, (int, float)) or isinstance(eta, bool) or not 0.0 <= float(eta) <= 1.0:
            raise ValueError(f"eta must be a number in [0, 1], got {eta!r}")
        shape = tuple(int(s) for s in shape)
        if len(shape) < 2:
            raise ValueError(f"shape must be (B, ...) with at least 2 dimensions, got {shape}")
        seq = timestep_subsequence(self.num_timesteps, self.num_timesteps if steps is None else steps)
        if device is None:
            device = noise.device if noise is not None else next(
                (p.device for p in getattr(model, "parameters", lambda: iter(()))()), torch.device("cpu"))
        if noise is not None:
            if tuple(noise.shape) != shape:
                raise ValueError(f"noise (x_T) has shape {tuple(noise.shape)}, expected {shape}")
            x = noise.to(device=device, dtype=dtype)
        else:
            x = self._randn(shape, generator, device, dtype)
        b = shape[0]
        traj, x0s = [x], []
        iterator = range(len(seq))
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(iterator, desc=f"{sampler} {len(seq)} steps", leave=False)
        for i in iterator:
            t_i = int(seq[i])
            t_prev = int(seq[i + 1]) if i + 1 < len(seq) else -1
            t = torch.full((b,), t_i, dtype=torch.long, device=device)
            pred = self.model_predictions(model, x, t, model_kwargs=model_kwargs,
                                          clip_denoised=clip_denoised, x0_transform=x0_transform)
            x0_hat, eps_hat = pred["pred_x0"], pred["pred_eps"]
            ab, ab_prev = self._pair(torch.tensor([t_i]), torch.tensor([t_prev]))
            ab, ab_prev = float(ab), float(ab_prev)
            if sampler == "ddpm":
                # posterior of the (possibly respaced) chain: beta' = 1 - abar_t / abar_prev, Eq. (7)
                beta = 1.0 - ab / ab_prev
                c1 = math.sqrt(ab_prev) * beta / (1.0 - ab)
                c2 = math.sqrt(1.0 - beta) * (1.0 - ab_prev) / (1.0 - ab)
                mean = c1 * x0_hat + c2 * x
                if self.variance == "fixed_small":
                    var = beta * (1.0 - ab_prev) / (1.0 - ab)
                else:
                    var = beta
                x = mean
                if t_prev >= 0:  # Algorithm 2: z = 0 at the last step
                    x = mean + math.sqrt(var) * self._randn(shape, generator, device, dtype)
            else:
                sigma = float(eta) * math.sqrt((1.0 - ab_prev) / (1.0 - ab)) * math.sqrt(1.0 - ab / ab_prev)
                dir_coef = math.sqrt(max(1.0 - ab_prev - sigma ** 2, 0.0))
                x = math.sqrt(ab_prev) * x0_hat + dir_coef * eps_hat
                if sigma > 0:
                    x = x + sigma * self._randn(shape, generator, device, dtype)
            if not torch.isfinite(x).all():
                raise FloatingPointError(f"sampling produced non-finite values at timestep index {t_i}")
            if return_trajectory:
                traj.append(x)
                x0s.append(x0_hat)
        if return_trajectory:
            return x, {"xt": torch.stack(traj), "pred_x0": torch.stack(x0s), "timesteps": seq}
        return x


# ---------------------------------------------------------------------------------------------
# The 2-D toy
# ---------------------------------------------------------------------------------------------
def make_moons(n: int, *, noise: float = 0.05, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` points ``(n, 2)`` on two interleaved half circles, scaled to about [-1, 1]."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    n1 = n // 2
    u = torch.rand(n, generator=generator) * math.pi
    x = torch.empty(n, 2)
    x[:n1, 0], x[:n1, 1] = torch.cos(u[:n1]), torch.sin(u[:n1])
    x[n1:, 0], x[n1:, 1] = 1 - torch.cos(u[n1:]), 0.5 - torch.sin(u[n1:])
    x = x + noise * torch.randn(n, 2, generator=generator)
    return (x - torch.tensor([0.5, 0.25])) / torch.tensor([1.0, 1.0]) * 0.9


def make_swiss_roll(n: int, *, noise: float = 0.03, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` points ``(n, 2)`` on a 2-D swiss roll, scaled to about [-1, 1]."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    u = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=generator))
    x = torch.stack([u * torch.cos(u), u * torch.sin(u)], 1) / 14.0
    return x + noise * torch.randn(n, 2, generator=generator)


class ToyDenoiser(nn.Module):
    """A tiny MLP ``f(x_t (B, 2), t (B,)) -> (B, 2)`` for the 2-D toy of chapter 3.

    The timestep enters as a sinusoidal embedding (as in the U-Net), concatenated to the input.
    """

    def __init__(self, dim: int = 2, hidden: int = 128, time_dim: int = 32, n_layers: int = 3):
        super().__init__()
        self.dim, self.time_dim = dim, time_dim
        layers, width = [], dim + time_dim
        for _ in range(n_layers):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        layers.append(nn.Linear(width, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x_t (B, dim)``, ``t (B,)`` -> prediction ``(B, dim)``."""
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must be (B, {self.dim}), got {tuple(x.shape)}")
        return self.net(torch.cat([x, timestep_embedding(t, self.time_dim)], 1))


# ---------------------------------------------------------------------------------------------
# A minimal training loop (chapter 6 has the full one)
# ---------------------------------------------------------------------------------------------
def fit(model: nn.Module, diffusion: GaussianDiffusion, batches: Callable[[int], torch.Tensor], *,
        steps: int, lr: float = 1e-3, warmup: int = 0, grad_clip: float | None = 1.0,
        generator: torch.Generator | None = None, progress: bool = True,
        ema: nn.Module | None = None, ema_decay: float = 0.999,
        max_seconds: float | None = None, threads: int | None = None) -> list[float]:
    """Train ``model`` with :meth:`GaussianDiffusion.loss` for ``steps`` Adam steps.

    ``threads`` limits torch's CPU threads during training (see
    :func:`imagen_edu.profiles.torch_threads`): ``1`` is fastest for tiny models such as the 2-D toy.

    With ``max_seconds`` training also stops once that much wall time has passed (so a chapter
    keeps its time budget on a slow machine; ``len(losses)`` says how many steps ran).

    ``batches(step) -> x0 (B, ...)`` supplies data. Stops with ``FloatingPointError`` naming
    the step if the loss is not finite. If ``ema`` (a copy of ``model``) is given, it tracks an
    exponential moving average of the weights. Returns the list of losses.
    """
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, warmup)))
    device = next(model.parameters()).device
    losses: list[float] = []
    it = range(steps)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="training", leave=False)
    model.train()
    with torch_threads(threads, device):
        _fit_loop(model, diffusion, batches, it, opt, sched, generator, grad_clip, ema, ema_decay,
                  max_seconds, device, losses)
    model.eval()
    return losses


def _fit_loop(model, diffusion, batches, it, opt, sched, generator, grad_clip, ema, ema_decay,
              max_seconds, device, losses):
    start = time.perf_counter()
    for step in it:
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
        x0 = batches(step).to(device)
        loss = diffusion.loss(model, x0, generator=generator)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        sched.step()
        if ema is not None:
            with torch.no_grad():
                d = min(ema_decay, (1 + step) / (10 + step))
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.lerp_(pm, 1 - d)
                for be, bm in zip(ema.buffers(), model.buffers()):
                    be.copy_(bm)
        losses.append(loss.item())


# ---------------------------------------------------------------------------------------------
# Unconditional diffusion on the shapes benchmark (chapter 3, part 2) and the sampler benchmark
# ---------------------------------------------------------------------------------------------
def clean_object_share(images: torch.Tensor) -> dict:
    """How many of ``images (N, 3, H, W)`` in [-1, 1] the judge finds to hold 1 or 2 clean objects.

    An image counts when :func:`imagen_edu.evaluate.detect_objects_batch` finds one or two
    objects and every one of them is *clean* (one saturated colour, a roughly square box, shape
    features near a prototype). Returns ``{"clean_1_2": share, "n": N, "mean_objects": ...}``.
    """
    from .evaluate import detect_objects_batch

    objs = detect_objects_batch(images.clamp(-1, 1).float().cpu())
    ok = [1 <= len(o) <= 2 and all(d.clean for d in o) for o in objs]
    return {"clean_1_2": sum(ok) / max(1, len(ok)), "n": len(ok),
            "mean_objects": sum(len(o) for o in objs) / max(1, len(objs))}


def shapes_unet_config(settings=None):
    """The :class:`imagen_edu.unet.UNetConfig` of the chapter's shapes model for a profile's settings."""
    from . import profiles
    from .unet import UNetConfig

    s = settings if settings is not None else profiles.current().diffusion
    return UNetConfig(image_size=s.image_size, channels=s.unet_channels, channel_mults=tuple(s.unet_mults),
                      attention_resolutions=(s.image_size // 2 ** (len(s.unet_mults) - 1),),
                      num_heads=4 if s.unet_channels % 4 == 0 else 1, groups=min(8, s.unet_channels))


def train_shapes(settings=None, *, steps: int | None = None, max_seconds: float | None = -1.0, seed: int = 0,
                 device=None, progress: bool = True) -> dict:
    """Train the unconditional shapes U-Net (chapter 3) with a profile's settings.

    ``settings`` is a :class:`imagen_edu.profiles.DiffusionSettings` (default: the current
    profile's). ``steps`` and ``max_seconds`` override ``settings.image_steps`` and
    ``settings.image_max_seconds`` (``None``: no time cap). Returns a dict with ``model`` (the
    EMA weights, eval mode), ``diffusion``, ``losses``, ``seconds``, ``steps`` (steps run),
    ``render_seconds`` and ``config``.
    """
    from . import profiles
    from .data.shapes import make_batch
    from .unet import UNet

    prof = profiles.current()
    s = settings if settings is not None else prof.diffusion
    device = device or prof.device
    steps = s.image_steps if steps is None else steps
    max_seconds = s.image_max_seconds if max_seconds == -1.0 else max_seconds
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    data, _ = make_batch(s.n_train_images, resolution=s.image_size, seed=seed)
    render_seconds = time.perf_counter() - t0
    diffusion = GaussianDiffusion(s.schedule, s.timesteps, objective=s.objective)
    model = UNet(shapes_unet_config(s)).to(device)
    ema = UNet(model.config).to(device)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    g = torch.Generator().manual_seed(seed)

    def batches(step):
        return data[torch.randint(0, len(data), (s.image_batch,), generator=g)]

    t0 = time.perf_counter()
    losses = fit(model, diffusion, batches, steps=steps, lr=s.lr, warmup=min(100, max(1, steps // 10)),
                 generator=g, progress=progress, ema=ema, ema_decay=s.ema_decay, max_seconds=max_seconds)
    seconds = time.perf_counter() - t0
    ema.eval()
    return {"model": ema, "raw_model": model, "diffusion": diffusion, "losses": losses, "seconds": seconds,
            "steps": len(losses), "render_seconds": render_seconds, "config": model.config}


def benchmark_samplers(model, diffusion: GaussianDiffusion, *, n_images: int = 64, batch_size: int = 64,
                       configs=(("ddpm", 1000), ("ddim", 250), ("ddim", 100), ("ddim", 50), ("ddim", 25)),
                       seed: int = 0, progress: bool = False) -> list[dict]:
    """Seconds per image and judge quality for each ``(sampler, steps)`` (steps capped at ``T``).

    Every configuration starts from the same ``x_T`` (same seed). DDIM uses ``eta = 0``.
    Returns one dict per configuration: ``sampler``, ``steps``, ``seconds_per_image``,
    ``clean_1_2`` (share of samples with one or two clean objects) and ``mean_objects``.
    """
    device = next(model.parameters()).device
    c = model.config
    rows = []
    for sampler, steps in configs:
        steps = min(int(steps), diffusion.num_timesteps)
        outs, t0 = [], time.perf_counter()
        g = torch.Generator().manual_seed(seed)
        for start in range(0, n_images, batch_size):
            b = min(batch_size, n_images - start)
            outs.append(diffusion.sample(model, (b, c.in_channels, c.image_size, c.image_size), sampler=sampler,
                                         steps=steps, eta=0.0, generator=g, progress=progress, device=device).cpu())
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        q = clean_object_share(torch.cat(outs))
        rows.append({"sampler": sampler, "steps": steps, "seconds_per_image": round(dt / n_images, 4),
                     "clean_1_2": round(q["clean_1_2"], 3), "mean_objects": round(q["mean_objects"], 2),
                     "n_images": n_images})
    return rows


def _main(argv=None) -> None:
    import argparse
    import json
    import os
    import platform

    from . import profiles

    parser = argparse.ArgumentParser(prog="python -m imagen_edu.diffusion",
                                     description="Chapter 3 tools: the sampler benchmark.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench", help="seconds per image and sample quality, DDPM 1000 vs DDIM 250/100/50/25 "
                                     "(prints JSON)")
    b.add_argument("--checkpoint", help="a UNet saved by save_unet (with its diffusion settings); "
                                        "without it a model is trained first")
    b.add_argument("--train-steps", type=int, default=None, help="training steps (default: the profile's)")
    b.add_argument("--max-seconds", type=float, default=None,
                   help="cap on training time in seconds (default: the profile's; 0 = no cap)")
    b.add_argument("--save", help="where to save the trained model (safetensors)")
    b.add_argument("--n-images", type=int, default=64)
    b.add_argument("--batch-size", type=int, default=64)
    b.add_argument("--steps", default="1000,250,100,50,25",
                   help="comma-separated step counts; the first is DDPM, the rest DDIM")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (1 is often faster on a busy or 2-core machine)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    from .unet import load_unet, save_unet

    prof = profiles.current()
    out: dict = {"profile": prof.name, "device": prof.device, "torch_threads": torch.get_num_threads(),
                 "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
    if args.checkpoint:
        model, extra = load_unet(args.checkpoint, device=prof.device)
        diffusion = GaussianDiffusion(extra.get("schedule", "cosine"), int(extra.get("timesteps", 1000)),
                                      objective=extra.get("objective", "eps"))
        out["checkpoint"] = args.checkpoint
        out["train"] = extra.get("train", {})
    else:
        max_s = prof.diffusion.image_max_seconds if args.max_seconds is None else args.max_seconds
        max_s = None if max_s is not None and max_s <= 0 else max_s  # 0: no time cap
        res = train_shapes(steps=args.train_steps, max_seconds=max_s, seed=args.seed, progress=False)
        model, diffusion = res["model"], res["diffusion"]
        out["train"] = {"steps": res["steps"], "seconds": round(res["seconds"], 1),
                        "final_loss": round(sum(res["losses"][-50:]) / len(res["losses"][-50:]), 4)}
        if args.save:
            s = prof.diffusion
            save_unet(model, args.save, extra={"schedule": s.schedule, "timesteps": s.timesteps,
                                               "objective": s.objective, "train": out["train"]})
            out["saved"] = args.save
    steps = [int(x) for x in args.steps.split(",")]
    configs = [("ddpm", steps[0])] + [("ddim", k) for k in steps[1:]]
    out["results"] = benchmark_samplers(model, diffusion, n_images=args.n_images, batch_size=args.batch_size,
                                        configs=configs, seed=args.seed)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    _main()
