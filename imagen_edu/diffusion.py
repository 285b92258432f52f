"""Gaussian diffusion: the schedule, the forward process, the posterior, the losses and the samplers (chapter 3).

Derived in chapter 3 (``book/03_ddpm.ipynb``), following

* Ho, Jain and Abbeel 2020, *Denoising Diffusion Probabilistic Models* (``ho2020denoising``):
  the forward process Eq. (2), its closed form Eq. (4), the posterior Eqs. (6)-(7), the
  reverse mean Eq. (11), the ELBO weight Eq. (12), the simple loss Eq. (14), Algorithms 1-2;
* Nichol and Dhariwal 2021, *Improved DDPM* (``nichol2021improved``): the cosine schedule
  Eq. (17), the clipped betas, the clipped log-variance of the posterior, and respacing;
* Song, Meng and Ermon 2021, *DDIM* (``song2021ddim``): the generalised step Eq. (12) with
  ``sigma`` from Eq. (16) and ``eta`` in [0, 1], over any decreasing subsequence of steps;
* Salimans and Ho 2022 (``salimans2022progressive``): the v-parameterisation
  ``v = sqrt(abar) eps - sqrt(1 - abar) x0`` (their Section 4 and Appendix D);
* Hang et al. 2023 (``hang2023minsnr``): min-SNR-gamma loss weighting.

The module holds the maths only. The networks live in :mod:`imagen_edu.unet` and
:mod:`imagen_edu.toy2d`, training in :mod:`imagen_edu.ddpm_train`, chapter 3's image
experiments in :mod:`imagen_edu.ddpm_images`.

**Index convention.** Timesteps are 0-based integer indices ``t = 0 .. T-1`` as in the
improved-DDPM code: index ``t`` is the paper's step ``t + 1``. So ``q_sample(x0, t=0)`` is one
step of noise, ``alphas_cumprod[t] = prod_{s<=t} (1 - beta_s)``, ``alphas_cumprod_prev[0] = 1``,
and a sampler's "previous" index ``-1`` stands for the clean data (``abar = 1``).

**Samplers as steps.** As in diffusers' schedulers, a sampler is a loop over small step
functions, each written with the taught functions: :meth:`GaussianDiffusion.ddpm_step`
(Algorithm 2 of Ho et al. through :meth:`~GaussianDiffusion.q_posterior`) and
:meth:`GaussianDiffusion.ddim_step` (Eq. 12 of Song et al. through
:meth:`~GaussianDiffusion.ddim_sigma`). Both step from index ``t`` to any earlier ``t_prev``.

**Hooks for chapter 5.** Every model is called as ``model(x_t, t, **model_kwargs)``; a guidance
wrapper (classifier-free guidance) is just another callable with that signature. The
predicted ``x0`` passes through an optional ``x0_transform(x0, t)`` (dynamic thresholding)
before the optional static clip to [-1, 1] (:func:`imagen_edu.thresholding.static_threshold`).

**Generators.** Wherever a function takes a ``generator``, it takes one ``torch.Generator`` (the
whole batch in one draw) or a sequence of them, one per row: row ``r`` is then drawn from
generator ``r`` alone (:func:`gaussian_noise`), so that a seeded image does not depend on the
other images of its batch (chapter 5's cascade gives each image its own generators).

**Devices.** The schedule tables are float64 on the CPU; each device gets its own cached copy
(float32 on MPS), so the loss and the samplers index them where the data live and never wait
for the device inside a step.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence, Union

import torch
from tqdm.auto import tqdm

from .thresholding import static_threshold

__all__ = [
    "SCHEDULES",
    "OBJECTIVES",
    "SAMPLERS",
    "VARIANCES",
    "cosine_alpha_bar",
    "beta_schedule",
    "timestep_subsequence",
    "posterior_coefficients",
    "normal_kl",
    "Generators",
    "gaussian_noise",
    "random_uniform",
    "random_timesteps",
    "GaussianDiffusion",
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
    """The (decreasing) timestep indices a sampler visits, ``(S,)`` long, on the CPU.

    ``steps`` is an int ``1 <= steps <= T`` (evenly spaced indices from ``T-1`` down to 0,
    rounded; ``steps=1`` visits only ``T-1``), or an explicit sequence of distinct indices in
    ``[0, T)`` (any order; sorted decreasing here).
    """
    if isinstance(steps, (list, tuple, torch.Tensor)):
        seq = torch.as_tensor(list(steps) if not isinstance(steps, torch.Tensor) else steps).long().flatten().cpu()
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
    return torch.linspace(timesteps - 1, 0, steps, dtype=torch.float64).round().long()


def posterior_coefficients(ab: torch.Tensor, ab_prev: torch.Tensor):
    """The posterior ``q(x_prev | x_t, x_0)`` between two noise levels, Eqs. (6)-(7) of Ho et al.

    Derived in chapter 3, Eq. (ch3-eq-posterior). ``ab = abar_t`` and ``ab_prev = abar_prev``
    (``1`` for the clean data) of any two indices ``t_prev < t``. The chain that jumps from
    ``t_prev`` to ``t`` in one step has ``alpha' = abar_t / abar_prev`` and ``beta' = 1 - alpha'``
    (for adjacent indices, ``alpha' = alpha_t`` and ``beta' = beta_t``), and Eq. (7) reads::

        mean     = sqrt(abar_prev) beta' / (1 - abar_t) * x_0  +  sqrt(alpha') (1 - abar_prev) / (1 - abar_t) * x_t
        variance = (1 - abar_prev) / (1 - abar_t) * beta'

    The respaced sampler of Nichol & Dhariwal (Section 4) is this posterior over a subsequence.
    Returns ``(coef_x0, coef_xt, variance, beta')``, each like ``ab``.
    """
    beta = 1.0 - ab / ab_prev
    coef_x0 = ab_prev.sqrt() * beta / (1.0 - ab)
    coef_xt = (1.0 - beta).sqrt() * (1.0 - ab_prev) / (1.0 - ab)
    variance = beta * (1.0 - ab_prev) / (1.0 - ab)
    return coef_x0, coef_xt, variance, beta


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """Elementwise ``KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2)))`` in nats."""
    mean1, logvar1, mean2, logvar2 = (torch.as_tensor(a) for a in (mean1, logvar1, mean2, logvar2))
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


# ---------------------------------------------------------------------------------------------
# Moving noise to the data without waiting for the device
# ---------------------------------------------------------------------------------------------
def _to_device(x: torch.Tensor, device) -> torch.Tensor:
    """``x`` on ``device``; a CPU tensor goes to a GPU through pinned memory without a host sync."""
    device = torch.device(device)
    if x.device.type == "cpu" and device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


#: what the noise-drawing functions accept as ``generator``: ``None`` (torch's global generator),
#: one ``torch.Generator`` for the whole batch, or a sequence of them, one per row of the batch
Generators = Union[torch.Generator, Sequence[torch.Generator], None]


def _generators(generator, batch: int) -> tuple[list[torch.Generator] | None, torch.device]:
    """``(per-row generators or None, the device they draw on)`` for a :data:`Generators` value.

    ``None`` and one ``torch.Generator`` give ``(None, its device)`` (the CPU for ``None``); a
    sequence must hold ``batch`` generators on one device.
    """
    if generator is None:
        return None, torch.device("cpu")
    if isinstance(generator, torch.Generator):
        return None, generator.device
    if isinstance(generator, (str, bytes)) or not isinstance(generator, Sequence):
        raise TypeError(f"generator must be a torch.Generator, a sequence of them (one per row) or None, "
                        f"got {type(generator).__name__}")
    gens = list(generator)
    if len(gens) != batch:
        raise ValueError(f"a sequence of generators needs one per row: {batch} rows, got {len(gens)} generators")
    if not all(isinstance(g, torch.Generator) for g in gens):
        raise TypeError("every element of the generator sequence must be a torch.Generator")
    devices = {g.device for g in gens}
    if len(devices) > 1:
        raise ValueError(f"the per-row generators must live on one device, got {sorted(map(str, devices))}")
    return gens, (devices.pop() if devices else torch.device("cpu"))


def gaussian_noise(shape, generator: Generators = None, device=None, dtype=torch.float32) -> torch.Tensor:
    """``N(0, I)`` noise of ``shape = (B, ...)``, drawn where the generator lives, then moved to ``device``.

    ``generator`` is ``None`` (the global generator, on the CPU), one ``torch.Generator`` (the
    whole tensor in one draw, on its device) or a sequence of ``B`` generators: row ``r`` is then
    drawn from generator ``r`` alone, with shape ``shape[1:]``, so a row's noise does not depend
    on the other rows of the batch (chapter 5: a seed fixes each image, whatever the batch).
    Drawing where the generator lives keeps a seeded run identical on every device. ``device``
    defaults to the generator's.
    """
    shape = tuple(int(s) for s in shape)
    gens, at = _generators(generator, shape[0] if shape else 0)
    if gens is None:
        z = torch.randn(shape, generator=generator, dtype=dtype, device=at)
    elif gens:
        z = torch.stack([torch.randn(shape[1:], generator=g, dtype=dtype, device=at) for g in gens])
    else:
        z = torch.empty(shape, dtype=dtype, device=at)
    return _to_device(z, at if device is None else device)


def random_uniform(batch: int, generator: Generators = None) -> torch.Tensor:
    """``(B,)`` float32 values uniform in ``[0, 1)``, drawn on the generator's device.

    With a sequence of ``B`` generators, row ``r``'s value comes from generator ``r``.
    """
    gens, at = _generators(generator, batch)
    if gens is None:
        return torch.rand(batch, generator=generator, device=at)
    return torch.cat([torch.rand(1, generator=g, device=at) for g in gens] + [torch.empty(0, device=at)])


def random_timesteps(timesteps: int, batch: int, generator: Generators = None) -> torch.Tensor:
    """``(B,)`` long indices uniform in ``[0, T)``, drawn on the generator's device.

    With a sequence of ``B`` generators, row ``r``'s index comes from generator ``r``.
    """
    gens, at = _generators(generator, batch)
    if gens is None:
        return torch.randint(0, timesteps, (batch,), generator=generator, device=at)
    return torch.cat([torch.randint(0, timesteps, (1,), generator=g, device=at) for g in gens]
                     + [torch.empty(0, dtype=torch.long, device=at)])


# ---------------------------------------------------------------------------------------------
# The diffusion process
# ---------------------------------------------------------------------------------------------
class GaussianDiffusion:
    """A Gaussian diffusion process with ``T`` steps: forward noising, losses and samplers.

    Derived in chapter 3. The schedule tables are float64 ``(T,)`` on the CPU: ``betas``,
    ``alphas``, ``alphas_cumprod``, ``alphas_cumprod_prev``, ``sqrt_alphas_cumprod``,
    ``sqrt_one_minus_alphas_cumprod``, ``log_snr``, ``posterior_variance`` and
    ``posterior_log_variance_clipped``. They are indexed on the data's device (a cached copy per
    device) and cast to the data's dtype when used; the schedule is fixed at construction.

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
        # Eq. (7) of Ho et al. for adjacent steps: beta~_t = (1 - abar_{t-1}) / (1 - abar_t) * beta_t
        self.posterior_variance = posterior_coefficients(self.alphas_cumprod, self.alphas_cumprod_prev)[2]
        # beta~ at the first step is 0: its log is clipped to the next value (improved-DDPM code)
        pv = self.posterior_variance
        self.posterior_log_variance_clipped = torch.log(torch.cat([pv[1:2], pv[1:]]) if T > 1 else betas)
        self._tables: dict[tuple[str, str], torch.Tensor] = {}

    def __repr__(self) -> str:
        return (f"GaussianDiffusion(T={self.num_timesteps}, objective={self.objective!r}, "
                f"loss_weighting={self.loss_weighting!r}, variance={self.variance!r})")

    # --------------------------------------------------------------------- helpers
    def _table(self, name: str, device) -> torch.Tensor:
        """The schedule table ``name`` on ``device``: the CPU attribute, or a cached copy (float32 on MPS)."""
        device = torch.device(device)
        if device.type == "cpu":
            return getattr(self, name)
        key = (name, str(device))
        if key not in self._tables:
            src = getattr(self, name)
            self._tables[key] = _to_device(src.float() if device.type == "mps" else src, device)
        return self._tables[key]

    def _check_t(self, t, batch: int, device=None, *, clean: bool = False) -> torch.Tensor:
        """Validate ``t``: an int or an integer tensor ``(B,)`` of indices in ``[0, T)``; long on ``device``.

        With ``clean=True`` the index ``-1`` (the clean data, a sampler's last target) is allowed
        too. The range is checked for ints and CPU tensors; a tensor already on an accelerator is
        not checked (reading it would make the host wait for the device at every step).
        """
        low = -1 if clean else 0
        if isinstance(t, bool):
            raise ValueError(f"t must be an int index or a tensor of them, got {t!r}")
        if isinstance(t, int):
            if not low <= t < self.num_timesteps:
                raise ValueError(f"timestep indices must lie in [{low}, T={self.num_timesteps}) "
                                 f"(index t is the paper's step t+1), got {t}")
            return torch.full((batch,), t, dtype=torch.long, device=device)
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"t must be an int or a torch.Tensor of indices, got {type(t).__name__}")
        if t.is_floating_point() or t.is_complex():
            raise ValueError(f"t must hold integer timestep indices, got dtype {t.dtype}")
        if t.dim() == 0:
            t = t.expand(batch)
        if t.dim() != 1 or t.shape[0] != batch:
            raise ValueError(f"t must have shape (B,) = ({batch},), got {tuple(t.shape)}")
        if t.device.type == "cpu" and t.numel() and (int(t.min()) < low or int(t.max()) >= self.num_timesteps):
            raise ValueError(f"timestep indices must lie in [{low}, T={self.num_timesteps}) "
                             f"(index t is the paper's step t+1), got min {int(t.min())}, max {int(t.max())}")
        t = t.long()
        return t if device is None else _to_device(t, device)

    @staticmethod
    def _shaped(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-example values ``v (B,)`` shaped ``(B, 1, ..., 1)`` to broadcast against ``x (B, ...)``, in x's dtype."""
        return v.to(x.dtype).reshape(x.shape[0], *([1] * (x.dim() - 1)))

    def _at(self, name: str, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``table[t]`` shaped ``(B, 1, ..., 1)`` to broadcast against ``x (B, ...)``, in x's dtype."""
        return self._shaped(self._table(name, x.device)[t], x)

    @staticmethod
    def _check_same(a: torch.Tensor, b: torch.Tensor, what_a: str, what_b: str) -> None:
        if a.shape != b.shape:
            raise ValueError(f"{what_a} has shape {tuple(a.shape)} but {what_b} has shape "
                             f"{tuple(b.shape)}: they must match")

    def _pair(self, t: torch.Tensor, t_prev: torch.Tensor):
        """``(abar_t, abar_prev)`` float64 ``(B,)`` on t's device; ``abar_prev = 1`` where ``t_prev = -1``."""
        ac = self._table("alphas_cumprod", t.device)
        t_prev = t_prev.to(t.device)
        return ac[t], torch.where(t_prev >= 0, ac[t_prev.clamp(min=0)], 1.0)

    def _check_pair(self, t, t_prev, batch: int, device):
        """``t``, ``t_prev`` as long ``(B,)`` on ``device``; ``t_prev = None`` means ``t - 1`` (``-1``: clean data)."""
        t = self._check_t(t, batch, device)
        return t, (t - 1 if t_prev is None else self._check_t(t_prev, batch, device, clean=True))

    def snr(self, t) -> torch.Tensor:
        """``SNR(t) = abar_t / (1 - abar_t)``, Eq. (ch3-eq-snr), for indices ``t``; float64 ``(B,)`` on t's device."""
        t = torch.as_tensor(t).long()
        ac = self._table("alphas_cumprod", t.device)[t]
        return ac / (1.0 - ac)

    # --------------------------------------------------------------------- forward process
    def q_step(self, x_prev: torch.Tensor, t, noise: torch.Tensor | None = None,
               generator: Generators = None) -> torch.Tensor:
        """One forward step ``x_t ~ q(x_t | x_{t-1}) = N(sqrt(1-beta_t) x_{t-1}, beta_t I)``, Eq. (2).

        Derived in chapter 3, Eq. (ch3-eq-forward). ``x_prev (B, ...)`` is ``x_{t-1}`` (``x_0``
        for index 0); ``noise`` like ``x_prev``.
        """
        t = self._check_t(t, x_prev.shape[0], x_prev.device)
        if noise is None:
            noise = gaussian_noise(x_prev.shape, generator, x_prev.device, x_prev.dtype)
        self._check_same(noise, x_prev, "noise", "x_prev")
        beta = self._at("betas", t, x_prev)
        return (1.0 - beta).sqrt() * x_prev + beta.sqrt() * noise

    def q_sample(self, x0: torch.Tensor, t, noise: torch.Tensor | None = None,
                 generator: Generators = None) -> torch.Tensor:
        """Jump straight to ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``, Eq. (4) of Ho et al.

        Derived in chapter 3, Eq. (ch3-eq-closed-form). ``x0 (B, ...)``, ``t (B,)`` indices,
        ``noise`` like ``x0`` (drawn if omitted). Returns ``x_t`` like ``x0``.
        """
        t = self._check_t(t, x0.shape[0], x0.device)
        if noise is None:
            noise = gaussian_noise(x0.shape, generator, x0.device, x0.dtype)
        self._check_same(noise, x0, "noise", "x0")
        return self._at("sqrt_alphas_cumprod", t, x0) * x0 + self._at("sqrt_one_minus_alphas_cumprod", t, x0) * noise

    def q_posterior(self, x0: torch.Tensor, xt: torch.Tensor, t, t_prev=None):
        """The posterior ``q(x_prev | x_t, x_0) = N(mu~, beta~ I)``, Eqs. (6)-(7) of Ho et al.

        Derived in chapter 3, Eq. (ch3-eq-posterior). ``t_prev`` is the earlier index (default
        ``t - 1``; ``-1`` is the clean data): for a respaced pair the chain's one-step noise is
        ``beta' = 1 - abar_t / abar_prev`` (:func:`posterior_coefficients`). Returns
        ``(mean, variance)``: ``mean`` like ``x0`` and ``variance`` ``(B, 1, ..., 1)``. The
        log-variance, clipped where ``beta~ = 0``, is :meth:`posterior_log_variance`.
        """
        self._check_same(xt, x0, "x_t", "x0")
        t, t_prev = self._check_pair(t, t_prev, x0.shape[0], x0.device)
        coef_x0, coef_xt, variance, _ = posterior_coefficients(*self._pair(t, t_prev))
        mean = self._shaped(coef_x0, xt) * x0 + self._shaped(coef_xt, xt) * xt
        return mean, self._shaped(variance, xt)

    def posterior_log_variance(self, t, like: torch.Tensor, t_prev=None) -> torch.Tensor:
        """``log beta~`` of :meth:`q_posterior`, shaped to broadcast with ``like``.

        At the step to the clean data (``t_prev = -1``) ``beta~ = 0``: its log is clipped to
        ``log beta~`` of index 1, as in the improved-DDPM code (``posterior_log_variance_clipped``).
        """
        t, t_prev = self._check_pair(t, t_prev, like.shape[0], like.device)
        variance = posterior_coefficients(*self._pair(t, t_prev))[2]
        clipped = self._table("posterior_log_variance_clipped", t.device)[0]
        return self._shaped(torch.where(t_prev >= 0, variance.log(), clipped), like)

    # --------------------------------------------------------------------- parameterisations
    def predict_x0_from_eps(self, xt, t, eps):
        """``x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``: Eq. (4) solved for x0."""
        self._check_same(eps, xt, "eps", "x_t")
        t = self._check_t(t, xt.shape[0], xt.device)
        return (xt - self._at("sqrt_one_minus_alphas_cumprod", t, xt) * eps) / self._at("sqrt_alphas_cumprod", t, xt)

    def predict_eps_from_x0(self, xt, t, x0):
        """``eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)``: Eq. (4) solved for eps."""
        self._check_same(x0, xt, "x0", "x_t")
        t = self._check_t(t, xt.shape[0], xt.device)
        return (xt - self._at("sqrt_alphas_cumprod", t, xt) * x0) / self._at("sqrt_one_minus_alphas_cumprod", t, xt)

    def v_from(self, x0, eps, t):
        """The velocity ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0``, Eq. (ch3-eq-v) (Salimans & Ho 2022)."""
        self._check_same(eps, x0, "eps", "x0")
        t = self._check_t(t, x0.shape[0], x0.device)
        return self._at("sqrt_alphas_cumprod", t, x0) * eps - self._at("sqrt_one_minus_alphas_cumprod", t, x0) * x0

    def predict_x0_from_v(self, xt, t, v):
        """``x0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v``, Eq. (ch3-eq-v)."""
        self._check_same(v, xt, "v", "x_t")
        t = self._check_t(t, xt.shape[0], xt.device)
        return self._at("sqrt_alphas_cumprod", t, xt) * xt - self._at("sqrt_one_minus_alphas_cumprod", t, xt) * v

    def predict_eps_from_v(self, xt, t, v):
        """``eps = sqrt(1 - abar_t) x_t + sqrt(abar_t) v``, Eq. (ch3-eq-v)."""
        self._check_same(v, xt, "v", "x_t")
        t = self._check_t(t, xt.shape[0], xt.device)
        return self._at("sqrt_one_minus_alphas_cumprod", t, xt) * xt + self._at("sqrt_alphas_cumprod", t, xt) * v

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
        chapter 5), then clipped to [-1, 1] by :func:`~imagen_edu.thresholding.static_threshold`
        if ``clip_denoised``; ``eps`` is then recomputed from that ``x0`` so both stay consistent
        with ``x_t``.

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
            x0 = static_threshold(x0)
            changed = True
        if eps is None or changed:
            eps = self.predict_eps_from_x0(xt, t, x0)
        return {"model_output": out, "pred_x0": x0, "pred_eps": eps}

    def reverse_mean_variance(self, x0_hat: torch.Tensor, xt: torch.Tensor, t, t_prev=None) -> dict:
        """The reverse step ``p(x_prev | x_t) = N(mean, variance)`` given a prediction ``x0_hat`` of x_0.

        Derived in chapter 3, Eqs. (ch3-eq-reverse) and (ch3-eq-reverse-mean). The mean is the
        posterior mean :meth:`q_posterior` with ``x0_hat`` plugged in; the variance is ``beta~``
        (``fixed_small``, with the clipped :meth:`posterior_log_variance`) or ``beta'``
        (``fixed_large``; at the step to the clean data ``beta~`` of index 1, as in the
        improved-DDPM code). ``t_prev`` defaults to ``t - 1``. Returns a dict with ``mean`` like
        ``x_t`` and ``variance``, ``log_variance`` shaped ``(B, 1, ..., 1)``.
        """
        mean, variance = self.q_posterior(x0_hat, xt, t, t_prev)
        if self.variance == "fixed_small":
            return {"mean": mean, "variance": variance, "log_variance": self.posterior_log_variance(t, xt, t_prev)}
        t, t_prev = self._check_pair(t, t_prev, xt.shape[0], xt.device)
        beta = posterior_coefficients(*self._pair(t, t_prev))[3]
        if self.num_timesteps > 1:
            first = self._table("posterior_variance", t.device)[1]
        else:
            first = self._table("betas", t.device)[0]
        variance = self._shaped(torch.where(t_prev >= 0, beta, first), xt)
        return {"mean": mean, "variance": variance, "log_variance": variance.log()}

    def p_mean_variance(self, model: Callable, xt: torch.Tensor, t, t_prev=None, *, model_kwargs: dict | None = None,
                        clip_denoised: bool = True, x0_transform: Callable | None = None) -> dict:
        """The reverse step ``p_theta(x_prev | x_t) = N(mean, variance)`` of the model.

        Derived in chapter 3, Eq. (ch3-eq-reverse-mean): :meth:`model_predictions` then
        :meth:`reverse_mean_variance`. For an eps-model without clipping and ``t_prev = t - 1``
        the mean equals Eq. (11) of Ho et al., ``(x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t)``.

        Returns a dict with ``mean``, ``variance``, ``log_variance`` (clipped), ``pred_x0``,
        ``pred_eps`` and ``model_output``.
        """
        pred = self.model_predictions(model, xt, t, model_kwargs=model_kwargs,
                                      clip_denoised=clip_denoised, x0_transform=x0_transform)
        return {**self.reverse_mean_variance(pred["pred_x0"], xt, t, t_prev), **pred}

    def elbo_weight(self, t) -> torch.Tensor:
        """The weight of ``||eps - eps_theta||^2`` in the ELBO term ``L_{t-1}``, Eq. (12) of Ho et al.

        Derived in chapter 3, Eq. (ch3-eq-kl-weight): ``beta_t^2 / (2 sigma_t^2 alpha_t (1 - abar_t))``
        with ``sigma_t^2`` the model's variance. Infinite at index 0 with ``fixed_small``
        (``beta~_0 = 0``). float64 ``(B,)`` on t's device.
        """
        t = torch.as_tensor(t).long()
        tab = lambda name: self._table(name, t.device)[t]  # noqa: E731
        sig2 = tab("posterior_variance" if self.variance == "fixed_small" else "betas")
        return tab("betas") ** 2 / (2 * sig2 * tab("alphas") * (1 - tab("alphas_cumprod")))

    # --------------------------------------------------------------------- loss
    def loss_weights(self, t) -> torch.Tensor:
        """Per-example loss weights for ``t``, float64 ``(B,)`` on t's device; ones unless ``loss_weighting="min_snr"``.

        Min-SNR-gamma (Hang et al. 2023), Eq. (ch3-eq-minsnr): the x0-space weight is
        ``min(SNR, gamma)``; because ``||eps - eps^||^2 = SNR ||x0 - x0^||^2`` and
        ``||v - v^||^2 = (SNR + 1) ||x0 - x0^||^2``, the weight on the eps loss is
        ``min(SNR, gamma) / SNR`` and on the v loss ``min(SNR, gamma) / (SNR + 1)``.
        """
        t = torch.as_tensor(t).long()
        if self.loss_weighting is None:
            return torch.ones(t.shape, dtype=self._table("betas", t.device).dtype, device=t.device)
        snr = self.snr(t)
        clipped = snr.clamp(max=self.min_snr_gamma)
        if self.objective == "eps":
            return clipped / snr
        if self.objective == "x0":
            return clipped
        return clipped / (snr + 1.0)

    def loss(self, model: Callable, x0: torch.Tensor, t=None, noise: torch.Tensor | None = None,
             model_kwargs: dict | None = None, *, generator: Generators = None,
             reduction: str = "mean") -> torch.Tensor:
        """The training loss (Algorithm 1 of Ho et al.): ``w(t) * mean ||target - model(x_t, t)||^2``.

        Derived in chapter 3, Eq. (ch3-eq-simple-loss): with ``objective="eps"`` and no weighting
        this is ``L_simple``, Eq. (14). ``x0 (B, ...)``; ``t (B,)`` indices (uniform if omitted);
        ``noise`` like ``x0`` (drawn if omitted; both drawn with ``generator`` on its device, the
        CPU without one; a sequence of ``B`` generators draws row ``r`` from generator ``r``).
        ``reduction="none"`` gives the ``(B,)`` losses.
        """
        if not isinstance(x0, torch.Tensor) or x0.dim() < 2:
            raise ValueError(f"x0 must be a tensor (B, ...) with a batch dimension, got "
                             f"{getattr(x0, 'shape', type(x0).__name__)}")
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        b = x0.shape[0]
        if t is None:
            t = random_timesteps(self.num_timesteps, b, generator)
        t = self._check_t(t, b, x0.device)
        if noise is None:
            noise = gaussian_noise(x0.shape, generator, x0.device, x0.dtype)
        xt = self.q_sample(x0, t, noise)
        out = model(xt, t, **(model_kwargs or {}))
        if not isinstance(out, torch.Tensor) or out.shape != xt.shape:
            raise ValueError(f"model output has shape {tuple(getattr(out, 'shape', ()))} but x_t has "
                             f"shape {tuple(xt.shape)}: they must match")
        per_example = (out - self.target(x0, noise, t)).pow(2).flatten(1).mean(1)
        if self.loss_weighting is not None:
            per_example = per_example * self.loss_weights(t).to(per_example.dtype)
        return per_example if reduction == "none" else per_example.mean()

    # --------------------------------------------------------------------- sampling steps
    def ddim_sigma(self, t, t_prev, eta: float) -> torch.Tensor:
        """``sigma`` of a DDIM step from index ``t`` to ``t_prev`` (``-1`` = clean data), Eq. (16) of Song et al.

        Derived in chapter 3, Eq. (ch3-eq-ddim-sigma):
        ``sigma = eta * sqrt((1 - abar_prev) / (1 - abar_t)) * sqrt(1 - abar_t / abar_prev)``.
        With ``eta = 1`` this is ``sqrt(beta~)`` of :meth:`q_posterior` for the pair, the
        ancestral sampler's. float64 ``(B,)`` on t's device.
        """
        ab, ab_prev = self._pair(torch.as_tensor(t).long(), torch.as_tensor(t_prev).long())
        return eta * ((1 - ab_prev) / (1 - ab)).sqrt() * (1 - ab / ab_prev).sqrt()

    def ddpm_step(self, x0_hat: torch.Tensor, x_t: torch.Tensor, t, t_prev, noise: torch.Tensor | None = None):
        """One ancestral step ``x_t -> x_prev`` of the (possibly respaced) chain, Algorithm 2 of Ho et al.

        Derived in chapter 3, Eq. (ch3-eq-ancestral). Notation (variable -> paper)::

            x0_hat            -> the model's x_0 (already thresholded; model_predictions)
            t, t_prev         -> the current and the earlier index (t_prev = -1: the clean data)
            abar_t, abar_prev -> alphas_cumprod[t], alphas_cumprod[t_prev] (1 for the clean data)
            beta'             -> 1 - abar_t / abar_prev, the one-step noise of the chain t_prev -> t
            noise             -> z ~ N(0, I), like x_t; None for z = 0

        Steps:

        1. the posterior ``q(x_prev | x_t, x0_hat) = N(mu~, beta~)``, Eqs. (6)-(7) with ``beta'``
           (:meth:`q_posterior`; for ``t_prev = t - 1`` exactly the paper's);
        2. the reverse variance ``sigma^2``: ``beta~`` or ``beta'`` (``variance``), in
           :meth:`reverse_mean_variance`, which :meth:`p_mean_variance` shares;
        3. ``x_prev = mu~ + sigma z`` (Algorithm 2, line 4); the sampler passes ``noise=None``
           at the last step (``z = 0``).
        """
        p = self.reverse_mean_variance(x0_hat, x_t, t, t_prev)
        if noise is None:
            return p["mean"]
        self._check_same(noise, x_t, "noise", "x_t")
        return p["mean"] + p["variance"].sqrt() * noise

    def ddim_step(self, x0_hat: torch.Tensor, eps_hat: torch.Tensor, t, t_prev, eta: float = 0.0,
                  noise: torch.Tensor | None = None) -> torch.Tensor:
        """One DDIM step ``x_t -> x_prev``, Eq. (12) of Song et al., for any earlier index ``t_prev``.

        Derived in chapter 3, Eq. (ch3-eq-ddim). Notation (variable -> paper)::

            x0_hat, eps_hat   -> f_theta(x_t) and eps_theta(x_t), consistent with x_t (model_predictions)
            abar_t, abar_prev -> alpha_t, alpha_{t-1} of Song et al. (they write alpha for abar)
            sigma             -> sigma_t(eta), Eq. (16)
            noise             -> eps_t ~ N(0, I), like x0_hat; None for no noise (eta = 0)

        Steps:

        1. ``sigma = ddim_sigma(t, t_prev, eta)``, Eq. (16);
        2. the "direction pointing to x_t": ``sqrt(1 - abar_prev - sigma^2) eps_hat``;
        3. ``x_prev = sqrt(abar_prev) x0_hat + direction + sigma noise``, Eq. (12).

        With ``eta = 1`` this is :meth:`ddpm_step` (``fixed_small``) for the same pair and noise.
        """
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= float(eta) <= 1.0:
            raise ValueError(f"eta must be a number in [0, 1], got {eta!r}")
        self._check_same(eps_hat, x0_hat, "eps_hat", "x0_hat")
        t, t_prev = self._check_pair(t, t_prev, x0_hat.shape[0], x0_hat.device)
        ab, ab_prev = self._pair(t, t_prev)
        sigma = self.ddim_sigma(t, t_prev, float(eta))
        direction = (1 - ab_prev - sigma ** 2).clamp(min=0).sqrt()
        x = self._shaped(ab_prev.sqrt(), x0_hat) * x0_hat + self._shaped(direction, eps_hat) * eps_hat
        if noise is None:
            return x
        self._check_same(noise, x0_hat, "noise", "x0_hat")
        return x + self._shaped(sigma, noise) * noise

    # --------------------------------------------------------------------- samplers
    @torch.no_grad()
    def sample(self, model: Callable, shape: Sequence[int], *, sampler: str = "ddpm", steps=None,
               eta: float = 0.0, generator: Generators = None, clip_denoised: bool = True,
               model_kwargs: dict | None = None, progress: bool = True, return_trajectory: bool = False,
               x0_transform: Callable | None = None, noise: torch.Tensor | None = None,
               device=None, dtype=torch.float32):
        """Generate samples ``(B, ...)`` from ``x_T ~ N(0, I)``: a loop of sampler steps.

        Derived in chapter 3, Eqs. (ch3-eq-ancestral) and (ch3-eq-ddim). At each visited index
        ``t`` (with ``t_prev`` the next one, ``-1`` after the last): :meth:`model_predictions`
        gives ``x0_hat`` and ``eps_hat``, then

        * ``sampler="ddpm"``: :meth:`ddpm_step`, ancestral sampling (Algorithm 2 of Ho et al.),
          no noise at the last step. With ``steps < T`` it runs the *respaced* chain over the
          evenly spaced subsequence (Nichol & Dhariwal, Section 4): the same as DDIM with
          ``eta = 1`` (for ``fixed_small``).
        * ``sampler="ddim"``: :meth:`ddim_step`, Eq. (12) of Song et al. with ``sigma`` from
          Eq. (16) times ``eta`` in [0, 1]; ``eta = 0`` is deterministic given ``x_T``.

        Noise is drawn with ``generator`` on its device (the CPU without one) only where a step
        uses it. The host never waits for the device inside the loop: non-finite values are
        caught after the last step (naming the first step that produced them).

        Args:
            model: ``model(x_t, t (B,), **model_kwargs) -> (B, ...)`` predicting the objective.
                A classifier-free-guidance wrapper is any callable with this signature.
            shape: ``(B, ...)`` of the samples.
            steps: ``None`` (all ``T``), an int in ``[1, T]`` (evenly spaced), or explicit indices.
            eta: DDIM's noise scale in ``[0, 1]`` (ignored by ``ddpm``).
            generator: a ``torch.Generator`` for reproducible ``x_T`` and noise, or a sequence of
                ``B`` generators, one per row: row ``r``'s ``x_T`` and noise then come from
                generator ``r`` alone (:func:`gaussian_noise`), whatever the other rows.
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
        device = torch.device(device)
        if noise is not None:
            if tuple(noise.shape) != shape:
                raise ValueError(f"noise (x_T) has shape {tuple(noise.shape)}, expected {shape}")
            x = noise.to(device=device, dtype=dtype)
        else:
            x = gaussian_noise(shape, generator, device, dtype)
        b, visited = shape[0], seq.tolist()
        traj, x0s = [x], []
        first_bad = torch.full((), -1, dtype=torch.long, device=device)  # first step with a non-finite state
        for i in tqdm(range(len(visited)), desc=f"{sampler} {len(visited)} steps", leave=False, disable=not progress):
            t_i, t_prev_i = visited[i], (visited[i + 1] if i + 1 < len(visited) else -1)
            t = torch.full((b,), t_i, dtype=torch.long, device=device)
            t_prev = torch.full((b,), t_prev_i, dtype=torch.long, device=device)
            pred = self.model_predictions(model, x, t, model_kwargs=model_kwargs,
                                          clip_denoised=clip_denoised, x0_transform=x0_transform)
            if sampler == "ddpm":
                # z = 0 at the last step
                z = gaussian_noise(shape, generator, device, dtype) if t_prev_i >= 0 else None
                x = self.ddpm_step(pred["pred_x0"], x, t, t_prev, z)
            else:
                # sigma = 0 without eta or at the last step: no noise
                z = gaussian_noise(shape, generator, device, dtype) if eta > 0 and t_prev_i >= 0 else None
                x = self.ddim_step(pred["pred_x0"], pred["pred_eps"], t, t_prev, eta, z)
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(x).all(), i, first_bad)
            if return_trajectory:
                traj.append(x)
                x0s.append(pred["pred_x0"])
        bad = int(first_bad)
        if bad >= 0:
            raise FloatingPointError(f"sampling produced non-finite values at timestep index {visited[bad]} "
                                     f"(step {bad + 1} of {len(visited)})")
        if return_trajectory:
            return x, {"xt": torch.stack(traj), "pred_x0": torch.stack(x0s), "timesteps": seq}
        return x
