"""``imagen_edu.doctor()``: what this machine is, which profile is active, and what will be slow."""

from __future__ import annotations

import os
import platform
import sys

import torch

from . import profiles


def report() -> dict:
    """The facts :func:`doctor` prints, as a dict (handy for tests and logs)."""
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "gpu": None,
        "gpu_memory_gb": None,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "profile": None,
        "profile_source": "env" if os.environ.get(profiles.ENV_VAR, "").strip() else "default",
        "in_colab": "google.colab" in sys.modules,
        "warnings": [],
    }
    if info["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)
    try:
        prof = profiles.current()
        info["profile"] = prof.name
    except ValueError as err:  # a bad IMAGEN_EDU_PROFILE is reported, not raised, here
        info["warnings"].append(str(err))
        return info

    warn = info["warnings"]
    if prof.name == "gpu" and not info["cuda_available"]:
        warn.append("profile 'gpu' chosen but no CUDA device: everything runs on the CPU and "
                    "will be very slow; use IMAGEN_EDU_PROFILE=cpu")
    if prof.name in ("cpu", "gpu") and (info["cpu_count"] or 1) < 2 and not info["cuda_available"]:
        warn.append("only one CPU core: the 'cpu' profile timings in the book assume 2 or more")
    if info["cuda_available"] and prof.name != "gpu":
        warn.append(f"a GPU is present but profile {prof.name!r} is active: "
                    "set IMAGEN_EDU_PROFILE=gpu for the full-size runs")
    if info["cuda_available"] and info["gpu_memory_gb"] is not None and info["gpu_memory_gb"] < 12:
        warn.append("less than 12 GiB of GPU memory: the gpu profile fits, paper-size configs do not")
    if profiles.smoke_enabled():
        warn.append(f"IMAGEN_EDU_SMOKE is set: {prof.name!r} model sizes with the ci profile's run lengths "
                    "(a check that everything builds and runs; results are not meaningful)")
    if prof.name == "ci":
        warn.append("profile 'ci' is for automated tests: models are tiny and results are not meaningful")
    return info


def doctor(file=None) -> dict:
    """Print Python, torch, CUDA, GPU, CPU count, the active profile and warnings; return them."""
    info = report()
    out = file or sys.stdout
    gpu = f"{info['gpu']} ({info['gpu_memory_gb']} GiB)" if info["gpu"] else "none"
    lines = [
        f"Python       {info['python']}",
        f"torch        {info['torch']} (CUDA build {info['cuda_version'] or 'none'})",
        f"CUDA         {'available' if info['cuda_available'] else 'not available'}",
        f"GPU          {gpu}",
        f"CPU cores    {info['cpu_count']} (torch uses {info['torch_threads']} threads)",
        f"profile      {info['profile']} (from {'$' + profiles.ENV_VAR if info['profile_source'] == 'env' else 'the default'})",
        f"Colab        {'yes' if info['in_colab'] else 'no'}",
    ]
    for w in info["warnings"]:
        lines.append(f"warning: {w}")
    print("\n".join(lines), file=out)
    return info
