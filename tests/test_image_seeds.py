"""A seed fixes each image: per-image seeds, per-row generators, batch-by-batch sampling (chapter 5).

Image ``(line, k)`` of :meth:`ImagenCascade.sample_batches` / :meth:`ImagenCascade.sample` is drawn
from its own generators (``image_seed(seed, line, k)``, one per stage), so the batch size, the
number of samples per prompt and the images skipped never change it. Below the diffusion module's
per-row generators: a sequence of ``B`` generators draws row ``r`` from generator ``r`` alone,
and one generator keeps the old single draw bit for bit.

The cascade here is tiny and untrained (the ``ci`` configs, weights perturbed so that the output
depends on the input), built in the test so that it runs in seconds.

**Tolerances.** Where the same computation runs on batches of different sizes (the U-Net's convs,
attention, group norms), the CPU's batched kernels may round differently in the last bits from
one batch size to another (a reader's CPU is not CI's), so those images are compared with
``atol = 1e-5`` on values in [-1, 1]: about 100 float32 ulps, far below the O(1) difference
that noise from another generator makes. Where the computation is the same per row (elementwise
toy models, the noise itself), the comparison is exact.
"""

import hashlib

import pytest
import torch

from imagen_edu import imagen as im
from imagen_edu.cascade import ImagenCascade, image_seed, stage_seed
from imagen_edu.diffusion import GaussianDiffusion, gaussian_noise, random_timesteps
from imagen_edu.noise_augmentation import augment_lowres

#: batched kernels may differ in the last bits between batch sizes (module docstring)
ATOL = 1e-5

PROMPTS = ["a red circle", "a blue square left of a green circle"]


@pytest.fixture(scope="module")
def encoder():
    return im.get_text_encoder(im.stage_config("base", "ci").text_encoder)


@pytest.fixture(scope="module")
def cascade(encoder):
    torch.manual_seed(0)
    stages = []
    for name in ("base", "sr1"):
        st = im.ImagenStage(im.stage_config(name, "ci", text_dim=encoder.dim)).eval()
        with torch.no_grad():   # the U-Net's output layer starts at zero: perturb it so predictions depend on x
            for p in st.parameters():
                p.add_(0.05 * torch.randn_like(p))
        stages.append(st)
    return ImagenCascade(encoder, stages)


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


# ------------------------------------------------------------------ image_seed
def test_image_seed_is_the_documented_stable_hash():
    """Detail: ``image_seed(seed, line, k)`` is sha256("imagen_edu image {seed} {line} {k}"), its first
    8 bytes big-endian shifted right one bit, in [0, 2**63): stable across machines and runs (no
    Python ``hash()``), and every argument counts (order included)."""
    want = int.from_bytes(hashlib.sha256(b"imagen_edu image 7 3 2").digest()[:8], "big") >> 1
    assert image_seed(7, 3, 2) == want
    seeds = {image_seed(s, line, k) for s in (0, 1) for line in range(4) for k in range(4)}
    assert len(seeds) == 32 and all(0 <= z < 2 ** 63 for z in seeds)
    assert image_seed(0, 1, 2) != image_seed(0, 2, 1)
    assert image_seed(2 ** 63 - 1, 0, 0) < 2 ** 63
    s0 = image_seed(5, 0, 0)
    assert stage_seed(s0, 0) != stage_seed(s0, 1) and 0 <= stage_seed(s0, 1) < 2 ** 63
    want = int.from_bytes(hashlib.sha256(f"imagen_edu stage {s0} 1".encode()).digest()[:8], "big") >> 1
    assert stage_seed(s0, 1) == want


@pytest.mark.parametrize("args, err", [((1.7, 0, 0), TypeError), ((True, 0, 0), TypeError), ((-1, 0, 0), ValueError),
                                       ((2 ** 63, 0, 0), ValueError), ((0, -1, 0), ValueError),
                                       ((0, 0, 1.0), TypeError), (("0", 0, 0), TypeError)])
def test_image_seed_refuses_what_is_no_seed(args, err):
    """Detail: a float seed (1.7) is a TypeError, never silently 1; seeds lie in [0, 2**63)."""
    with pytest.raises(err):
        image_seed(*args)


# ------------------------------------------------------------------ per-row generators in the diffusion module
def test_one_generator_draws_as_before_and_a_sequence_draws_row_by_row():
    """Detail: one ``torch.Generator`` is one ``torch.randn`` draw of the whole shape (the shipped
    figures depend on it, bit for bit); a sequence of B generators draws row r from generator r
    with shape ``shape[1:]``."""
    one = gaussian_noise((3, 2, 4), torch.Generator().manual_seed(5))
    assert torch.equal(one, torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(5)))
    rows = gaussian_noise((3, 2, 4), gens(10, 11, 12))
    for r, s in enumerate((10, 11, 12)):
        assert torch.equal(rows[r], torch.randn(2, 4, generator=torch.Generator().manual_seed(s)))
    t = random_timesteps(100, 2, gens(1, 2))
    assert t.dtype == torch.long and t.shape == (2,)
    assert int(t[1]) == int(torch.randint(0, 100, (1,), generator=torch.Generator().manual_seed(2)))
    with pytest.raises(ValueError, match="one per row"):
        gaussian_noise((3, 2), gens(1, 2))
    with pytest.raises(TypeError, match="generator"):
        gaussian_noise((2, 2), [torch.Generator(), 3])
    with pytest.raises(TypeError, match="generator"):
        gaussian_noise((2, 2), 3)


