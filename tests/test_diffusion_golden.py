"""Golden tests: imagen_edu.diffusion against diffusers' DDPMScheduler and DDIMScheduler (chapter 3).

diffusers is an independent implementation of the same papers (Ho et al. 2020, Nichol & Dhariwal
2021, Song et al. 2021, Salimans & Ho 2022, Saharia et al. 2022), used here only as a test
dependency. Differences by design, so not compared:

* diffusers keeps its schedule in float32; ours is float64 and cast to the data's dtype when used
  (hence the float32 tolerances below);
* our linear schedule scales both ends by ``1000 / T`` (improved-DDPM code); diffusers takes the
  ends as given, so the test passes it the scaled ends;
* ``fixed_large`` at the very first step: ours uses ``beta~`` of index 1 there (improved-DDPM),
  diffusers ``beta_1``; neither adds noise at that step, so sampling agrees;
* DDIM's step pair: diffusers steps from ``t`` to ``t - T // n``; ours to the next index of
  :func:`timestep_subsequence` (diffusers' ``"linspace"`` spacing), so the step tests pass both
  the same pair; with one step ours visits ``T - 1`` (pure noise), diffusers' linspace ``0``;
* with clipping, our DDIM step re-derives eps from the clipped x0 (as Glide and improved DDPM);
  diffusers does that with ``use_clipped_model_output=True``.
"""

import pytest
import torch

from imagen_edu.diffusion import GaussianDiffusion, beta_schedule, timestep_subsequence
from imagen_edu.thresholding import dynamic_threshold

diffusers = pytest.importorskip("diffusers")

pytestmark = pytest.mark.usefixtures("one_thread")

PREDICTION = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}
SHAPE = (4, 3, 8, 8)


def close(got, expected, tol=5e-6):
    """Equal up to float32 rounding, relative to the largest value (an eps-model's x0_hat at abar ~ 0 is
    huge, and so are the rounding errors of its float32 arithmetic)."""
    assert got.shape == expected.shape
    err, scale = (got.double() - expected.double()).abs().max().item(), expected.abs().max().item()
    assert err <= tol * max(1.0, scale), f"largest difference {err:.3g} for values up to {scale:.3g}"


def ddpm_scheduler(T, schedule, objective="eps", **kw):
    """A DDPMScheduler configured as our GaussianDiffusion(schedule, T, objective)."""
    ends = {"beta_start": 1e-4 * 1000 / T, "beta_end": 0.02 * 1000 / T} if schedule == "linear" else {}
    name = {"linear": "linear", "cosine": "squaredcos_cap_v2"}[schedule]
    kw.setdefault("clip_sample", False)
    return diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule=name, prediction_type=PREDICTION[objective],
                                   **ends, **kw)


def ddim_scheduler(T, schedule, objective="eps", **kw):
    """A DDIMScheduler configured as ours: abar_prev = 1 after the last step (set_alpha_to_one)."""
    ends = {"beta_start": 1e-4 * 1000 / T, "beta_end": 0.02 * 1000 / T} if schedule == "linear" else {}
    name = {"linear": "linear", "cosine": "squaredcos_cap_v2"}[schedule]
    kw.setdefault("clip_sample", False)
    return diffusers.DDIMScheduler(num_train_timesteps=T, beta_schedule=name, prediction_type=PREDICTION[objective],
                                   set_alpha_to_one=True, timestep_spacing="linspace", **ends, **kw)


def with_our_abar(ref, ours):
    """Give a scheduler our float64 abar (the schedules are compared on their own above), so that the step
    tests compare the step formulas, not float32 rounding of 1 - abar near t = 0."""
    ref.alphas_cumprod = ours.alphas_cumprod.clone()
    if hasattr(ref, "final_alpha_cumprod"):
        ref.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    return ref


def net(x, t):
    return torch.tanh(0.8 * x + 0.002 * t.view(-1, 1, 1, 1).float()) * 1.2


