"""Equation tests for imagen_edu.diffusion (chapter 3).

Each test names the equation it checks: Ho et al. 2020 (DDPM), Nichol & Dhariwal 2021 (improved
DDPM), Song et al. 2021 (DDIM), Salimans & Ho 2022 (v), Hang et al. 2023 (min-SNR).
"""

import math

import pytest
import torch

from imagen_edu import diffusion as D
from imagen_edu.diffusion import GaussianDiffusion, beta_schedule, normal_kl


# small tensors: one intra-op thread is faster (and steadier on a shared machine)
pytestmark = pytest.mark.usefixtures("one_thread")


def gaussian_eps_model(diff: GaussianDiffusion, mu: float, s: float):
    """The exact E[eps | x_t] for data x0 ~ N(mu, s^2) per coordinate (the optimal eps-model).

    x_t = sqrt(ab) x0 + sqrt(1-ab) eps is Gaussian with mean sqrt(ab) mu and variance
    ab s^2 + 1 - ab; eps and x_t are jointly Gaussian with covariance sqrt(1-ab).
    """
    def model(x, t):
        ab = diff.alphas_cumprod[t].to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        return (1 - ab).sqrt() / (ab * s**2 + 1 - ab) * (x - ab.sqrt() * mu)
    return model


def as_objective(diff, eps_model):
    """Turn an eps-model into one for diff.objective (x0 or v), using the package conversions."""
    def model(x, t):
        eps = eps_model(x, t)
        if diff.objective == "eps":
            return eps
        x0 = diff.predict_x0_from_eps(x, t, eps)
        return x0 if diff.objective == "x0" else diff.v_from(x0, eps, t)
    return model


# ------------------------------------------------------------------ schedules
def test_linear_schedule_endpoints_and_scaling():
    """Eq. (ch3-eq-linear): beta_t linear from 1e-4 to 0.02 (Ho et al. Section 4), both ends times 1000/T."""
    b = beta_schedule("linear", 1000)
    assert b.shape == (1000,) and b.dtype == torch.float64
    assert math.isclose(b[0].item(), 1e-4, rel_tol=1e-9) and math.isclose(b[-1].item(), 0.02, rel_tol=1e-9)
    assert torch.all(b[1:] > b[:-1])
    b250 = beta_schedule("linear", 250)  # improved-DDPM scaling: scale = 1000 / T
    assert math.isclose(b250[0].item(), 4e-4, rel_tol=1e-9) and math.isclose(b250[-1].item(), 0.08, rel_tol=1e-9)
    # beta_t = beta_min + (t-1)/(T-1) (beta_max - beta_min) at every step, not just the ends
    T = 37
    t = torch.arange(1, T + 1, dtype=torch.float64)
    lo, hi = 1e-4 * 1000 / T, 0.02 * 1000 / T
    torch.testing.assert_close(beta_schedule("linear", T), lo + (t - 1) / (T - 1) * (hi - lo))
    assert beta_schedule("linear", 10).max() == 0.999  # 0.02 * 100 > 1: clipped at max_beta


def test_cosine_schedule_matches_eq17():
    """Eq. (ch3-eq-cosine) (Nichol & Dhariwal Eq. 17): abar(t) = f(t/T)/f(0), s = 0.008, betas clipped at 0.999."""
    T, s = 1000, 0.008
    b = beta_schedule("cosine", T)
    ab = torch.cumprod(1 - b, 0)
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    # abar(t) = f(t/T) / f(0) (Eq. 17), wherever the clip at 0.999 has not acted
    for t in (1, 10, 500, 900):
        assert math.isclose(ab[t - 1].item(), f(t / T) / f(0), rel_tol=1e-9)
    assert ab[0].item() > 0.9999          # nearly clean after one step
    assert b.max().item() <= 0.999 and math.isclose(b.max().item(), 0.999)  # clipped at the end
    assert torch.all(ab[1:] < ab[:-1])     # monotone
    assert torch.all(b[1:] >= b[:-1])
    assert ab[-1].item() < 1e-6