@pytest.mark.parametrize("sampler, eta", [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 0.5)])
def test_diffusion_sample_row_depends_only_on_its_generator(sampler, eta):
    """Detail: with per-row generators, row r of ``GaussianDiffusion.sample`` (x_T and every step's
    noise) is what a batch of that row alone gives: exactly, for an elementwise model."""
    d = GaussianDiffusion("cosine", 50, objective="eps")
    model = lambda x, t: 0.3 * x  # noqa: E731 - elementwise: the same computation per row
    both = d.sample(model, (2, 3, 4, 4), sampler=sampler, eta=eta, steps=10, generator=gens(1, 2), progress=False)
    alone = d.sample(model, (1, 3, 4, 4), sampler=sampler, eta=eta, steps=10, generator=gens(2), progress=False)
    assert torch.equal(both[1:], alone)
    other = d.sample(model, (2, 3, 4, 4), sampler=sampler, eta=eta, steps=10, generator=gens(1, 3), progress=False)
    assert torch.equal(both[0], other[0]) and not torch.allclose(both[1], other[1])
    # one generator: x_T is one draw of the whole shape, as before
    if sampler == "ddim" and eta == 0:
        g = d.sample(model, (2, 3, 4, 4), sampler=sampler, steps=10, generator=torch.Generator().manual_seed(1),
                     progress=False)
        ref = d.sample(model, (2, 3, 4, 4), sampler=sampler, steps=10, progress=False,
                       noise=torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1)))
        assert torch.equal(g, ref)


def test_forward_process_and_loss_take_per_row_generators():
    """Detail: ``q_sample``, ``q_step`` and ``loss`` (its t and noise) accept one generator per row:
    row r is drawn from generator r alone (Eq. (4) of Ho et al. per row)."""
    d = GaussianDiffusion("linear", 100)
    x0 = torch.randn(2, 3, 4, 4)
    a = d.q_sample(x0, torch.tensor([10, 50]), generator=gens(1, 2))
    b = d.q_sample(x0[1:], torch.tensor([50]), generator=gens(2))
    assert torch.equal(a[1:], b)
    a = d.q_step(x0, torch.tensor([3, 4]), generator=gens(1, 2))
    assert torch.equal(a[:1], d.q_step(x0[:1], torch.tensor([3]), generator=gens(1)))
    model = lambda x, t: 0.5 * x  # noqa: E731
    la = d.loss(model, x0, generator=gens(4, 5), reduction="none")
    lb = d.loss(model, x0[1:], generator=gens(5), reduction="none")
    assert torch.equal(la[1:], lb)


def test_augment_lowres_takes_per_row_generators():
    """Detail: noise-conditioning augmentation (Eq. (ch5-eq-nca)) draws row r's eps from generator r."""
    low = torch.rand(2, 3, 8, 8) * 2 - 1
    a = augment_lowres(low, 0.3, generator=gens(1, 2))
    b = augment_lowres(low[1:], 0.3, generator=gens(2))
    assert torch.equal(a[1:], b)
    one = augment_lowres(low, 0.3, generator=torch.Generator().manual_seed(1))
    want = augment_lowres(low, 0.3, noise=torch.randn(low.shape, generator=torch.Generator().manual_seed(1)))
    assert torch.equal(one, want)


def test_stage_sample_row_depends_only_on_its_generator(cascade, encoder):
    """Detail: an SR stage's sample (its augmentation noise, x_T and steps) with per-row generators:
    row r is what row r alone gives (to the batched kernels' rounding, ATOL)."""
    sr = cascade.stages[1]
    emb, mask = cascade.encode(PROMPTS)
    low = torch.rand(2, 3, 8, 8) * 2 - 1
    both = sr.sample(emb, mask, lowres=low, steps=3, sampler="ddpm", generator=gens(1, 2))
    alone = sr.sample(emb[1:], mask[1:], lowres=low[1:], steps=3, sampler="ddpm", generator=gens(2))
    torch.testing.assert_close(both[1:], alone, atol=ATOL, rtol=0)
    other = sr.sample(emb, mask, lowres=low, steps=3, sampler="ddpm", generator=gens(1, 3))
    assert (both[1] - other[1]).abs().max() > 0.05