@pytest.mark.parametrize("T", [50, 250, 1000])
def test_linear_betas_match_diffusers(T):
    """Eq. (ch3-eq-linear): Ho et al.'s linear betas, as diffusers' "linear" with the ends scaled by 1000/T."""
    ref = ddpm_scheduler(T, "linear")
    torch.testing.assert_close(beta_schedule("linear", T).float(), ref.betas, atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(GaussianDiffusion("linear", T).alphas_cumprod.float(), ref.alphas_cumprod,
                               atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("T", [50, 1000])
def test_cosine_betas_match_squaredcos_cap_v2(T):
    """Eq. (ch3-eq-cosine): Nichol & Dhariwal's cosine betas clipped at 0.999 = diffusers' "squaredcos_cap_v2"."""
    ref = ddpm_scheduler(T, "cosine")
    torch.testing.assert_close(beta_schedule("cosine", T).float(), ref.betas, atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(GaussianDiffusion("cosine", T).alphas_cumprod.float(), ref.alphas_cumprod,
                               atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_q_sample_and_v_match_add_noise_and_get_velocity(schedule):
    """Eqs. (ch3-eq-closed-form) and (ch3-eq-v): q_sample = add_noise and v_from = get_velocity."""
    ours, ref = GaussianDiffusion(schedule, 1000), ddpm_scheduler(1000, schedule)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    t = torch.tensor([0, 250, 700, 999])
    close(ours.q_sample(x0, t, eps), ref.add_noise(x0, eps, t), tol=2e-5)      # diffusers' float32 abar
    close(ours.v_from(x0, eps, t), ref.get_velocity(x0, eps, t), tol=2e-5)
    ref = with_our_abar(ref, ours)
    close(ours.q_sample(x0, t, eps), ref.add_noise(x0, eps, t))
    close(ours.v_from(x0, eps, t), ref.get_velocity(x0, eps, t))


def test_timestep_subsequence_is_linspace_spacing():
    """Our evenly spaced respacing = diffusers' timestep_spacing="linspace" (for two or more steps)."""
    for T, n in ((1000, 25), (1000, 50), (1000, 250), (1000, 1000), (100, 7), (50, 49)):
        ref = ddpm_scheduler(T, "linear", timestep_spacing="linspace")
        ref.set_timesteps(n)
        assert timestep_subsequence(T, n).tolist() == ref.timesteps.tolist(), (T, n)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("objective", ["eps", "v", "x0"])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ddpm_step_matches_ddpm_scheduler(schedule, objective, variance):
    """Algorithm 2 with Eqs. (6)-(7): ddpm_step = DDPMScheduler.step with the same noise, on the full chain
    (t -> t-1, also the noiseless last step) and on a respaced chain (custom timesteps)."""
    T = 1000
    ours = GaussianDiffusion(schedule, T, objective=objective, variance=variance)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    for chain in (None, [999, 700, 420, 100, 0]):
        ref = with_our_abar(ddpm_scheduler(T, schedule, objective, variance_type=variance), ours)
        if chain is not None:
            ref.set_timesteps(timesteps=chain)
        pairs = [(500, 499), (1, 0), (0, -1)] if chain is None else list(zip(chain, chain[1:] + [-1]))
        for t_i, t_prev_i in pairs:
            t, t_prev = torch.full((4,), t_i), torch.full((4,), t_prev_i)
            out = net(x, t)
            expected = ref.step(out, t_i, x, generator=torch.Generator().manual_seed(7)).prev_sample
            pred = ours.model_predictions(lambda xx, tt: out, x, t, clip_denoised=False)
            z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7)) if t_prev_i >= 0 else None
            close(ours.ddpm_step(pred["pred_x0"], x, t, t_prev, z), expected)


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("objective", ["eps", "v", "x0"])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ddim_step_matches_ddim_scheduler(schedule, objective, eta):
    """Eqs. (12) and (16) of Song et al.: ddim_step = DDIMScheduler.step (set_alpha_to_one) with the same
    variance_noise, for a pair t -> t - T//n and for the last step to the clean data."""
    T, n = 1000, 50
    ours = GaussianDiffusion(schedule, T, objective=objective)
    ref = with_our_abar(ddim_scheduler(T, schedule, objective), ours)
    ref.set_timesteps(n)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    for t_i in (980, 500, 10):
        t_prev_i = t_i - T // n if t_i >= T // n else -1
        t, t_prev = torch.full((4,), t_i), torch.full((4,), t_prev_i)
        out = net(x, t)
        expected = ref.step(out, t_i, x, eta=eta, variance_noise=z).prev_sample
        pred = ours.model_predictions(lambda xx, tt: out, x, t, clip_denoised=False)
        noise = z if eta > 0 and t_prev_i >= 0 else None
        got = ours.ddim_step(pred["pred_x0"], pred["pred_eps"], t, t_prev, eta, noise)
        close(got, expected)


@pytest.mark.parametrize("objective", ["eps", "v"])
def test_clipped_steps_match_clip_sample(objective):
    """Static thresholding (clip x0_hat to [-1, 1]) = diffusers' clip_sample; DDIM re-derives eps from the
    clipped x0 = use_clipped_model_output=True."""
    T = 1000
    ours = GaussianDiffusion("cosine", T, objective=objective)
    x = 2.5 * torch.randn(SHAPE, generator=torch.Generator().manual_seed(4))
    t_i, t_prev_i = 600, 580
    t, t_prev = torch.full((4,), t_i), torch.full((4,), t_prev_i)
    out = 3 * net(x, t)
    pred = ours.model_predictions(lambda xx, tt: out, x, t, clip_denoised=True)
    assert pred["pred_x0"].abs().max() <= 1 and (pred["pred_x0"].abs() == 1).any()
    ddpm = with_our_abar(ddpm_scheduler(T, "cosine", objective, clip_sample=True), ours)
    step = ddpm.step(out, t_i, x, generator=torch.Generator().manual_seed(5))
    close(pred["pred_x0"], step.pred_original_sample)
    ddim = with_our_abar(ddim_scheduler(T, "cosine", objective, clip_sample=True), ours)
    ddim.set_timesteps(T // (t_i - t_prev_i))
    expected = ddim.step(out, t_i, x, eta=0.0, use_clipped_model_output=True).prev_sample
    close(ours.ddim_step(pred["pred_x0"], pred["pred_eps"], t, t_prev, 0.0), expected)


def test_dynamic_threshold_matches_diffusers_thresholding():
    """Imagen's dynamic thresholding (Saharia et al. Section 2.3, chapter 5): s = max(1, quantile_p |x0|),
    clip to [-s, s], divide by s = diffusers' thresholding=True (with no cap on s)."""
    T, p = 1000, 0.9
    ours = GaussianDiffusion("cosine", T, objective="x0")
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(6))
    out = 3 * torch.randn(SHAPE, generator=torch.Generator().manual_seed(7))   # the predicted x0
    out[0] = 0.5 * torch.tanh(out[0])               # one sample already inside [-1, 1]: s = 1, left alone
    t = torch.full((4,), 300)
    ref = with_our_abar(ddpm_scheduler(T, "cosine", "x0", thresholding=True, dynamic_thresholding_ratio=p,
                                       sample_max_value=1e9), ours)
    expected = ref.step(out, 300, x, generator=torch.Generator().manual_seed(0)).pred_original_sample
    pred = ours.model_predictions(lambda xx, tt: out, x, t, clip_denoised=True,
                                  x0_transform=lambda x0, tt: dynamic_threshold(x0, p))
    close(pred["pred_x0"], expected)
    assert torch.equal(pred["pred_x0"][0], out[0])
    assert not torch.allclose(pred["pred_x0"], out.clamp(-1, 1))   # not the static clip
