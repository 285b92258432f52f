"""One sampler step against the taught formula (chapter 3), and the sampler loop's contract.

Each step test runs :meth:`GaussianDiffusion.sample` over two indices and compares its first
state with the paper's formula written out here by hand, with the same noise ``z`` (drawn from
a generator seeded alike): Ho et al. 2020 Algorithm 2 with the posterior Eqs. (6)-(7), and Song
et al. 2021 Eq. (12) with ``sigma`` from Eq. (16), for the eps, x0 and v objectives.
"""

import math
import warnings

import pytest
import torch

from imagen_edu import diffusion as D
from imagen_edu.diffusion import GaussianDiffusion

pytestmark = pytest.mark.usefixtures("one_thread")

T, SHAPE = 100, (5, 3, 2, 2)


def net(x, t):
    """Some network output, a smooth function of (x_t, t)."""
    return torch.tanh(0.7 * x + 0.01 * t.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)) * 1.3


def by_hand_x0_eps(objective, out, x, ab):
    """x0_hat and eps_hat from the network output: Eq. (4) and Eq. (ch3-eq-v) solved by hand."""
    if objective == "eps":
        return (x - math.sqrt(1 - ab) * out) / math.sqrt(ab), out
    if objective == "x0":
        return out, (x - math.sqrt(ab) * out) / math.sqrt(1 - ab)
    return math.sqrt(ab) * x - math.sqrt(1 - ab) * out, math.sqrt(1 - ab) * x + math.sqrt(ab) * out