# ------------------------------------------------------------------ the cascade
@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_batch_size_does_not_change_the_images(cascade, sampler):
    """Detail: a batch size is a speed setting: the same seed gives the same images for
    batch_size 1, 3 and 256 (to the batched kernels' rounding, ATOL; see the module docstring)."""
    runs = {bs: cascade.sample(PROMPTS, n=2, steps=3, seed=11, sampler=sampler, batch_size=bs, progress=False)
            for bs in (1, 3, 256)}
    assert runs[256].shape == (4, 3, 16, 16)
    for bs in (1, 3):
        torch.testing.assert_close(runs[bs], runs[256], atol=ATOL, rtol=0)
    assert torch.equal(runs[256], cascade.sample(PROMPTS, n=2, steps=3, seed=11, sampler=sampler, progress=False))


def test_sample_k_of_a_prompt_is_the_same_for_any_n(cascade):
    """Detail: sample k of a prompt depends on (seed, line, k) only: n=1 gives sample 0 of n=3."""
    one = cascade.sample(PROMPTS, n=1, steps=3, seed=4, progress=False)
    three = cascade.sample(PROMPTS, n=3, steps=3, seed=4, progress=False)
    torch.testing.assert_close(three[0::3], one, atol=ATOL, rtol=0)
    # and the samples of one prompt are different images
    assert (three[0] - three[1]).abs().max() > 0.05


def test_different_seeds_give_different_images(cascade):
    """Detail: the seed reaches every image: seeds 0 and 1 differ in every image."""
    a = cascade.sample(PROMPTS, n=2, steps=3, seed=0, progress=False)
    b = cascade.sample(PROMPTS, n=2, steps=3, seed=1, progress=False)
    assert all((a[i] - b[i]).abs().max() > 0.05 for i in range(4))


def test_sample_batches_yields_keys_and_skip_leaves_out_exactly_those(cascade):
    """Detail: ``sample_batches`` yields ``(keys, images)`` per batch, prompt-major, images float on the
    CPU in [-1, 1]; ``skip(line, k)`` leaves those images out and does not change the others."""
    full = cascade.sample(PROMPTS, n=3, steps=3, seed=2, progress=False)
    batches = list(cascade.sample_batches(PROMPTS, n=3, steps=3, seed=2, batch_size=4, progress=False))
    assert [len(keys) for keys, _ in batches] == [4, 2]
    keys = [key for ks, _ in batches for key in ks]
    assert keys == [(line, k) for line in range(2) for k in range(3)]
    for ks, imgs in batches:
        assert imgs.shape == (len(ks), 3, 16, 16) and imgs.dtype == torch.float32 and imgs.device.type == "cpu"
        assert imgs.abs().max() <= 1
    torch.testing.assert_close(torch.cat([imgs for _, imgs in batches]), full, atol=ATOL, rtol=0)

    skipped = {(0, 1), (1, 0), (1, 2)}
    seen = []
    for ks, imgs in cascade.sample_batches(PROMPTS, n=3, steps=3, seed=2, batch_size=2, progress=False,
                                           skip=lambda line, k: (line, k) in skipped):
        for (line, k), img in zip(ks, imgs):
            seen.append((line, k))
            torch.testing.assert_close(img, full[line * 3 + k], atol=ATOL, rtol=0)
    assert seen == [(0, 0), (0, 2), (1, 1)]
    assert list(cascade.sample_batches(PROMPTS, n=3, steps=3, seed=2, skip=lambda line, k: True,
                                       progress=False)) == []


def test_return_stages_still_gives_every_stage(cascade):
    """Detail: ``sample(return_stages=True)`` returns every stage's output, built from the same batches."""
    final, each = cascade.sample(PROMPTS, n=1, steps=2, seed=3, batch_size=1, progress=False, return_stages=True)
    assert [tuple(x.shape) for x in each] == [(2, 3, 8, 8), (2, 3, 16, 16)] and torch.equal(final, each[-1])


def test_stage_training_loss_takes_per_row_generators(cascade, encoder):
    """Detail: an SR stage's training loss (text dropout, augmentation level and noise, t, eps)
    drawn with one generator per row: row r's loss is what row r alone gives (ATOL: batched kernels)."""
    sr = cascade.stages[1]
    emb, mask = cascade.encode(PROMPTS)
    x0, low = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        both = sr.diffusion.loss(sr, x0, generator=gens(1, 2), reduction="none",
                                 model_kwargs={"text_emb": emb, "text_mask": mask, "lowres": low,
                                               "lowres_noise_level": torch.full((2,), 0.2)})
        alone = sr.diffusion.loss(sr, x0[1:], generator=gens(2), reduction="none",
                                  model_kwargs={"text_emb": emb[1:], "text_mask": mask[1:], "lowres": low[1:],
                                                "lowres_noise_level": torch.full((1,), 0.2)})
        torch.testing.assert_close(both[1:], alone, atol=ATOL, rtol=0)
        a = sr.training_loss(x0, emb, mask, lowres=low, generator=gens(3, 4))
        b = sr.training_loss(x0, emb, mask, lowres=low, generator=gens(3, 4))
        assert torch.equal(a, b) and torch.isfinite(a)
        one = sr.training_loss(x0, emb, mask, lowres=low, generator=torch.Generator().manual_seed(3))
        assert torch.equal(one, sr.training_loss(x0, emb, mask, lowres=low, generator=torch.Generator().manual_seed(3)))
