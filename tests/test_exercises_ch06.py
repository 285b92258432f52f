"""The chapter-6 exercise checks accept the reference solutions and the package's own functions,
and reject plausible wrong answers (so a check can fail). That every reference solution passes
its check is tested for all chapters in tests/test_book_structure.py."""

from __future__ import annotations

import math

import torch

from imagen_edu import exercises, optim
from imagen_edu.exercises import ch06


def test_package_functions_pass_the_checks():
    assert ch06.check_lr_at(lambda s, b, w, t, r: optim.lr_at(s, base_lr=b, warmup_steps=w, total_steps=t,
                                                               min_lr_ratio=r), verbose=False)
    assert ch06.check_conv_params(
        lambda ci, co, k, bias=True: sum(p.numel() for p in torch.nn.Conv2d(ci, co, k, bias=bias).parameters()),
        verbose=False)


def test_checks_reject_wrong_answers():
    # warm-up that starts at 0 instead of base_lr / warmup (off by one)
    assert not ch06.check_lr_at(lambda s, b, w, t, r: ch06.solution_lr_at(s, b, w, t, r) if s >= w else b * s / w,
                                verbose=False)
    # cosine that decays to 0 instead of min_lr_ratio * base_lr
    assert not ch06.check_lr_at(lambda s, b, w, t, r: ch06.solution_lr_at(s, b, w, t, 0.0), verbose=False)
    assert not ch06.check_mfu(lambda f, dt, peak: f / dt / peak, verbose=False)           # units
    assert not ch06.check_mfu(lambda f, dt, peak: 100 * f / dt / (peak * 1e12), verbose=False)  # percent
    assert not ch06.check_ema_update(lambda e, w, d: d * w + (1 - d) * e, verbose=False)  # weights swapped
    assert not ch06.check_conv_params(lambda ci, co, k, bias=True: ci * co * k * k, verbose=False)  # no bias
    assert not ch06.check_conv_params(lambda ci, co, k, bias=True: co * (ci * k * k + 1), verbose=False)  # bias ignored


def test_a_crashing_answer_fails_with_its_error(capsys):
    res = ch06.check_mfu(lambda f, dt, peak: 1 / 0)
    assert not res and "ZeroDivisionError" in res.message
    assert "FAIL" in capsys.readouterr().out


def test_mfu_solution_on_the_h200_measurement():
    """The solution reproduces the MFU that bench wrote for the paper's base model on the H200."""
    import json
    from pathlib import Path

    rec = json.loads((Path(__file__).resolve().parents[1] / "data/benchmarks/h200-2026-11-26/paper_bf16.json")
                     .read_text())["stages"]["paper/base64"]
    mfu = ch06.solution_mfu(rec["flops_per_step"], rec["step_seconds"], rec["peak_tflops"])
    assert math.isclose(mfu, rec["mfu"], abs_tol=5e-4)


def test_every_reference_solution_passes_its_check():
    """The appendix's claim for chapter 6: each solution_X passes check_X (one per check)."""
    passed = exercises.check_solutions(ch06)
    checks = sorted(n for n in dir(ch06) if n.startswith("check_"))
    assert sorted("check_" + n[len("solution_"):] for n in passed) == checks
    assert all(r.passed and r.attempted for r in passed.values())


def test_the_pages_stub_says_not_attempted_yet(capsys):
    """An unanswered exercise (the page's stub raises NotImplementedError) reads NOT ATTEMPTED YET,
    falsy, never FAIL and never an exception that stops the notebook, for every chapter-6 check."""
    def stub(*args, **kwargs):
        raise NotImplementedError

    for name in (n for n in dir(ch06) if n.startswith("check_")):
        res = getattr(ch06, name)(stub)
        out = capsys.readouterr().out
        assert not res and not res.attempted and res.verdict == "NOT ATTEMPTED YET", name
        assert out.startswith("NOT ATTEMPTED YET") and "FAIL" not in out, name