def test_bad_schedule_inputs():
    """Unknown schedules, objectives and out-of-range betas are refused with a message naming them."""
    with pytest.raises(ValueError, match="unknown beta schedule"):
        beta_schedule("quadratic", 10)
    with pytest.raises(ValueError, match="positive int"):
        beta_schedule("linear", 0)
    with pytest.raises(ValueError, match="objective"):
        GaussianDiffusion("linear", 10, objective="score")
    with pytest.raises(ValueError, match="timesteps"):
        GaussianDiffusion("linear")
    with pytest.raises(ValueError, match="open interval"):
        GaussianDiffusion(torch.tensor([0.1, 1.0]))


# ------------------------------------------------------------------ forward process
def test_closed_form_equals_iterated_noising_in_distribution():
    """Eq. (4) (one jump) against Eq. (2) applied t times: the same first two moments."""
    diff = GaussianDiffusion("linear", 100)
    g = torch.Generator().manual_seed(0)
    n = 40000
    x0 = torch.tensor([-1.0, 0.0, 0.7]).repeat(n, 1)  # three data values, n copies each
    t_final = 60
    x = x0.clone()
    for t in range(t_final + 1):
        x = diff.q_step(x, t, generator=g)
    jump = diff.q_sample(x0, t_final, generator=g)
    ab = diff.alphas_cumprod[t_final].item()
    for sample in (x, jump):
        torch.testing.assert_close(sample.mean(0), math.sqrt(ab) * x0[0], atol=0.02, rtol=0)
        torch.testing.assert_close(sample.var(0), torch.full((3,), 1 - ab), atol=0.02, rtol=0)
    torch.testing.assert_close(x.mean(0), jump.mean(0), atol=0.03, rtol=0)
    torch.testing.assert_close(x.var(0), jump.var(0), atol=0.03, rtol=0)


def test_q_step_is_eq2_with_given_noise():
    """Eq. (ch3-eq-forward) (Ho et al. Eq. 2): x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps."""
    diff = GaussianDiffusion("linear", 40)
    x, eps = torch.randn(3, 2, 2, dtype=torch.float64), torch.randn(3, 2, 2, dtype=torch.float64)
    t = torch.tensor([0, 17, 39])
    b = beta_schedule("linear", 40)[t].view(3, 1, 1)
    torch.testing.assert_close(diff.q_step(x, t, eps), (1 - b).sqrt() * x + b.sqrt() * eps)


def test_q_sample_is_eq4_with_given_noise():
    """Eq. (ch3-eq-closed-form) (Ho et al. Eq. 4): x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, abar_t = prod alpha."""
    diff = GaussianDiffusion("cosine", 50)
    x0, eps = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    t = torch.tensor([0, 7, 30, 49])
    ab = torch.cumprod(1 - beta_schedule("cosine", 50), 0)[t].float().view(4, 1, 1, 1)
    torch.testing.assert_close(diff.q_sample(x0, t, eps), ab.sqrt() * x0 + (1 - ab).sqrt() * eps)


def test_snr_and_log_snr():
    """Eq. (ch3-eq-snr): SNR(t) = abar_t / (1 - abar_t); log_snr is its log and decreases with t."""
    diff = GaussianDiffusion("cosine", 200)
    t = torch.tensor([0, 3, 100, 199])
    ab = torch.cumprod(1 - beta_schedule("cosine", 200), 0)[t]
    torch.testing.assert_close(diff.snr(t), ab / (1 - ab))
    torch.testing.assert_close(diff.log_snr[t], torch.log(ab / (1 - ab)))
    assert torch.all(diff.log_snr[1:] < diff.log_snr[:-1])


def test_posterior_equals_eq7_formula():
    """Eq. (ch3-eq-posterior) (Ho et al. Eqs. 6-7): mu~ and beta~ in beta_t, alpha_t, abar; point mass at index 0."""
    T = 100
    diff = GaussianDiffusion("linear", T)
    b = beta_schedule("linear", T)
    a = 1 - b
    ab = torch.cumprod(a, 0)
    x0, xt = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    t = torch.tensor([1, 5, 50, 98, 99])
    mean, var = diff.q_posterior(x0, xt, t)
    abp = ab[t - 1].view(-1, 1)
    at, bt, abt = a[t].view(-1, 1), b[t].view(-1, 1), ab[t].view(-1, 1)
    expected_mean = abp.sqrt() * bt / (1 - abt) * x0 + at.sqrt() * (1 - abp) / (1 - abt) * xt
    torch.testing.assert_close(mean, expected_mean)
    torch.testing.assert_close(var, (1 - abp) / (1 - abt) * bt)
    # at the first step the posterior is a point mass on x0
    m0, v0 = diff.q_posterior(x0, xt, 0)
    torch.testing.assert_close(m0, x0)
    assert torch.all(v0 == 0)
    # clipped log variance: finite everywhere, log(beta~) from index 1 on
    lv = diff.posterior_log_variance(torch.arange(T), torch.zeros(T, 1))
    assert torch.isfinite(lv).all()
    torch.testing.assert_close(lv[1:, 0].double(), diff.posterior_variance[1:].log(), check_dtype=False)


