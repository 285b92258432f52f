"""The chapter-2b exercise checks pass the reference solutions and fail wrong ones with a useful hint."""

import torch

from imagen_edu import exercises
from imagen_edu.exercises import ch02b
from imagen_edu.probe import fit_logistic
from imagen_edu.t5 import span_corruption


def stub(*args):
    raise NotImplementedError


def test_reference_solutions_pass():
    passed = exercises.check_solutions(ch02b)
    assert set(passed) == {"solution_span_corruption", "solution_position_bucket", "solution_logistic_probe"}


def test_stubs_are_not_attempted_and_do_not_raise(capsys):
    for check in (ch02b.check_span_corruption, ch02b.check_position_bucket, ch02b.check_logistic_probe):
        res = check(stub)
        assert not res and "not attempted" in res.message
    assert capsys.readouterr().out.count("FAIL") == 3


def test_span_corruption_check_follows_the_package_format():
    """T5's target format (Raffel et al. Section 3.1.4): each span after its own sentinel, in order, and
    one closing sentinel. The reference reproduces span_corruption's output from the spans it dropped,
    and the check fails a version that reuses one sentinel or drops the closing one."""
    s = list(range(90, 98))
    g = torch.Generator().manual_seed(3)
    toks = list(range(10, 22))
    inp, tgt = span_corruption(toks, s, noise_density=0.4, mean_span_length=1.5, generator=g)
    spans = ch02b._spans_from_targets(toks, inp, tgt, s)
    assert ch02b.solution_span_corruption(toks, spans, s) == (inp, tgt)

    def same_sentinel(tokens, spans, sentinels):
        i, t = ch02b.solution_span_corruption(tokens, spans, sentinels)
        return [sentinels[0] if x in sentinels else x for x in i], [sentinels[0] if x in sentinels else x for x in t]

    def no_closing(tokens, spans, sentinels):
        i, t = ch02b.solution_span_corruption(tokens, spans, sentinels)
        return i, t[:-1]

    def whole_caption(tokens, spans, sentinels):        # the misconception: the target is every word
        i, _ = ch02b.solution_span_corruption(tokens, spans, sentinels)
        return i, list(tokens)

    for wrong in (same_sentinel, no_closing, whole_caption):
        assert not ch02b.check_span_corruption(wrong, verbose=False), wrong.__name__


def test_bucket_check_fails_a_flipped_direction():
    """Eq. (ch2b-eq-bucket): keys after the query (j - i > 0) take the upper half of the encoder's buckets;
    a solution that gives the upper half to the past, or that never saturates at max_distance, fails."""
    def flipped(rel, bidirectional, nb, md):
        return ch02b.solution_position_bucket(-rel if bidirectional else rel, bidirectional, nb, md)

    def no_cap(rel, bidirectional, nb, md):
        return ch02b.solution_position_bucket(rel, bidirectional, nb, 10 ** 6)

    assert not ch02b.check_position_bucket(flipped, verbose=False)
    res = ch02b.check_position_bucket(no_cap, verbose=False)
    assert not res and "differ" in res.message


def test_probe_check_needs_a_real_fit():
    """The probe exercise compares test accuracy with probe.fit_logistic: a constant guess (0.5) fails, the
    package's own fit passes, and the made-up data are neither trivial nor hopeless for a linear probe."""
    x, y, xt, yt = ch02b.probe_data(0)
    acc = (fit_logistic(x, y)(xt).long() == yt).float().mean().item()
    assert 0.7 < acc < 0.97
    assert not ch02b.check_logistic_probe(lambda a, b, c: torch.ones(len(c), dtype=torch.bool), verbose=False)
    assert ch02b.check_logistic_probe(lambda a, b, c: fit_logistic(a, b)(c), verbose=False)
