"""Speed of a training step: images/s, model FLOPs and model FLOPs utilisation (chapter 6).

**Model FLOPs utilisation (MFU)** = (FLOPs the model needs per training step) / (step time) /
(the device's peak FLOP/s for the number format used). It says how much of the hardware a run
uses; the FLOPs are the model's (forward and backward of one step: matrix products,
convolutions and attention, counted by :class:`torch.utils.flop_counter.FlopCounterMode`), not
whatever the kernels happen to execute, so recomputation or padding never inflate it.

* :func:`training_step_flops` counts one step's FLOPs on the ``meta`` device by default: shapes
  only, no memory and no time, for any size (the paper's 2B model included).
* :func:`peak_tflops` looks the device's dense peak up in :data:`PEAK_TFLOPS` by GPU name.
* :func:`bench_stage` times training steps of a stage on a device, with autocast in bf16/fp16
  or none, and returns images/s, FLOPs per step, achieved TFLOP/s and the MFU (``None`` on the
  CPU or on an unknown GPU, with a note).

``python -m imagen_edu bench --device cuda --amp bf16`` prints them as JSON.

Derived in chapter 6 (Section "How fast is it?").
"""

from __future__ import annotations

import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from .attention import MultiHeadAttention
from .stage import ImagenStage

__all__ = ["PEAK_TFLOPS", "peak_tflops", "count_flops", "training_step_flops", "bench_stage", "AMP_CHOICES"]

AMP_CHOICES = ("bf16", "fp16", "none")

#: Dense (no sparsity) peak TFLOP/s by GPU and number format, from the vendors' data sheets.
#: bf16/fp16: tensor cores; fp32: plain fp32 (no TF32). Matched against
#: ``torch.cuda.get_device_name()`` in this order (the first key contained in the name wins).
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H100 PCIe": {"bf16": 756.5, "fp16": 756.5, "fp32": 51.2},
    "H100": {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9},   # SXM
    "H200": {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9},   # SXM
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5},
    "L4": {"bf16": 121.0, "fp16": 121.0, "fp32": 30.3},
    "T4": {"fp16": 65.0, "fp32": 8.1},
}


def peak_tflops(device_name: str, amp: str) -> tuple[float | None, str | None]:
    """``(peak TFLOP/s or None, note or None)`` for a GPU name and ``amp`` in ``bf16|fp16|none``."""
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp must be one of {AMP_CHOICES}, got {amp!r}")
    fmt = "fp32" if amp == "none" else amp
    for key, table in PEAK_TFLOPS.items():
        if key.lower() in str(device_name).lower():
            if fmt not in table:
                return None, f"no {fmt} peak for {key} in imagen_edu.bench.PEAK_TFLOPS (it has {sorted(table)})"
            return table[fmt], None
    return None, (f"unknown GPU {device_name!r}: add its dense {fmt} peak to imagen_edu.bench.PEAK_TFLOPS "
                  "to get an MFU")


def count_flops(fn, *args, **kwargs) -> tuple[int, object]:
    """``(FLOPs, result)`` of calling ``fn(*args, **kwargs)``, counted by ``FlopCounterMode``.

    A matrix product ``(m, k) @ (k, n)`` counts ``2 m k n``; a convolution ``2 * out_elements *
    in_channels * kernel_area``; elementwise operations (activations, norms) count 0.
    """
    with FlopCounterMode(display=False) as counter:
        out = fn(*args, **kwargs)
    return int(counter.get_total_flops()), out


def _synthetic_inputs(cfg, batch_size: int, text_len: int, device, generator=None):
    R, D = cfg.resolution, cfg.text_dim
    kw = dict(device=device)
    if str(device) == "meta":
        x0 = torch.empty(batch_size, 3, R, R, **kw)
        emb = torch.empty(batch_size, text_len, D, **kw)
        low = (torch.empty(batch_size, 3, cfg.lowres_resolution, cfg.lowres_resolution, **kw) if cfg.is_sr else None)
    else:
        x0 = (torch.rand(batch_size, 3, R, R, generator=generator) * 2 - 1).to(device)
        emb = torch.randn(batch_size, text_len, D, generator=generator).to(device)
        low = ((torch.rand(batch_size, 3, cfg.lowres_resolution, cfg.lowres_resolution, generator=generator) * 2 - 1)
               .to(device) if cfg.is_sr else None)
    mask = torch.ones(batch_size, text_len, dtype=torch.bool, device=device)
    return x0, emb, mask, low