def test_posterior_equals_bayes_rule_numerically():
    """Eq. (ch3-eq-posterior) by Bayes: q(x_{t-1}|x_t,x0) ∝ q(x_t|x_{t-1}) q(x_{t-1}|x0), normalised on a grid."""
    diff = GaussianDiffusion("linear", 50)
    x0, xt = torch.tensor([[0.6]], dtype=torch.float64), torch.tensor([[-0.4]], dtype=torch.float64)
    for t in (3, 20, 45):
        beta, ab_prev = diff.betas[t].item(), diff.alphas_cumprod_prev[t].item()
        grid = torch.linspace(-6, 6, 200001, dtype=torch.float64)
        log_p = (-(xt.item() - math.sqrt(1 - beta) * grid) ** 2 / (2 * beta)
                 - (grid - math.sqrt(ab_prev) * x0.item()) ** 2 / (2 * (1 - ab_prev)))
        w = torch.exp(log_p - log_p.max())
        w = w / w.sum()
        num_mean = (w * grid).sum()
        num_var = (w * (grid - num_mean) ** 2).sum()
        mean, var = diff.q_posterior(x0, xt, t)
        assert math.isclose(mean.item(), num_mean.item(), rel_tol=1e-5, abs_tol=1e-6)
        assert math.isclose(var.item(), num_var.item(), rel_tol=1e-4)


def test_respaced_posterior_equals_bayes_rule_for_the_jump():
    """Eq. (ch3-eq-posterior) for a pair t_prev < t: the jump q(x_t|x_prev) = N(sqrt(a') x_prev, 1 - a'),
    a' = abar_t / abar_prev, times q(x_prev|x0), normalised on a grid (the respaced sampler's posterior)."""
    diff = GaussianDiffusion("cosine", 100)
    x0, xt = torch.tensor([[0.3]], dtype=torch.float64), torch.tensor([[0.8]], dtype=torch.float64)
    grid = torch.linspace(-6, 6, 200001, dtype=torch.float64)
    for t, t_prev in ((90, 60), (40, 3), (10, 9)):
        ab, ab_prev = diff.alphas_cumprod[t].item(), diff.alphas_cumprod[t_prev].item()
        a = ab / ab_prev
        log_p = (-(xt.item() - math.sqrt(a) * grid) ** 2 / (2 * (1 - a))
                 - (grid - math.sqrt(ab_prev) * x0.item()) ** 2 / (2 * (1 - ab_prev)))
        w = torch.exp(log_p - log_p.max())
        w = w / w.sum()
        num_mean = (w * grid).sum()
        mean, var = diff.q_posterior(x0, xt, t, t_prev)
        assert math.isclose(mean.item(), num_mean.item(), rel_tol=1e-5, abs_tol=1e-6)
        assert math.isclose(var.item(), (w * (grid - num_mean) ** 2).sum().item(), rel_tol=1e-4)
    # t_prev = t - 1 is the default, and t_prev = -1 (the clean data) is a point mass on x0
    torch.testing.assert_close(diff.q_posterior(x0, xt, 50, 49)[0], diff.q_posterior(x0, xt, 50)[0])
    m, v = diff.q_posterior(x0, xt, 50, -1)
    torch.testing.assert_close(m, x0)
    assert torch.all(v == 0)
    # its clipped log-variance is log beta~ of index 1, the full chain's convention
    torch.testing.assert_close(diff.posterior_log_variance(50, x0, -1)[0, 0], diff.posterior_variance[1].log())
    torch.testing.assert_close(diff.posterior_log_variance(50, x0, 20)[0, 0],
                               diff.q_posterior(x0, xt, 50, 20)[1][0, 0].log())


