"""Tests of imagen_edu.configs (named configs, meta-device parameter counts) and imagen_edu.bench (FLOPs)."""

import json

import pytest
import torch
from torch import nn

from imagen_edu import bench, configs, profiles
from imagen_edu.attention import MultiHeadAttention
from imagen_edu.configs import stage_config, stage_configs
from imagen_edu.stage import ImagenStage


@pytest.mark.parametrize("name, paper", [("paper/base64", 2e9), ("paper/sr256", 6e8), ("paper/sr1024", 4e8)])
def test_paper_param_counts_within_15_percent(name, paper):
    cfg = configs.get(name)
    assert cfg.paper_params == paper
    n = cfg.num_params()
    assert abs(n / paper - 1) < 0.15, f"{name}: {n:,} parameters vs the paper's {paper:,.0f}"


def test_paper_configs_follow_the_paper_layout():
    c = configs.paper_configs()
    base, sr256, sr1024 = (c[k].stage for k in ("paper/base64", "paper/sr256", "paper/sr1024"))
    for s in (base, sr256, sr1024):
        assert s.text_dim == configs.T5_XXL_DIM == 4096
        assert s.unet.cond_dim == s.unet.context_dim == 4096
        assert s.text_encoder == "t5:google/t5-v1_1-xxl"
        assert s.batch_size == 2048 and s.lr == 1e-4
    assert all(c[k].text_encoder == "google/t5-v1_1-xxl" for k in c)
    assert (base.resolution, base.lowres_resolution) == (64, None)
    assert base.unet.channel_mults == (1, 2, 3, 4) and base.unet.res_blocks_per_level() == (3, 3, 3, 3)
    assert base.unet.attention_resolutions == (32, 16, 8) == base.unet.cross_resolutions()
    assert (sr256.lowres_resolution, sr256.resolution) == (64, 256) and sr256.unet.lowres_channels == 3
    assert sr256.unet.res_blocks_per_level() == (2, 4, 8, 8) == sr1024.unet.res_blocks_per_level()
    assert sr256.unet.channel_mults == (1, 2, 4, 8) == sr1024.unet.channel_mults
    assert (sr1024.lowres_resolution, sr1024.resolution) == (256, 1024)
    assert sr1024.unet.attention_resolutions == () and sr1024.unet.cross_resolutions() == (128,)


def test_paper_widths_would_overshoot():
    """With the paper's own base widths our U-Net is larger: the reason ours are narrower."""
    for name in configs.PAPER_WIDTHS:
        ours = configs.get(name)
        wide = configs.paper_width_stage(name)
        assert wide.unet.channels == configs.PAPER_WIDTHS[name] > ours.stage.unet.channels
        assert configs.count_parameters(wide) > 1.15 * ours.paper_params


def test_counting_allocates_nothing():
    stage = configs.get("paper/base64").build()
    params = list(stage.parameters())
    assert params and all(p.device.type == "meta" for p in params)
    assert all(b.device.type == "meta" for b in stage.buffers())
    assert configs.count_parameters(stage) == configs.get("paper/base64").num_params()


def test_meta_count_equals_a_real_build():
    cfg = configs.get("toy-ci/sr1")
    real = ImagenStage(cfg.stage)
    assert next(real.parameters()).device.type == "cpu"
    assert sum(p.numel() for p in real.parameters()) == cfg.num_params()
    assert configs.count_parameters(cfg.stage.unet) == sum(p.numel() for p in real.unet.parameters())


def test_toy_configs_are_the_profiles_stage_configs():
    for p in profiles.names():
        want = stage_configs(profiles.get(p).imagen)
        for s in ("base", "sr1"):
            got = configs.get(f"toy-{p}/{s}")
            assert got.stage == want[s]
            assert got.text_encoder == profiles.get(p).imagen.text_encoder and got.paper_params is None
    assert configs.get("toy-ci/base").stage == stage_config("base", "ci")


def test_names_and_errors():
    names = configs.names()
    assert names == list(configs.all_configs())
    assert {"toy-ci/base", "toy-cpu/sr1", "toy-gpu/base", "paper/base64", "paper/sr256", "paper/sr1024"} <= set(names)
    with pytest.raises(ValueError, match="paper/sr256"):
        configs.get("paper/sr512")
    with pytest.raises(ValueError, match="unknown config"):
        configs.get("toy-tpu/base")
    with pytest.raises(TypeError):
        configs.get(3)
    with pytest.raises(ValueError, match="paper config"):
        configs.paper_width_stage("toy-ci/base")


def test_summary_table_text_and_json():
    text = configs.summary_table()
    assert "paper/base64" in text and "google/t5-v1_1-xxl" in text and "64->256" in text
    rows = json.loads(configs.summary_table(as_json=True))
    by = {r["name"]: r for r in rows}
    assert by["paper/sr1024"]["lowres_resolution"] == 256 and by["paper/sr1024"]["resolution"] == 1024
    assert by["paper/base64"]["params"] == configs.get("paper/base64").num_params()
    assert abs(by["paper/sr256"]["params_vs_paper"] - 1) < 0.15


