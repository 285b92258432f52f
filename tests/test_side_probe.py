"""The side probe (imagen_edu.probe): reads a frozen encoder's states without any image."""

import json

import torch

from imagen_edu import DATA_DIR, probe, text_encoders
from imagen_edu.data.captions import all_captions
from imagen_edu.tokenizer import default_tokenizer

TOK = default_tokenizer()


class _Fake:
    """Word-level encoder stand-ins with <bos> at index 0, built from one-hot words."""

    def __init__(self, kind):
        self.kind = kind

    def encode(self, texts):
        ids, mask = TOK.batch_encode(texts)
        onehot = torch.nn.functional.one_hot(ids, TOK.vocab_size).float()
        if self.kind == "causal":            # a state sees only the words up to itself
            return onehot.cumsum(1), mask
        # oracle: every state carries the side of the object it sits on, as +-1 in one channel
        side = torch.zeros(ids.shape + (1,))
        for b, t in enumerate(texts):
            p = [c for c in all_captions() if c.text == t][0]
            first = probe.side_labels(p.relation)[0] * 2 - 1
            side[b, 3, 0], side[b, -2 if mask[b].all() else mask[b].sum() - 2, 0] = first, -first
        return torch.cat([onehot, side], -1), mask


def test_labels_follow_order_times_relation():
    """Eq. ch5-eq-side: the first object of 'left of' / 'above' is on the left / top, the second opposite."""
    assert probe.side_labels("left of") == (1, 0) and probe.side_labels("right of") == (0, 1)
    assert probe.side_labels("above") == (1, 0) and probe.side_labels("below") == (0, 1)


def test_probe_reads_a_state_that_holds_the_side():
    r = probe.side_probe(_Fake("oracle"), offset=1)
    assert r["horizontal"]["test"] == r["vertical"]["test"] == r["horizontal"]["heldout"] == 1.0


def test_causal_first_object_is_chance():
    """A causal state at the first object has not read the relation: the probe cannot beat a coin there."""
    r = probe.side_probe(_Fake("causal"), offset=1)
    assert 0.35 < r["first_object"] < 0.65
    assert r["second_object"] > 0.9


class _Loud:
    """States = one-hot word + ``scale`` x (side, order) channels at every object word (``<bos>`` at 0)."""

    def __init__(self, side_scale, order_scale):
        self.side_scale, self.order_scale = side_scale, order_scale

    def encode(self, texts):
        ids, mask = TOK.batch_encode(texts)
        x = torch.nn.functional.one_hot(ids, TOK.vocab_size).float()
        extra = torch.zeros(ids.shape + (2,))
        for b, t in enumerate(texts):
            p = [c for c in all_captions() if c.text == t][0]
            if p.relation is None:
                continue
            n = len(t.split())
            first, second = probe.side_labels(p.relation)
            for pos, s, o in ((1, first, 0), (2, first, 0), (n - 2, second, 1), (n - 1, second, 1)):
                extra[b, 1 + pos] = torch.tensor([self.side_scale * (2 * s - 1), self.order_scale * (2 * o - 1)])
        return torch.cat([x, extra], -1), mask


def test_variance_share_measures_how_loud_each_label_is():
    """A side channel 10x louder than the order channel explains more of the spread, and the reverse;
    with no side channel at all the side explains (almost) nothing."""
    loud_side = probe.variance_share(_Loud(3.0, 0.3), offset=1)
    loud_order = probe.variance_share(_Loud(0.3, 3.0), offset=1)
    for axis in ("horizontal", "vertical"):
        assert loud_side[axis]["side"] > 0.3 > loud_side[axis]["order"]
        assert loud_order[axis]["order"] > 0.3 > loud_order[axis]["side"]
        assert 0.0 <= loud_side[axis]["side"] <= 1.0
    silent = probe.variance_share(_Loud(0.0, 3.0), offset=1)
    assert silent["horizontal"]["side"] < 0.01


def test_shipped_probe_table_covers_the_encoders_and_matches_a_live_measurement():
    """data/benchmarks/text_encoder_probe.json (chapter 2b's table of every frozen encoder, the
    paper's Fig. 4a/A.5 at toy scale) has the rows the comparison needs, and its shipped-T5 row is
    what `probe.side_probe` / `probe.variance_share` measure today on the shipped encoder."""
    rows = json.loads((DATA_DIR / "benchmarks" / "text_encoder_probe.json").read_text())["rows"]
    for needle in ("bag of words", "causal LM", "lm+words", "CLIP", "random initialisation", "oracle",
                   "32-wide", "64-wide", "128-wide"):
        assert any(needle in k for k in rows), needle
    for r in rows.values():
        for axis in ("horizontal", "vertical"):
            assert 0.0 <= r["probe"][axis]["test"] <= 1.0 and 0.0 <= r["share"][axis]["side"] <= 1.0
    row = rows["toy T5 64-wide, span corruption + paraphrase (shipped)"]
    enc = text_encoders.get("toyt5")
    with torch.no_grad():
        live_p, live_s = probe.side_probe(enc, 0), probe.variance_share(enc, 0)
    for axis in ("horizontal", "vertical"):
        assert abs(live_p[axis]["test"] - row["probe"][axis]["test"]) < 0.03, axis
        assert abs(live_s[axis]["side"] - row["share"][axis]["side"]) < 0.01, axis