# ------------------------------------------------------------------ parameterisations
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_eps_x0_v_conversions_round_trip(schedule):
    """Eqs. (ch3-eq-closed-form) and (ch3-eq-v): eps <-> x0 <-> v given x_t, and (x_t, v) is a rotation of (x0, eps)."""
    diff = GaussianDiffusion(schedule, 200)
    x0, eps = torch.randn(6, 3, 4, 4, dtype=torch.float64), torch.randn(6, 3, 4, 4, dtype=torch.float64)
    t = torch.tensor([0, 1, 50, 120, 190, 198])
    xt = diff.q_sample(x0, t, eps)
    torch.testing.assert_close(diff.predict_x0_from_eps(xt, t, eps), x0)
    torch.testing.assert_close(diff.predict_eps_from_x0(xt, t, x0), eps)
    v = diff.v_from(x0, eps, t)
    torch.testing.assert_close(diff.predict_x0_from_v(xt, t, v), x0)
    torch.testing.assert_close(diff.predict_eps_from_v(xt, t, v), eps)
    # v is the rotation of (x0, eps) by the angle phi with cos(phi) = sqrt(abar): |v|^2 + |x_t|^2 = |x0|^2 + |eps|^2
    torch.testing.assert_close(v.pow(2) + xt.pow(2), x0.pow(2) + eps.pow(2))


def test_v_is_defined_as_in_salimans_and_ho():
    """Eq. (ch3-eq-v): v = sqrt(abar) eps - sqrt(1 - abar) x0 (the sign and the roles of eps and x0 matter)."""
    diff = GaussianDiffusion("cosine", 100)
    x0, eps = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    t = torch.tensor([2, 50, 97])
    ab = diff.alphas_cumprod[t].view(-1, 1)
    v = ab.sqrt() * eps - (1 - ab).sqrt() * x0
    torch.testing.assert_close(diff.v_from(x0, eps, t), v)
    xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    torch.testing.assert_close(diff.predict_x0_from_v(xt, t, v), ab.sqrt() * xt - (1 - ab).sqrt() * v)
    torch.testing.assert_close(diff.predict_eps_from_v(xt, t, v), (1 - ab).sqrt() * xt + ab.sqrt() * v)
    torch.testing.assert_close(GaussianDiffusion("cosine", 100, objective="v").target(x0, eps, t), v)


def test_reverse_mean_is_eq11_for_eps_model():
    """Eqs. (ch3-eq-reverse) and (ch3-eq-reverse-mean) (Ho et al. Eq. 11): the posterior mean with x0^ plugged in
    is (x_t - beta/sqrt(1-abar) eps) / sqrt(alpha); sigma^2 is beta~ (fixed_small) or beta (fixed_large)."""
    diff = GaussianDiffusion("linear", 100)
    eps_hat = torch.randn(4, 2, dtype=torch.float64)
    xt = torch.randn(4, 2, dtype=torch.float64)
    t = torch.tensor([1, 10, 60, 99])
    out = diff.p_mean_variance(lambda x, tt: eps_hat, xt, t, clip_denoised=False)
    b, a, ab = diff.betas[t].view(-1, 1), diff.alphas[t].view(-1, 1), diff.alphas_cumprod[t].view(-1, 1)
    torch.testing.assert_close(out["mean"], (xt - b / (1 - ab).sqrt() * eps_hat) / a.sqrt())
    torch.testing.assert_close(out["variance"], diff.posterior_variance[t].view(-1, 1))
    big = GaussianDiffusion("linear", 100, variance="fixed_large")
    torch.testing.assert_close(big.p_mean_variance(lambda x, tt: eps_hat, xt, t, clip_denoised=False)["variance"], b)


def test_elbo_term_is_weighted_eps_error_eq12():
    """Eq. (ch3-eq-kl-weight) (Ho et al. Eq. 12): KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t))
    = beta^2 / (2 sigma^2 alpha (1-abar)) ||eps - eps^||^2."""
    diff = GaussianDiffusion("cosine", 100)
    x0, eps = torch.randn(5, 8, dtype=torch.float64), torch.randn(5, 8, dtype=torch.float64)
    eps_hat = eps + 0.3 * torch.randn(5, 8, dtype=torch.float64)
    t = torch.tensor([1, 2, 30, 70, 98])
    xt = diff.q_sample(x0, t, eps)
    q_mean, q_var = diff.q_posterior(x0, xt, t)
    p = diff.p_mean_variance(lambda x, tt: eps_hat, xt, t, clip_denoised=False)
    kl = normal_kl(q_mean, q_var.log(), p["mean"], p["log_variance"]).sum(1)
    weight = diff.elbo_weight(t)
    torch.testing.assert_close(kl, weight * (eps - eps_hat).pow(2).sum(1))
    assert torch.all(weight[1:] > 0)