def _network_step(stage, x0, emb, mask, low):
    """Forward and backward of the stage's network on ``x_t`` at random ``t``: the FLOPs of a training step.

    (The loss's own arithmetic, noising and the optimizer are elementwise: 0 model FLOPs.)
    """
    b = x0.shape[0]
    t = torch.zeros(b, dtype=torch.long, device=x0.device)
    kw = {}
    if low is not None:
        kw = {"lowres": low, "lowres_noise_level": torch.zeros(b, device=x0.device)}
    out = stage(x0, t, text_emb=emb, text_mask=mask, **kw)
    out.float().pow(2).mean().backward()


def training_step_flops(cfg, batch_size: int, text_len: int = 16, device="meta") -> int:
    """Model FLOPs of one training step (forward + backward) of a stage at ``batch_size``.

    ``cfg`` is a :class:`~imagen_edu.stage.StageConfig`; the network is built and run on
    ``device`` (``meta`` by default: nothing is allocated). Text of ``text_len`` tokens.
    Backward costs about twice the forward, so this is about 3x the forward FLOPs. Attention is
    counted on its explicit path (``flash`` off): the fused kernel does the same products, but
    ``FlopCounterMode`` has no formula for the backward of some fused CPU kernels, so the count
    would depend on the device.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    with torch.device(device):
        stage = ImagenStage(cfg)
    for m in stage.modules():
        if isinstance(m, MultiHeadAttention):
            m.flash = False
    x0, emb, mask, low = _synthetic_inputs(cfg, batch_size, text_len, device)
    flops, _ = count_flops(_network_step, stage, x0, emb, mask, low)
    return flops


def bench_stage(cfg, *, device="cpu", amp: str = "none", steps: int = 5, batch_size: int | None = None,
                text_len: int = 16, seed: int = 0) -> dict:
    """Time ``steps`` training steps of a stage (after one warm-up step) and estimate its MFU.

    Uses :meth:`~imagen_edu.stage.ImagenStage.training_loss` with Adam on synthetic images and
    text embeddings (the speed does not depend on the values), under ``torch.autocast`` in
    ``amp`` (``bf16``/``fp16``: fp16 with a gradient scaler; ``none``: fp32).

    Returns ``{"stage", "batch_size", "images_per_s", "step_seconds", "flops_per_step",
    "achieved_tflops", "peak_tflops", "mfu", "note"}``; ``mfu`` is ``None`` on the CPU and for a
    GPU missing from :data:`PEAK_TFLOPS` (``note`` says why).
    """
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp must be one of {AMP_CHOICES}, got {amp!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for, but CUDA is not available here: use --device cpu")
    if device.type == "cuda" and amp == "bf16" and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU does not support bf16: use --amp fp16")
    b = cfg.batch_size if batch_size is None else batch_size
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    stage = ImagenStage(cfg).to(device)
    opt = torch.optim.Adam(stage.parameters(), lr=cfg.lr)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[amp]
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    x0, emb, mask, low = _synthetic_inputs(cfg, b, text_len, device, g)

    def step():
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = stage.training_loss(x0, emb, mask, lowres=low, generator=g)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step()  # warm-up (allocator, cuDNN autotuning)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    dt = (time.perf_counter() - t0) / steps
    flops = training_step_flops(cfg, b, text_len)
    achieved = flops / dt / 1e12  # reported to 4 significant digits: a tiny model's rate is not 0
    out = {"stage": cfg.name, "resolution": cfg.resolution, "batch_size": b, "amp": amp, "device": str(device),
           "images_per_s": round(b / dt, 2), "step_seconds": round(dt, 5), "flops_per_step": flops,
           "achieved_tflops": float(f"{achieved:.4g}"), "peak_tflops": None, "mfu": None, "note": None}
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        out["gpu_name"] = name
        peak, note = peak_tflops(name, amp)
        out["peak_tflops"], out["note"] = peak, note
        if peak:
            out["mfu"] = round(achieved / peak, 4)
        if amp == "none" and torch.backends.cudnn.allow_tf32:
            out["note"] = ((out["note"] + "; ") if out["note"] else "") + (
                "with amp none, cuDNN convolutions may run in TF32 (torch.backends.cudnn.allow_tf32), "
                "so the MFU against the fp32 peak can overstate the fp32 work")
        out["max_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    else:
        out["note"] = "MFU is reported on CUDA only (a CPU has no single peak FLOP/s figure here)"
    return out
