"""The ELBO of chapter 3, derived on the page, checked against imagen_edu.diffusion: the posterior by
completing the square, the telescoping of the path log-ratio into L_T + sum L_{t-1} + L_0 (Ho et
al. 2020, Eq. 5), Jensen's bound, and the KL of two Gaussians with one variance."""

import math

import pytest
import torch

from imagen_edu.diffusion import GaussianDiffusion, normal_kl

T = 20


def log_normal(x, mean, var):
    """log N(x; mean, var) of (n, d) tensors, summed over d -> (n,)."""
    return (-0.5 * ((x - mean) ** 2 / var + torch.log(2 * math.pi * var))).sum(1)


@pytest.fixture(scope="module", params=["cosine", "linear"])
def d(request):
    return GaussianDiffusion(request.param, T)


def test_posterior_is_the_completed_square(d):
    """Eq. (ch3-eq-square) -> (ch3-eq-posterior), Ho et al. Eqs. 6-7: q(x_{t-1}|x_t,x_0) has precision
    A = alpha/beta + 1/(1 - abar_{t-1}) = (1 - abar_t)/(beta (1 - abar_{t-1})) and mean b/A with
    b = sqrt(alpha)/beta x_t + sqrt(abar_{t-1})/(1 - abar_{t-1}) x_0."""
    g = torch.Generator().manual_seed(0)
    x0, xt = torch.randn(T - 1, 3, generator=g, dtype=torch.float64), torch.randn(T - 1, 3, generator=g, dtype=torch.float64)
    t = torch.arange(1, T)
    a, b, abp = (v[t].view(-1, 1) for v in (d.alphas, d.betas, d.alphas_cumprod_prev))
    A = a / b + 1 / (1 - abp)
    lin = a.sqrt() / b * xt + abp.sqrt() / (1 - abp) * x0
    mean, var = d.q_posterior(x0, xt, t)
    torch.testing.assert_close(var, 1 / A)
    torch.testing.assert_close(mean, lin / A)
    torch.testing.assert_close(A, (1 - d.alphas_cumprod[t].view(-1, 1)) / (b * (1 - abp)))


def paths_and_terms(d, eps_model, x0_val=0.5, n=500, seed=0):
    """Forward paths x_1..x_T ~ q(.|x_0) and, per path, both sides of Eq. (ch3-eq-telescope)."""
    path = [torch.full((n, 1), x0_val, dtype=torch.float64)]
    gen = torch.Generator().manual_seed(seed)
    for t in range(T):
        path.append(d.q_step(path[-1], t, generator=gen))
    one = torch.tensor(1.0, dtype=torch.float64)
    log_q = sum(log_normal(path[i], d.alphas[i - 1].sqrt() * path[i - 1], d.betas[i - 1]) for i in range(1, T + 1))
    log_p = log_normal(path[T], 0.0, one)
    steps, kls = 0.0, 0.0
    for i in range(T, 0, -1):
        p = d.p_mean_variance(eps_model, path[i], i - 1, clip_denoised=False)
        lp = log_normal(path[i - 1], p["mean"], p["log_variance"].exp())
        log_p = log_p + lp
        if i >= 2:
            qm, qv = d.q_posterior(path[0], path[i], i - 1)
            steps = steps + log_normal(path[i - 1], qm, qv) - lp
            kls = kls + normal_kl(qm, qv.log(), p["mean"], p["log_variance"]).sum(1)
        else:
            L0 = -lp
    qT_m, qT_v = d.alphas_cumprod[T - 1].sqrt() * x0_val, 1 - d.alphas_cumprod[T - 1]
    LT_path = log_normal(path[T], qT_m, qT_v) - log_normal(path[T], 0.0, one)
    LT = float(normal_kl(qT_m, math.log(qT_v), 0.0, 0.0))
    return log_q - log_p, LT_path + steps + L0, LT + float(kls.mean()) + float(L0.mean())


def exact_log_likelihood(d, eps_model, x0_val):
    """log p_theta(x_0) of a reverse chain whose mean is affine in x_t: carry mean and variance down."""
    m, v = torch.zeros(1, 1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64)
    for i in range(T, 0, -1):
        mv = d.p_mean_variance(eps_model, torch.tensor([[0.0], [1.0]], dtype=torch.float64), i - 1, clip_denoised=False)
        c, off = mv["mean"][1] - mv["mean"][0], mv["mean"][0]
        m, v = c * m + off, c ** 2 * v + mv["log_variance"][0].exp()
    return float(log_normal(torch.tensor([[x0_val]], dtype=torch.float64), m, v))


def ideal(d, x0_val, scale):
    ab = lambda t: d.alphas_cumprod[t].view(-1, 1)  # noqa: E731
    return lambda x, t: scale * (x - ab(t).sqrt() * x0_val) / (1 - ab(t)).sqrt()


def test_path_log_ratio_telescopes_into_the_kl_terms(d):
    """Eq. (ch3-eq-telescope), the step behind Ho et al. Eq. 5 (Sohl-Dickstein et al. 2015): with the
    forward steps Bayes-reversed by q_posterior, log q(x_{1:T}|x_0) / p(x_{0:T}) equals, on every path,
    log q(x_T|x_0)/p(x_T) + sum_{t>=2} log q(x_{t-1}|x_t,x_0)/p(x_{t-1}|x_t) - log p(x_0|x_1)."""
    lhs, rhs, _ = paths_and_terms(d, ideal(d, 0.5, 0.8))
    torch.testing.assert_close(lhs, rhs, rtol=1e-9, atol=1e-8)


def test_jensen_bound_and_its_gap(d):
    """Eq. (ch3-eq-jensen): log p(x_0) >= -L; the gap is KL(q(x_{1:T}|x_0) || p(x_{1:T}|x_0)), which
    for the ideal noise guess reduces to L_T (about 0), and is large for a poor guess."""
    for scale, tight in ((1.0, True), (0.8, False)):
        model = ideal(d, 0.5, scale)
        _, _, L = paths_and_terms(d, model)
        log_lik = exact_log_likelihood(d, model, 0.5)
        assert -L <= log_lik + 1e-9
        if tight:
            LT = float(normal_kl(d.alphas_cumprod[T - 1].sqrt() * 0.5, math.log(1 - d.alphas_cumprod[T - 1]), 0.0, 0.0))
            assert log_lik + L == pytest.approx(LT, abs=1e-6)
        else:
            assert log_lik + L > 0.1


def test_kl_of_gaussians_with_one_variance_is_a_squared_distance():
    """Eq. (ch3-eq-kl-same-var): KL(N(m1, s^2) || N(m2, s^2)) = (m1 - m2)^2 / (2 s^2); and normal_kl is
    torch.distributions' KL for any two variances."""
    g = torch.Generator().manual_seed(1)
    m1, m2, lv1, lv2 = (torch.randn(7, generator=g, dtype=torch.float64) for _ in range(4))
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv1), (m1 - m2) ** 2 / (2 * lv1.exp()))
    N = torch.distributions.Normal
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2),
                               torch.distributions.kl_divergence(N(m1, (lv1 / 2).exp()), N(m2, (lv2 / 2).exp())))
