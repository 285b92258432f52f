"""Tests of imagen_edu.profiles' cascade settings: every profile builds exactly the stage configs it
built when ImagenSettings listed each stage's fields flat (tests/fixtures/stage_configs.json was
written from that code; the shipped text encoder and its width updated when it became the toy T5)."""

import dataclasses
import json
from pathlib import Path

import pytest

from imagen_edu import configs, profiles
from imagen_edu.unet import UNetConfig

EXPECTED = json.loads((Path(__file__).parent / "fixtures" / "stage_configs.json").read_text())


@pytest.mark.parametrize("profile", ["ci", "cpu", "gpu"])
def test_profile_builds_the_recorded_stage_configs(profile):
    """The regression check of the settings' layout: every field of every StageConfig (U-Net
    included) equals the recorded one; a U-Net field added since must hold its default."""
    got = {k: json.loads(json.dumps(dataclasses.asdict(v)))
           for k, v in configs.stage_configs(profiles.get(profile).imagen).items()}
    want = EXPECTED[profile]
    assert list(got) == list(want)
    defaults = json.loads(json.dumps(dataclasses.asdict(UNetConfig())))
    for name in want:
        g, w = dict(got[name]), dict(want[name])
        gu, wu = g.pop("unet"), w.pop("unet")
        assert g == w, name
        assert {k: gu[k] for k in wu} == wu, name
        assert all(gu[k] == defaults[k] for k in gu if k not in wu), name


def test_stages_with_merges_unet_fields_and_adds_a_stage():
    s = profiles.stages_with(base=dict(steps=3, unet=dict(channels=8)), sr2=dict(resolution=64, unet={}))
    assert s["base"]["steps"] == 3 and s["base"]["unet"]["channels"] == 8
    assert s["base"]["unet"]["channel_mults"] == profiles.CPU_STAGES["base"]["unet"]["channel_mults"]
    assert profiles.CPU_STAGES["base"]["steps"] == 2400 and profiles.CPU_STAGES["base"]["unet"]["channels"] == 32
    assert list(s) == ["base", "sr1", "sr2"]


def test_sr_stage_reads_the_previous_resolution_and_warmup_follows_steps():
    """What the recipe derives: an SR stage's lowres_resolution is the previous stage's resolution
    (with 3 low-resolution input channels), and every stage warms up for toy_warmup(steps)."""
    cfgs = configs.stage_configs(profiles.get("gpu").imagen, text_dim=16)
    assert [c.lowres_resolution for c in cfgs.values()] == [None, 16, 32]
    assert [c.unet.lowres_channels for c in cfgs.values()] == [None, 3, 3]
    assert all(c.warmup == configs.toy_warmup(c.steps) for c in cfgs.values())
    assert [configs.toy_warmup(n) for n in (0, 5, 100, 499, 10_000)] == [1, 1, 10, 49, 50]
    with pytest.raises(ValueError, match="stages"):
        configs.stage_configs(dataclasses.replace(profiles.get("ci").imagen, stages={"sr1": {}}), text_dim=16)