# ------------------------------------------------------------------ losses
def test_normal_kl_is_the_gaussian_kl_of_the_elbo():
    """Eq. (ch3-eq-elbo): each L_{t-1} is KL between Gaussians; normal_kl equals torch.distributions' KL."""
    m1, m2 = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    lv1, lv2 = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(m1, (0.5 * lv1).exp()),
                                            torch.distributions.Normal(m2, (0.5 * lv2).exp()))
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), ref)
    # L_T = KL(q(x_T | x_0) || N(0, I)) is tiny for the cosine schedule: nothing to learn there
    diff = GaussianDiffusion("cosine", 1000)
    ab = diff.alphas_cumprod[-1]
    assert normal_kl(ab.sqrt() * 0.9, torch.log(1 - ab), 0.0, 0.0).item() < 1e-4


def test_simple_loss_equals_mse_by_hand():
    """Eq. (ch3-eq-simple-loss) (Ho et al. Eq. 14, Algorithm 1): mean ||target - model(x_t, t)||^2 per objective."""
    diff = GaussianDiffusion("linear", 100)
    x0, eps = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    t = torch.tensor([0, 10, 50, 99])
    model = lambda x, tt: 0.5 * x  # noqa: E731
    xt = diff.q_sample(x0, t, eps)
    torch.testing.assert_close(diff.loss(model, x0, t, eps), ((0.5 * xt - eps) ** 2).mean())
    per = diff.loss(model, x0, t, eps, reduction="none")
    assert per.shape == (4,)
    torch.testing.assert_close(per, ((0.5 * xt - eps) ** 2).flatten(1).mean(1))
    for obj, target in (("x0", x0), ("v", diff.v_from(x0, eps, t))):
        d2 = GaussianDiffusion("linear", 100, objective=obj)
        torch.testing.assert_close(d2.loss(model, x0, t, eps), ((0.5 * xt - target) ** 2).mean())


