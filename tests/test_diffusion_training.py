"""Chapter 3's training path and experiments: the 2-D toy, ddpm_train.fit on the one Trainer, and ddpm_images."""

import copy
import json

import pytest
import torch

from imagen_edu import ddpm_images, profiles
from imagen_edu.ddpm_train import fit
from imagen_edu.diffusion import GaussianDiffusion
from imagen_edu.data.shapes import make_batch
from imagen_edu.toy2d import ToyDenoiser, make_moons, make_swiss_roll
from imagen_edu.unet import UNet, save_unet

pytestmark = pytest.mark.usefixtures("one_thread")


def test_toy_data_and_denoiser_shapes():
    """The toy's data are 2-D points near [-1, 1]; the MLP maps (x_t (B, 2), t (B,)) to (B, 2)."""
    g = torch.Generator().manual_seed(0)
    for make in (make_moons, make_swiss_roll):
        pts = make(500, generator=g)
        assert pts.shape == (500, 2) and pts.abs().max() < 2.0
    net = ToyDenoiser()
    assert net(torch.randn(7, 2), torch.randint(0, 100, (7,))).shape == (7, 2)
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        net(torch.randn(7, 3), torch.zeros(7, dtype=torch.long))


def test_fit_learns_and_stops_on_nan():
    """Algorithm 1 through the Trainer: the loss falls on two moons; a NaN loss stops training naming the step."""
    torch.manual_seed(0)
    diff = GaussianDiffusion("cosine", 100)
    net = ToyDenoiser(hidden=32)
    data = make_moons(2048, generator=torch.Generator().manual_seed(0))
    losses = fit(net, diff, lambda s: data[torch.randint(0, 2048, (256,))], steps=150, lr=3e-3, progress=False)
    assert len(losses) == 150 and sum(losses[-20:]) / 20 < 0.8 * sum(losses[:5]) / 5
    assert not net.training

    class NaNNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, t):
            return x * self.w * float("nan")

    with pytest.raises(FloatingPointError, match="step 0"):
        fit(NaNNet(), diff, lambda s: data[:8], steps=3, progress=False)


def test_fit_step_is_the_diffusion_loss_with_t_then_noise_from_the_generator():
    """Algorithm 1: each step's loss is GaussianDiffusion.loss at t ~ U{0..T-1} and eps ~ N(0, I) drawn from the
    generator in that order, after the batch; two runs with the same seeds are identical."""
    diff = GaussianDiffusion("linear", 50, objective="v")
    data = make_moons(32, generator=torch.Generator().manual_seed(1))
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        net = ToyDenoiser(hidden=8)
        first = copy.deepcopy(net)
        runs.append(fit(net, diff, lambda s: data, steps=3, generator=torch.Generator().manual_seed(5),
                        progress=False))
    assert runs[0] == runs[1]
    g = torch.Generator().manual_seed(5)
    t = torch.randint(0, 50, (32,), generator=g)
    eps = torch.randn(data.shape, generator=g)
    assert runs[0][0] == pytest.approx(diff.loss(first, data, t, eps).item(), rel=1e-6)


@pytest.mark.parametrize("decay", [0.999, 0.3])
def test_fit_ema_keeps_decay_on_the_average(decay):
    """The EMA of chapter 3's training path: ema <- d ema + (1 - d) weights after step s, d = min(decay,
    (1 + s)/(10 + s)), starting from the initial weights. Inverting it (d on the new weights) fails here."""
    torch.manual_seed(0)
    diff = GaussianDiffusion("cosine", 50)
    net = ToyDenoiser(hidden=8, n_layers=1)
    ema = copy.deepcopy(net)
    data = make_moons(64, generator=torch.Generator().manual_seed(2))
    seen = []   # the weights at the start of each step (= after the previous one)

    def batches(step):
        seen.append({n: p.detach().clone() for n, p in net.named_parameters()})
        return data

    fit(net, diff, batches, steps=5, lr=0.05, grad_clip=None, ema=ema, ema_decay=decay, progress=False)
    weights = seen + [{n: p.detach().clone() for n, p in net.named_parameters()}]
    expected = dict(weights[0])
    for s in range(5):
        d = min(decay, (1 + s) / (10 + s))
        expected = {n: d * expected[n] + (1 - d) * weights[s + 1][n] for n in expected}
    for n, p in ema.named_parameters():
        torch.testing.assert_close(p, expected[n], rtol=1e-5, atol=1e-7)
    assert any((weights[-1][n] - weights[0][n]).abs().max() > 1e-3 for n in expected)   # the weights moved


def test_shapes_unet_config_follows_the_profile():
    """Chapter 3b's U-Net: the profile's size, width and levels, self-attention at the lowest resolution."""
    for name in ("ci", "cpu", "gpu"):
        s = profiles.get(name).diffusion
        cfg = ddpm_images.shapes_unet_config(s)
        assert (cfg.image_size, cfg.channels, cfg.channel_mults) == (s.image_size, s.unet_channels, tuple(s.unet_mults))
        assert cfg.attention_resolutions == (s.image_size // 2 ** (len(s.unet_mults) - 1),)


def test_clean_object_share_accepts_renders_and_rejects_noise():
    """The judge's share of images with one or two clean objects: about all renders, no Gaussian noise."""
    imgs, _ = make_batch(16, resolution=32, seed=3)
    assert ddpm_images.clean_object_share(imgs)["clean_1_2"] >= 0.9
    noise = ddpm_images.clean_object_share(torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    assert noise["clean_1_2"] == 0.0 and noise["n"] == 8


def test_train_shapes_returns_the_ema_model():
    """train_shapes trains through fit and returns the EMA weights (not the raw ones) with its diffusion."""
    s = profiles.get("ci").diffusion
    run = ddpm_images.train_shapes(s, steps=2, max_seconds=None, device="cpu", progress=False)
    assert run["steps"] == 2 and len(run["losses"]) == 2 and run["diffusion"].num_timesteps == s.timesteps
    assert run["model"] is not run["raw_model"] and not run["model"].training
    assert any(not torch.equal(a, b) for a, b in zip(run["model"].parameters(), run["raw_model"].parameters()))


def test_bench_cli_prints_json(tmp_path, capsys):
    """python -m imagen_edu.ddpm_images bench: one JSON row per sampler configuration, from a checkpoint."""
    s = profiles.get("ci").diffusion
    torch.manual_seed(0)
    path = save_unet(UNet(ddpm_images.shapes_unet_config(s)), tmp_path / "m.safetensors",
                     extra={"schedule": "cosine", "timesteps": 20, "objective": "v"})
    ddpm_images._main(["bench", "--checkpoint", str(path), "--n-images", "2", "--batch-size", "2",
                       "--steps", "4,2"])
    out = json.loads(capsys.readouterr().out)
    assert [(r["sampler"], r["steps"]) for r in out["results"]] == [("ddpm", 4), ("ddim", 2)]