# ---------------------------------------------------------------------------------------------
# FLOP counting (imagen_edu.bench)
# ---------------------------------------------------------------------------------------------
def test_flops_of_a_linear_and_a_conv():
    lin = nn.Linear(8, 5, bias=False)
    x = torch.randn(3, 8)
    f, y = bench.count_flops(lin, x)
    assert f == 2 * 3 * 8 * 5 and y.shape == (3, 5)
    # backward of a linear layer: grad wrt input and wrt weight, each as large as the forward
    x.requires_grad_(True)
    f, _ = bench.count_flops(lambda: lin(x).sum().backward())
    assert f == 3 * (2 * 3 * 8 * 5)
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=False)
    f, _ = bench.count_flops(conv, torch.randn(2, 4, 5, 5))
    assert f == 2 * (2 * 6 * 5 * 5) * 4 * 9


def test_training_step_flops_on_meta_equals_cpu_and_scales_with_batch():
    """Model FLOPs (chapter 6, MFU): the count is the same on the meta device and the CPU, linear in the batch."""
    for stage in ("base", "sr1"):
        cfg = stage_config(stage, "ci")
        meta = bench.training_step_flops(cfg, 4, text_len=6)
        cpu = bench.training_step_flops(cfg, 4, text_len=6, device="cpu")
        assert meta == cpu > 0
        assert bench.training_step_flops(cfg, 8, text_len=6) == 2 * meta
        # the real training loss (with text dropout, noise augmentation) counts the same up to
        # a few small products outside the network
        st = ImagenStage(cfg)
        for m in st.modules():  # counted on the explicit attention path, as training_step_flops does
            if isinstance(m, MultiHeadAttention):
                m.flash = False
        x0, emb, mask, low = bench._synthetic_inputs(cfg, 4, 6, "cpu")
        real, _ = bench.count_flops(lambda: st.training_loss(x0, emb, mask, lowres=low).backward())
        assert abs(real / meta - 1) < 0.01


def test_peak_table():
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == (989.4, None)
    assert bench.peak_tflops("NVIDIA H200", "bf16")[0] == 989.4
    assert bench.peak_tflops("NVIDIA H100 PCIe", "fp16")[0] < 989.4
    assert bench.peak_tflops("NVIDIA A100-SXM4-40GB", "bf16")[0] == 312.0
    assert bench.peak_tflops("Tesla T4", "fp16")[0] == 65.0
    assert bench.peak_tflops("NVIDIA L4", "bf16")[0] == 121.0
    assert bench.peak_tflops("Tesla T4", "none")[0] == 8.1
    peak, note = bench.peak_tflops("Tesla T4", "bf16")
    assert peak is None and "bf16" in note
    peak, note = bench.peak_tflops("Some Future GPU", "bf16")
    assert peak is None and "unknown GPU" in note
    with pytest.raises(ValueError, match="amp"):
        bench.peak_tflops("H100", "fp8")


def test_bench_stage_on_cpu_reports_flops_and_no_mfu():
    cfg = stage_config("sr1", "ci")
    r = bench.bench_stage(cfg, device="cpu", amp="none", steps=1, batch_size=4)
    assert r["mfu"] is None and r["peak_tflops"] is None and "CUDA" in r["note"]
    assert r["flops_per_step"] == bench.training_step_flops(cfg, 4)
    assert r["images_per_s"] > 0 and r["achieved_tflops"] > 0
    assert abs(r["achieved_tflops"] - r["flops_per_step"] / r["step_seconds"] / 1e12) < 1e-3
    with pytest.raises(ValueError, match="amp"):
        bench.bench_stage(cfg, amp="fp8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            bench.bench_stage(cfg, device="cuda")


def test_names_and_get_cover_every_config():
    names = configs.names()
    assert set(names) == set(configs.all_configs()) and "toy-gpu/sr2" in names
    for n in names:
        assert configs.get(n).name == n


def test_comparison_stage_is_the_cpu_base_stage_with_only_the_named_changes():
    """Chapter 5c's comparison rows: the cpu base stage with the row's encoder, width, text path and
    step count; every other field as shipped, no time cap, and cross=False leaves no cross-attention."""
    from imagen_edu.stage import ImagenStage

    base = configs.stage_config("base", "cpu", text_dim=48)
    row = configs.comparison_stage("words", 48, channels=16, cross=False, pooling="attention", steps=700)
    assert (row.text_encoder, row.text_dim, row.unet.channels, row.pooling, row.steps, row.max_seconds) == \
        ("words", 48, 16, "attention", 700, None)
    assert row.unet.cross_attention_resolutions == ()
    same = {k: v for k, v in base.to_dict().items() if k not in ("text_encoder", "steps", "max_seconds", "pooling", "unet")}
    assert {k: row.to_dict()[k] for k in same} == same
    unet_same = {k: v for k, v in base.to_dict()["unet"].items() if k not in ("channels", "cross_attention_resolutions")}
    assert {k: row.to_dict()["unet"][k] for k in unet_same} == unet_same
    assert not any(getattr(m, "is_cross", False) for m in ImagenStage(row).modules())
    default = configs.comparison_stage("toyt5", 64)
    assert default.unet == configs.stage_config("base", "cpu", text_dim=64).unet and default.steps == 1000
    assert any(getattr(m, "is_cross", False) for m in ImagenStage(default).modules())
