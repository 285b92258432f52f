"""The chapter-5 exercise checks accept the reference solutions and the package's own functions,
and reject plausible wrong answers (so a check can fail). That every reference solution passes
its check is tested for all chapters in tests/test_book_structure.py."""

from __future__ import annotations

import math

import torch

from imagen_edu import exercises, imagen, viz, widgets
from imagen_edu.exercises import ch05


def test_package_functions_pass_the_checks():
    assert ch05.check_guide(imagen.guide, verbose=False)
    assert ch05.check_dynamic_threshold(imagen.dynamic_threshold, verbose=False)
    assert ch05.check_aug_alpha_bar(lambda a: imagen.aug_alpha_bar(a), verbose=False)
    assert ch05.check_augment_lowres(lambda x, a, n: imagen.augment_lowres(x, a, noise=n), verbose=False)
    assert ch05.check_diversity(viz.sample_diversity, verbose=False)
    from imagen_edu.data import canonical_caption

    assert ch05.check_canonical(canonical_caption, verbose=False)


def test_checks_reject_wrong_answers():
    assert not ch05.check_guide(lambda c, u, w: c + w * (c - u), verbose=False)        # wrong anchor
    assert not ch05.check_guide(lambda c, u, w: w * c + u, verbose=False)
    assert not ch05.check_diversity(lambda x, k: float(x.std()), verbose=False)
    assert not ch05.check_diversity(                                                     # squared distance
        lambda x, k: float(torch.stack([((x[i] - x[j]) ** 2).sum() for i in range(k) for j in range(i + 1, k)]).mean()),
        verbose=False)
    assert not ch05.check_canonical(imagen.converse_caption, verbose=False)            # flips, does not swap
    assert not ch05.check_canonical(lambda c: c.replace("right of", "left of").replace("below", "above"),
                                    verbose=False)                                   # forgets to swap the objects
    assert not ch05.check_dynamic_threshold(lambda x, p: x.clamp(-1, 1), verbose=False)  # static only
    # one s for the whole batch instead of one per sample
    assert not ch05.check_dynamic_threshold(
        lambda x, p: x.clamp(-max(float(torch.quantile(x.abs().flatten(), p)), 1.0),
                             max(float(torch.quantile(x.abs().flatten(), p)), 1.0))
        / max(float(torch.quantile(x.abs().flatten(), p)), 1.0), verbose=False)
    assert not ch05.check_x0_from_v(lambda xt, v, ab: (xt - math.sqrt(1 - ab) * v) / math.sqrt(ab), verbose=False)
    assert not ch05.check_aug_alpha_bar(lambda a: 1 - a, verbose=False)
    assert not ch05.check_augment_lowres(lambda x, a, n: x + a.reshape(-1, 1, 1, 1) * n, verbose=False)


def test_a_crashing_answer_fails_with_its_error(capsys):
    res = ch05.check_guide(lambda c, u, w: 1 / 0)
    assert not res and "ZeroDivisionError" in res.message
    assert "FAIL" in capsys.readouterr().out


def test_sample_diversity_validates_input():
    import pytest

    with pytest.raises(ValueError, match="n_per_prompt"):
        viz.sample_diversity(torch.zeros(4, 3, 2, 2), 1)
    with pytest.raises(ValueError, match="whole number"):
        viz.sample_diversity(torch.zeros(5, 3, 2, 2), 2)
    x = torch.zeros(4, 3, 2, 2)
    x[1] = 1.0  # prompt 0: two images at distance sqrt(12); prompt 1: identical
    assert math.isclose(viz.sample_diversity(x, 2), math.sqrt(12) / 2)


def test_guidance_sweep_plot_and_widget_html():
    import matplotlib

    matplotlib.use("Agg")
    ax = viz.guidance_sweep_plot([1, 3], [0.2, 0.5], [9.0, 4.0], title="t")
    assert ax.get_title() == "t" and len(ax.texts) == 2
    html = widgets._images_html(torch.zeros(2, 3, 4, 4), ["a", "b"], scale=2)
    assert html.count("<img") == 2 and "image-rendering:pixelated" in html


def test_every_reference_solution_passes_its_check():
    """The appendix's claim for chapters 5a, 5b and 5c: each solution_X passes check_X (one per check)."""
    passed = exercises.check_solutions(ch05)
    checks = sorted(n for n in ch05.__all__ if n.startswith("check_"))
    assert sorted("check_" + n[len("solution_"):] for n in passed) == checks
    assert all(r.passed and r.attempted for r in passed.values())


def test_the_pages_stub_says_not_attempted_yet(capsys):
    """An unanswered exercise (the page's stub raises NotImplementedError) reads NOT ATTEMPTED YET,
    falsy, never FAIL and never an exception that stops the notebook, for every chapter-5 check."""
    def stub(*args, **kwargs):
        raise NotImplementedError

    for name in ch05.__all__:
        res = getattr(ch05, name)(stub)
        out = capsys.readouterr().out
        assert not res and not res.attempted and res.verdict == "NOT ATTEMPTED YET", name
        assert out.startswith("NOT ATTEMPTED YET") and "FAIL" not in out, name