def first_step(diff, sampler, t, t_prev, eta=0.0, seed=5):
    """x_T, the sampler's state after its first step t -> t_prev, and the z it drew (same seed)."""
    xT = torch.randn(SHAPE, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    _, traj = diff.sample(net, SHAPE, sampler=sampler, steps=[t, t_prev], eta=eta, noise=xT, clip_denoised=False,
                          progress=False, return_trajectory=True, dtype=torch.float64,
                          generator=torch.Generator().manual_seed(seed))
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return xT, traj["xt"], z


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
@pytest.mark.parametrize("t,t_prev", [(80, 55), (30, 29)])
def test_ddpm_step_is_posterior_mean_plus_sigma_z(objective, variance, t, t_prev):
    """Eq. (ch3-eq-ancestral), Algorithm 2 of Ho et al. on the respaced pair: x_prev = mu~(x_t, x0_hat) + sigma z, with Eq. (7)'s
    mu~ and beta~ for alpha' = abar_t / abar_prev and sigma^2 = beta~ (fixed_small) or beta' (fixed_large)."""
    diff = GaussianDiffusion("cosine", T, objective=objective, variance=variance)
    xT, states, z = first_step(diff, "ddpm", t, t_prev)
    ab, abp = diff.alphas_cumprod[t].item(), diff.alphas_cumprod[t_prev].item()
    a, b = ab / abp, 1 - ab / abp
    x0_hat, _ = by_hand_x0_eps(objective, net(xT, torch.full((5,), t)), xT, ab)
    mean = math.sqrt(abp) * b / (1 - ab) * x0_hat + math.sqrt(a) * (1 - abp) / (1 - ab) * xT
    var = (1 - abp) / (1 - ab) * b if variance == "fixed_small" else b
    torch.testing.assert_close(states[1], mean + math.sqrt(var) * z)
    # the step function itself, called as the sampler calls it
    tt, tp = torch.full((5,), t), torch.full((5,), t_prev)
    torch.testing.assert_close(diff.ddpm_step(x0_hat, xT, tt, tp, z), mean + math.sqrt(var) * z)
    # the last step (to the clean data) adds no noise and returns the posterior mean there, x0_hat
    x_prev = states[1]
    x0_last, _ = by_hand_x0_eps(objective, net(x_prev, torch.full((5,), t_prev)), x_prev,
                                diff.alphas_cumprod[t_prev].item())
    torch.testing.assert_close(states[2], x0_last)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_ddim_step_is_eq12_plus_sigma_z(objective, eta):
    """Eq. (ch3-eq-ddim) (Song et al. Eq. 12): x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z,
    sigma = eta sqrt((1 - abar_prev)/(1 - abar_t)) sqrt(1 - abar_t/abar_prev) (Eq. 16); z only when eta > 0."""
    t, t_prev = 90, 40
    diff = GaussianDiffusion("linear", T, objective=objective)
    xT, states, z = first_step(diff, "ddim", t, t_prev, eta)
    ab, abp = diff.alphas_cumprod[t].item(), diff.alphas_cumprod[t_prev].item()
    sigma = eta * math.sqrt((1 - abp) / (1 - ab)) * math.sqrt(1 - ab / abp)
    x0_hat, eps_hat = by_hand_x0_eps(objective, net(xT, torch.full((5,), t)), xT, ab)
    expected = math.sqrt(abp) * x0_hat + math.sqrt(1 - abp - sigma ** 2) * eps_hat + sigma * z
    torch.testing.assert_close(states[1], expected)
    tt, tp = torch.full((5,), t), torch.full((5,), t_prev)
    torch.testing.assert_close(diff.ddim_step(x0_hat, eps_hat, tt, tp, eta, z if eta > 0 else None), expected)
    assert (eta > 0) == (not torch.allclose(diff.ddim_step(x0_hat, eps_hat, tt, tp, eta, None), expected))


def test_ddim_eta1_step_equals_ddpm_step_with_the_same_noise():
    """Song et al. Section 4.1: with eta = 1 the DDIM step is the ancestral step of the same pair (fixed_small)."""
    diff = GaussianDiffusion("cosine", T)
    x0_hat, eps_hat = torch.randn(SHAPE, dtype=torch.float64), torch.randn(SHAPE, dtype=torch.float64)
    z = torch.randn(SHAPE, dtype=torch.float64)
    t, tp = torch.full((5,), 70), torch.full((5,), 20)
    ab = diff.alphas_cumprod[70].item()
    xt = math.sqrt(ab) * x0_hat + math.sqrt(1 - ab) * eps_hat
    torch.testing.assert_close(diff.ddim_step(x0_hat, eps_hat, t, tp, 1.0, z), diff.ddpm_step(x0_hat, xt, t, tp, z))


def test_ddpm_step_shares_p_mean_variance():
    """Eq. (ch3-eq-reverse-mean): the sampler's step mean is p_mean_variance's mean (one code path), also respaced."""
    diff = GaussianDiffusion("cosine", T, objective="v")
    x = torch.randn(SHAPE, dtype=torch.float64)
    for t_i, t_prev_i in ((60, 59), (60, 10), (5, -1)):
        t, tp = torch.full((5,), t_i), torch.full((5,), t_prev_i)
        p = diff.p_mean_variance(net, x, t, tp, clip_denoised=True)
        torch.testing.assert_close(diff.ddpm_step(p["pred_x0"], x, t, tp), p["mean"])
        z = torch.randn(SHAPE, dtype=torch.float64)
        torch.testing.assert_close(diff.ddpm_step(p["pred_x0"], x, t, tp, z), p["mean"] + p["variance"].sqrt() * z)


def test_clipping_goes_through_static_threshold(monkeypatch):
    """Chapter 3's clip of x0_hat to [-1, 1] is thresholding.static_threshold, and eps_hat is re-derived from it."""
    calls = []

    def spy(x0):
        calls.append(x0.shape)
        return x0.clamp(-1, 1)

    monkeypatch.setattr(D, "static_threshold", spy)
    diff = GaussianDiffusion("linear", T)
    xT = 3 * torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    _, traj = diff.sample(lambda x, t: -x, SHAPE, sampler="ddim", steps=[70, 30], noise=xT, progress=False,
                          return_trajectory=True, dtype=torch.float64)
    assert len(calls) == 2
    ab, abp = diff.alphas_cumprod[70].item(), diff.alphas_cumprod[30].item()
    x0 = ((xT + math.sqrt(1 - ab) * xT) / math.sqrt(ab)).clamp(-1, 1)
    eps = (xT - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
    torch.testing.assert_close(traj["xt"][1], math.sqrt(abp) * x0 + math.sqrt(1 - abp) * eps)
    diff.sample(lambda x, t: -x, SHAPE, sampler="ddim", steps=[70, 30], noise=xT, progress=False,
                clip_denoised=False)
    assert len(calls) == 2   # clip_denoised=False does not clip


@pytest.mark.parametrize("sampler,eta,draws", [("ddpm", 0.0, 4), ("ddim", 0.0, 0), ("ddim", 0.5, 4)])
def test_noise_is_drawn_only_where_a_step_uses_it(sampler, eta, draws):
    """Algorithm 2's z = 0 at the last step, and no z at all for DDIM with eta = 0: the generator advances by
    x_T plus one draw per noisy step, so the cascade's later draws from the same generator stay put."""
    diff = GaussianDiffusion("linear", T)
    g = torch.Generator().manual_seed(4)
    diff.sample(net, SHAPE, sampler=sampler, steps=5, eta=eta, generator=g, progress=False)
    ref = torch.Generator().manual_seed(4)
    for _ in range(1 + draws):
        torch.randn(SHAPE, generator=ref)
    assert torch.equal(torch.randn(3, generator=g), torch.randn(3, generator=ref))


def test_non_finite_samples_are_caught_and_the_first_bad_step_named():
    """The finite check runs once after the loop (no per-step sync) but still names the first bad timestep."""
    diff = GaussianDiffusion("linear", T)

    def bad(x, t):
        return torch.where(t.view(-1, 1) <= 40, torch.full_like(x, float("nan")), torch.zeros_like(x))

    with pytest.raises(FloatingPointError, match=r"timestep index 38 \(step 4 of 5\)"):
        diff.sample(bad, (2, 3), sampler="ddim", steps=[90, 60, 50, 38, 0], clip_denoised=False, progress=False)


def test_loss_reads_no_device_value():
    """No host-device sync in the loss: it runs on the meta device, where reading any value (int(t.min()),
    t.cpu(), .item()) raises; t and eps are drawn from the CPU generator and sent without waiting."""
    for weighting in (None, "min_snr"):
        diff = GaussianDiffusion("cosine", 50, objective="v", loss_weighting=weighting)
        x0 = torch.zeros(4, 3, 2, 2, device="meta")
        loss = diff.loss(lambda x, t: 0.5 * x, x0, generator=torch.Generator().manual_seed(0))
        assert loss.device.type == "meta" and loss.shape == ()


@pytest.mark.parametrize("sampler,eta", [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 1.0)])
def test_sampler_loop_reads_no_device_value_before_the_end(sampler, eta):
    """No host-device sync inside the sampler loop: on the meta device every step runs (thresholding included)
    and the only read is the finite check after the last step."""
    diff = GaussianDiffusion("cosine", 50)
    calls = []

    def model(x, t):
        calls.append(int(t.numel()))
        return 0.5 * x

    with pytest.raises(RuntimeError, match="meta"):
        diff.sample(model, (4, 3, 2, 2), sampler=sampler, steps=6, eta=eta, device="meta", progress=False,
                    generator=torch.Generator().manual_seed(0))
    assert len(calls) == 6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_loss_and_sampler_steps_do_not_synchronise():
    """On a GPU: torch's sync debug mode sees no synchronising call in the loss, and a single one (the final
    finite check) in a 20-step sample."""
    diff = GaussianDiffusion("cosine", 100, objective="v", loss_weighting="min_snr")
    x0 = torch.randn(8, 3, 8, 8, device="cuda")
    model = lambda x, t: 0.5 * x  # noqa: E731
    diff.loss(model, x0, generator=torch.Generator().manual_seed(0))          # warm the device tables
    diff.sample(model, x0.shape, steps=2, progress=False, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            diff.loss(model, x0, generator=torch.Generator().manual_seed(1))
            n_loss = len(w)
            diff.sample(model, x0.shape, sampler="ddim", steps=20, eta=0.5, progress=False, device="cuda",
                        generator=torch.Generator().manual_seed(2))
            n_sample = len(w) - n_loss
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert n_loss == 0
    assert n_sample <= 1