def test_loss_draws_t_uniformly_then_noise_from_the_generator():
    """Algorithm 1 of Ho et al.: t ~ Uniform{0..T-1}, then eps ~ N(0, I), both from the generator (in that order)."""
    diff = GaussianDiffusion("linear", 50)
    x0 = torch.randn(64, 3)
    model = lambda x, t: x * 0.1 + t.view(-1, 1).float() / 50  # noqa: E731
    g = torch.Generator().manual_seed(3)
    t = torch.randint(0, 50, (64,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    torch.testing.assert_close(diff.loss(model, x0, generator=torch.Generator().manual_seed(3), reduction="none"),
                               diff.loss(model, x0, t, eps, reduction="none"))
    seen = []
    big = GaussianDiffusion("linear", 4)
    for seed in range(50):
        big.loss(lambda x, tt: seen.append(tt) or x, x0, generator=torch.Generator().manual_seed(seed))
    share = torch.bincount(torch.cat(seen), minlength=4).double() / (50 * 64)
    assert share.numel() == 4 and (share - 0.25).abs().max() < 0.04   # uniform over the 4 indices


def test_min_snr_weights():
    """Eq. (ch3-eq-minsnr) (Hang et al. 2023): min(SNR, gamma) in x0 space, /SNR for eps, /(SNR+1) for v."""
    t = torch.arange(0, 1000, 37)
    for obj in ("eps", "x0", "v"):
        diff = GaussianDiffusion("cosine", 1000, objective=obj, loss_weighting="min_snr", min_snr_gamma=5)
        ab = diff.alphas_cumprod[t]
        snr = ab / (1 - ab)
        base = torch.minimum(snr, torch.tensor(5.0, dtype=torch.float64))
        expected = {"eps": base / snr, "x0": base, "v": base / (snr + 1)}[obj]
        torch.testing.assert_close(diff.loss_weights(t), expected)
    # the weighted loss equals the weight times the plain loss, example by example
    plain = GaussianDiffusion("cosine", 1000)
    weighted = GaussianDiffusion("cosine", 1000, loss_weighting="min_snr")
    x0, eps, tt = torch.randn(3, 2), torch.randn(3, 2), torch.tensor([0, 400, 999])
    model = lambda x, t_: x  # noqa: E731
    torch.testing.assert_close(weighted.loss(model, x0, tt, eps, reduction="none"),
                               plain.loss(model, x0, tt, eps, reduction="none") * weighted.loss_weights(tt).float())
    # high SNR (small t) is down-weighted below 1 for eps; low SNR keeps weight 1
    w = weighted.loss_weights(tt)
    assert w[0] < 0.01 and w[2] == 1.0


# ------------------------------------------------------------------ samplers
def test_ddim_eta1_sigma_is_ancestral_sigma():
    """Eq. (ch3-eq-ddim-sigma) (Song et al. Eq. 16): eta = 1 and adjacent steps give sigma^2 = beta~_t; eta = 0 gives 0."""
    diff = GaussianDiffusion("linear", 1000)
    t = torch.arange(1, 1000)
    torch.testing.assert_close(diff.ddim_sigma(t, t - 1, 1.0) ** 2, diff.posterior_variance[t])
    assert torch.all(diff.ddim_sigma(t, t - 1, 0.0) == 0)


def test_ddpm_equals_ddim_eta1_sample_paths():
    """Eqs. (ch3-eq-ancestral) = (ch3-eq-ddim) at eta = 1: same generator, same noise, the same path (also respaced)."""
    diff = GaussianDiffusion("cosine", 50)
    model = gaussian_eps_model(diff, 0.3, 0.5)
    for steps in (None, 10):
        a = diff.sample(model, (16, 2), sampler="ddpm", steps=steps, clip_denoised=False, progress=False,
                        generator=torch.Generator().manual_seed(1))
        b = diff.sample(model, (16, 2), sampler="ddim", eta=1.0, steps=steps, clip_denoised=False,
                        progress=False, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_ddim_eta0_is_deterministic_and_ddpm_is_not():
    """Eq. (ch3-eq-ddim) with eta = 0 adds no noise (deterministic given x_T); the ancestral sampler does."""
    diff = GaussianDiffusion("linear", 100)
    model = gaussian_eps_model(diff, 0.0, 0.5)
    xT = torch.randn(8, 3)
    outs = [diff.sample(model, (8, 3), sampler="ddim", steps=20, eta=0.0, noise=xT, progress=False,
                        generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    anc = [diff.sample(model, (8, 3), sampler="ddpm", noise=xT, progress=False,
                       generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
    assert not torch.allclose(anc[0], anc[1])


@pytest.mark.parametrize("sampler,steps,eta", [("ddpm", None, 0.0), ("ddim", 250, 0.0), ("ddim", None, 1.0)])
def test_analytic_gaussian_data_recovered_by_sampler(sampler, steps, eta):
    """Eq. (ch3-eq-gauss-opt): with the exact eps-model for x0 ~ N(mu, s^2), the samplers return N(mu, s^2)."""
    mu, s = 0.5, 0.3
    diff = GaussianDiffusion("linear", 1000)
    model = gaussian_eps_model(diff, mu, s)
    x = diff.sample(model, (4000, 2), sampler=sampler, steps=steps, eta=eta, clip_denoised=False,
                    progress=False, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert abs(x.mean().item() - mu) < 0.02
    assert abs(x.std().item() - s) < 0.02


@pytest.mark.parametrize("objective", ["x0", "v"])
def test_analytic_recovery_for_x0_and_v_objectives(objective):
    """Eqs. (ch3-eq-gauss-opt) and (ch3-eq-v): the exact model converted to x0 or v samples N(mu, s^2) too."""
    mu, s = -0.2, 0.4
    diff = GaussianDiffusion("cosine", 1000, objective=objective)
    model = as_objective(diff, gaussian_eps_model(diff, mu, s))
    x = diff.sample(model, (4000, 2), sampler="ddim", steps=250, clip_denoised=False, progress=False,
                    generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert abs(x.mean().item() - mu) < 0.03
    assert abs(x.std().item() - s) < 0.03


def test_ddim_discretisation_error_shrinks_with_steps():
    """DDIM is a first-order ODE solver: with few steps the spread is too small, and it converges."""
    mu, s = 0.5, 0.3
    diff = GaussianDiffusion("linear", 1000)
    model = gaussian_eps_model(diff, mu, s)
    xT = torch.randn(4000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    errs = [abs(diff.sample(model, (4000, 2), sampler="ddim", steps=k, clip_denoised=False, progress=False,
                            noise=xT, dtype=torch.float64).std().item() - s) for k in (10, 50, 250)]
    assert errs[0] > errs[1] > errs[2]


def test_timestep_subsequence():
    """Respacing (Nichol & Dhariwal Section 4): evenly spaced indices from T-1 down to 0, or given ones sorted."""
    assert D.timestep_subsequence(10, 10).tolist() == list(range(9, -1, -1))
    seq = D.timestep_subsequence(1000, 25)
    assert seq[0] == 999 and seq[-1] == 0 and len(seq) == 25 and torch.all(seq[1:] < seq[:-1])
    assert D.timestep_subsequence(1000, 1).tolist() == [999]
    assert D.timestep_subsequence(10, [0, 5, 9]).tolist() == [9, 5, 0]
    with pytest.raises(ValueError, match="distinct"):
        D.timestep_subsequence(10, [3, 3])


def test_hooks_model_kwargs_and_x0_transform():
    """Chapter 5's hooks: model_kwargs reach the model and x0_transform(x0, t) sees every predicted x0."""
    diff = GaussianDiffusion("linear", 20)
    seen = {"kw": 0, "tf": 0}

    def model(x, t, scale=None):
        assert scale == 2.0
        seen["kw"] += 1
        return torch.zeros_like(x)

    def x0_transform(x0, t):
        seen["tf"] += 1
        assert t.shape == (x0.shape[0],)
        return x0 * 0  # collapse everything to 0

    x = diff.sample(model, (3, 2), sampler="ddim", steps=5, model_kwargs={"scale": 2.0},
                    x0_transform=x0_transform, progress=False)
    assert seen == {"kw": 5, "tf": 5}
    torch.testing.assert_close(x, torch.zeros(3, 2))  # last step returns x0^ exactly
    x, traj = diff.sample(model, (3, 2), sampler="ddpm", model_kwargs={"scale": 2.0}, progress=False,
                          return_trajectory=True)
    assert traj["xt"].shape == (21, 3, 2) and traj["pred_x0"].shape == (20, 3, 2)


def test_bad_inputs_raise_clear_errors():
    """Bad t, noise, model outputs, samplers, eta and steps fail with messages that say what was expected."""
    diff = GaussianDiffusion("linear", 10)
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"\[0, T=10\)"):
        diff.q_sample(x, torch.tensor([0, 10]))
    with pytest.raises(ValueError, match=r"\[0, T=10\)"):
        diff.q_sample(x, -1)
    with pytest.raises(ValueError, match="integer"):
        diff.q_sample(x, torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        diff.q_sample(x, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="noise"):
        diff.q_sample(x, 1, torch.zeros(2, 4))
    bad_model = lambda xx, t: xx[:, :2]  # noqa: E731
    with pytest.raises(ValueError, match="model output has shape"):
        diff.loss(bad_model, x)
    with pytest.raises(ValueError, match="model output has shape"):
        diff.sample(bad_model, (2, 3), progress=False)
    good = lambda xx, t: torch.zeros_like(xx)  # noqa: E731
    with pytest.raises(ValueError, match="unknown sampler"):
        diff.sample(good, (2, 3), sampler="euler", progress=False)
    for eta in (-0.1, 1.5):
        with pytest.raises(ValueError, match="eta"):
            diff.sample(good, (2, 3), sampler="ddim", eta=eta, progress=False)
    for steps in (0, 11):
        with pytest.raises(ValueError, match="steps"):
            diff.sample(good, (2, 3), sampler="ddim", steps=steps, progress=False)
    with pytest.raises(ValueError, match="variance"):
        GaussianDiffusion("linear", 10, variance="learned")
    with pytest.raises(ValueError, match="loss_weighting"):
        GaussianDiffusion("linear", 10, loss_weighting="p2")
    with pytest.raises(ValueError, match=r"\[-1, T=10\)"):   # t_prev may be -1 (the clean data), not less
        diff.q_posterior(x, x, 3, -2)
    with pytest.raises(ValueError, match=r"\[0, T=10\)"):
        diff.q_posterior(x, x, -1, -1)
