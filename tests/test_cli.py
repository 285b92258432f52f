"""Tests of the command line ``python -m imagen_edu`` on a tiny ci cascade."""

import json
import subprocess
import sys

import pytest
import torch

from imagen_edu import checkpoints, cli


def test_train_writes_checkpoints_and_manifest(cascade_dir, capsys):
    man = checkpoints.read_manifest(cascade_dir / "manifest.json")
    assert {"imagen_base", "imagen_sr1"} <= set(man)
    assert man["imagen_sr1"]["command"].startswith("python -m imagen_edu train --stage sr1 --profile ci")
    assert (cascade_dir / "imagen_base.resume.safetensors").is_file()


def test_resume_flag(cascade_dir, tmp_path, capsys):
    import shutil

    d = tmp_path / "r"
    shutil.copytree(cascade_dir, d)
    assert cli.main(["train", "--stage", "base", "--profile", "ci", "--out", str(d), "--resume", "--steps", "6"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["steps"] == 6


def test_sample_prompt_writes_pngs(cascade_dir, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "png"
    rc = cli.main(["sample", "--prompt", "a red circle left of a blue square", "--n", "3", "--seed", "1",
                   "--guidance", "2", "--steps", "2", "--out", str(out), "--checkpoint-dir", str(cascade_dir)])
    assert rc == 0
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == ["0_0.png", "0_1.png", "0_2.png"]
    assert json.loads((out / "sample.json").read_text())["seed"] == 1  # the settings that made them
    im = Image.open(out / "0_0.png")
    assert im.size == (16, 16) and im.mode == "RGB"


def test_sample_prompts_file(cascade_dir, tmp_path, capsys):
    f = tmp_path / "prompts.txt"
    f.write_text("a red circle\na blue square above a green triangle\na cyan triangle\n")
    out = tmp_path / "png"
    rc = cli.main(["sample", "--prompts-file", str(f), "--n", "2", "--steps", "2", "--out", str(out),
                   "--checkpoint-dir", str(cascade_dir), "--batch-size", "4"])
    assert rc == 0
    assert sorted(p.name for p in out.glob("*.png")) == sorted(f"{i}_{k}.png" for i in range(3) for k in range(2))


def test_sample_is_deterministic_with_a_seed(cascade_dir, tmp_path, capsys):
    outs = []
    for name in ("a", "b"):
        cli.main(["sample", "--prompt", "a red circle", "--n", "1", "--seed", "5", "--steps", "2",
                  "--out", str(tmp_path / name), "--checkpoint-dir", str(cascade_dir)])
        outs.append((tmp_path / name / "0_0.png").read_bytes())
    assert outs[0] == outs[1]


def test_eval_prints_json(cascade_dir, capsys):
    rc = cli.main(["eval", "--checkpoint-dir", str(cascade_dir), "--n", "4", "--steps", "2"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    for split in ("test", "heldout"):
        assert res[split]["n"] == 4 and 0.0 <= res[split]["all"] <= 1.0
        assert {"colour", "shape", "relation", "count", "all_one_object", "all_two_object"} <= set(res[split])
    assert res["resolution"] == 16 and res["seconds_per_image"] > 0


@pytest.mark.parametrize("argv, message", [
    (["--n", "0"], "--n"),
    (["--guidance", "-1"], "guidance"),
    (["--steps", "0"], "steps"),
])
def test_sample_bad_numbers(cascade_dir, tmp_path, capsys, argv, message):
    rc = cli.main(["sample", "--prompt", "a red circle", "--out", str(tmp_path), "--checkpoint-dir",
                   str(cascade_dir), *argv])
    assert rc == 2 and message in capsys.readouterr().err


def test_sample_empty_prompt_and_empty_line(cascade_dir, tmp_path, capsys):
    assert cli.main(["sample", "--prompt", "  ", "--out", str(tmp_path), "--checkpoint-dir", str(cascade_dir)]) == 2
    assert "empty prompt" in capsys.readouterr().err
    f = tmp_path / "p.txt"
    f.write_text("a red circle\n\na blue square\n")
    assert cli.main(["sample", "--prompts-file", str(f), "--out", str(tmp_path), "--checkpoint-dir",
                     str(cascade_dir)]) == 2
    assert "line 1" in capsys.readouterr().err


def test_unknown_word_warns_and_goes_on(cascade_dir, tmp_path, capsys):
    with pytest.warns(UserWarning, match="purple"):
        rc = cli.main(["sample", "--prompt", "a purple circle", "--n", "1", "--steps", "1", "--out",
                       str(tmp_path / "o"), "--checkpoint-dir", str(cascade_dir)])
    assert rc == 0 and (tmp_path / "o" / "0_0.png").is_file()


@pytest.mark.parametrize("command", ["sample", "eval"])
def test_missing_cascade_says_which_file_and_how_to_make_it(command, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(checkpoints, "checkpoint_dir", lambda: tmp_path / "checkpoints")
    argv = ["sample", "--prompt", "a red circle", "--out", str(tmp_path / "o")] if command == "sample" else ["eval"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "imagen_base.safetensors" in err
    assert "python -m imagen_edu train --stage base --profile cpu --out" in err


def test_missing_sr_stage_is_named(cascade_dir, tmp_path, capsys):
    import shutil

    d = tmp_path / "only_base"
    d.mkdir()
    shutil.copy(cascade_dir / "imagen_base.safetensors", d)
    checkpoints.register("imagen_base", d / "imagen_base.safetensors", command="x", seed=0, metrics={},
                         manifest=d / "manifest.json")
    assert cli.main(["eval", "--checkpoint-dir", str(d)]) == 2
    err = capsys.readouterr().err
    assert "imagen_sr1.safetensors" in err and "--stage sr1" in err


def test_tampered_checkpoint_is_refused(cascade_dir, tmp_path, capsys):
    import shutil

    d = tmp_path / "t"
    shutil.copytree(cascade_dir, d)
    f = d / "imagen_sr1.safetensors"
    f.write_bytes(f.read_bytes()[:-10] + b"0123456789")
    assert cli.main(["eval", "--checkpoint-dir", str(d), "--n", "2"]) == 2
    assert "sha256" in capsys.readouterr().err


def test_module_entry_point_help():
    r = subprocess.run([sys.executable, "-m", "imagen_edu", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    for word in ("train", "sample", "eval"):
        assert word in r.stdout


# ---------------------------------------------------------------------------------------------
# Chapter 6: configs, bench (FLOPs, MFU), embed, train --set, bad input before any step
# ---------------------------------------------------------------------------------------------
def test_configs_command_lists_every_config(capsys):
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert cli.main(["configs"]) == 0
    text = capsys.readouterr().out
    for name in ("toy-ci/base", "toy-cpu/sr1", "toy-gpu/base", "paper/base64", "paper/sr256", "paper/sr1024"):
        assert name in text
    assert "google/t5-v1_1-xxl" in text and "256->1024" in text
    assert cli.main(["configs", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    for name, paper in (("paper/base64", 2e9), ("paper/sr256", 6e8), ("paper/sr1024", 4e8)):
        assert abs(rows[name]["params"] / paper - 1) < 0.15
        assert rows[name]["text_encoder"] == "google/t5-v1_1-xxl"
    assert rows["paper/sr256"]["resolution"] == 256 and rows["paper/sr256"]["lowres_resolution"] == 64
    assert rows["toy-ci/base"]["lowres_resolution"] is None
    # 3 billion float32 parameters would need 12 GB: counting on the meta device allocates none
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 1_000_000


BENCH_KEYS = {"threads", "cpu_count", "machine", "device", "amp", "gpu_name", "train_images_per_s",
              "flops_per_step", "achieved_tflops", "mfu", "stages"}


def test_bench_json_on_cpu(cascade_dir, capsys):
    rc = cli.main(["bench", "--checkpoint-dir", str(cascade_dir), "--device", "cpu", "--amp", "none",
                   "--train-steps", "1", "--n", "2", "--steps", "1", "--batch-size", "2"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert BENCH_KEYS | {"sample_seconds_per_image", "n_sampled", "sample_steps"} <= set(out)
    assert out["device"] == "cpu" and out["amp"] == "none" and out["gpu_name"] is None
    assert set(out["train_images_per_s"]) == {"base", "sr1"}
    for stage in ("base", "sr1"):
        assert out["flops_per_step"][stage] > 0 and out["mfu"][stage] is None
        assert out["stages"][stage]["batch_size"] == 2 and out["stages"][stage]["note"]


def test_bench_named_config_without_cascade(capsys):
    rc = cli.main(["bench", "--config", "toy-ci/sr1", "--device", "cpu", "--train-steps", "1", "--batch-size", "2"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert BENCH_KEYS <= set(out) and "sample_seconds_per_image" not in out
    assert list(out["stages"]) == ["toy-ci/sr1"] and out["amp"] == "none"
    assert cli.main(["bench", "--config", "paper/sr512", "--device", "cpu"]) == 2
    assert "unknown config" in capsys.readouterr().err


def test_bench_cuda_missing_is_a_clear_error(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert cli.main(["bench", "--config", "toy-ci/base", "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_embed_command_writes_a_cache(tmp_path, capsys):
    from imagen_edu import text_encoders
    from imagen_edu.embcache import EmbeddingCache

    f = tmp_path / "caps.txt"
    f.write_text("a red circle\na blue square\na red circle\n")
    rc = cli.main(["embed", "--encoder", "lm", "--captions", str(f), "--out", str(tmp_path / "e"),
                   "--dtype", "float32"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["captions"] == 3 and out["distinct"] == 2 and out["dtype"] == "float32"
    cache = EmbeddingCache(tmp_path / "e")
    emb, mask = cache.lookup(["a blue square"])
    want, wmask = text_encoders.get("lm").encode(["a blue square"])
    # The cache encoded "a blue square" in one padded batch with "a red circle"; here it is alone.
    # The masked attention gives the same maths, but a CPU's kernels may round differently for
    # another batch shape (seen: 1e-7 on this machine, more on others), hence 1e-5, not equality.
    torch.testing.assert_close(emb[:, :want.shape[1]], want, atol=1e-5, rtol=1e-5)
    assert int(mask.sum()) == int(wmask.sum())
    # a second run refuses to overwrite without --overwrite
    assert cli.main(["embed", "--encoder", "lm", "--captions", str(f), "--out", str(tmp_path / "e")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main(["embed", "--encoder", "nope", "--captions", str(f), "--out", str(tmp_path / "x")]) == 2


def test_parse_and_apply_overrides():
    from imagen_edu.imagen import stage_config

    d = cli.parse_overrides(["aug_max_level=0", "guidance=2.5", "grad_clip=None", "threshold=static",
                             "unet.attention_resolutions=8,4", "unet.channels=16"])
    assert d == {"aug_max_level": 0, "guidance": 2.5, "grad_clip": None, "threshold": "static",
                 "unet": {"attention_resolutions": (8, 4), "channels": 16}}
    cfg = cli.apply_overrides(stage_config("sr1", "ci"), cli.parse_overrides(["aug_max_level=0", "unet.channels=16"]))
    assert cfg.aug_max_level == 0.0 and isinstance(cfg.aug_max_level, float) and cfg.unet.channels == 16
    with pytest.raises(ValueError, match="aug_sample_level"):  # the message lists the fields
        cli.apply_overrides(cfg, {"aug_level": 0})
    with pytest.raises(ValueError, match="unet.width"):
        cli.apply_overrides(cfg, {"unet": {"width": 3}})
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        cli.parse_overrides(["aug_max_level"])
    with pytest.raises(ValueError, match="aug_max_level"):  # validated by StageConfig
        cli.apply_overrides(cfg, {"aug_max_level": 2})


def test_train_set_without_noise_augmentation(tmp_path, capsys):
    from imagen_edu.imagen import load_stage, stage_file

    rc = cli.main(["train", "--stage", "sr1", "--profile", "ci", "--out", str(tmp_path), "--steps", "2",
                   "--set", "aug_max_level=0", "--set", "aug_sample_level=0"])
    assert rc == 0
    st = load_stage(stage_file(tmp_path, "sr1"))
    assert st.config.aug_max_level == 0.0 and st.config.aug_sample_level == 0.0
    man = checkpoints.read_manifest(tmp_path / "manifest.json")
    assert "--set aug_max_level=0 --set aug_sample_level=0" in man["imagen_sr1"]["command"]


def test_train_unknown_set_field(tmp_path, capsys):
    rc = cli.main(["train", "--stage", "base", "--profile", "ci", "--out", str(tmp_path), "--set", "colour=red"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "colour" in err and "batch_size" in err
    assert not (tmp_path / "imagen_base.resume.safetensors").exists()


def _copy(cascade_dir, tmp_path):
    import shutil

    d = tmp_path / "r"
    shutil.copytree(cascade_dir, d)
    return d


def test_resume_with_another_config_fails_before_training(cascade_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("IMAGEN_EDU_PROFILE", "ci")  # --profile cpu below sets it: restored after the test
    d = _copy(cascade_dir, tmp_path)
    before = (d / "imagen_base.resume.safetensors").read_bytes()
    rc = cli.main(["train", "--stage", "base", "--profile", "ci", "--out", str(d), "--resume", "--set", "lr=0.5"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "another config" in err and "lr" in err
    assert (d / "imagen_base.resume.safetensors").read_bytes() == before
    # another profile is another config too (another U-Net)
    assert cli.main(["train", "--stage", "base", "--profile", "cpu", "--out", str(d), "--resume"]) == 2
    assert "another config" in capsys.readouterr().err


def test_resume_from_a_checkpoint_of_another_stage(cascade_dir, tmp_path, capsys):
    import shutil

    d = _copy(cascade_dir, tmp_path)
    shutil.copy(d / "imagen_sr1.resume.safetensors", d / "imagen_base.resume.safetensors")
    assert cli.main(["train", "--stage", "base", "--profile", "ci", "--out", str(d), "--resume"]) == 2
    assert "stage 'sr1', not of stage 'base'" in capsys.readouterr().err
    (d / "imagen_base.resume.safetensors").unlink()
    assert cli.main(["train", "--stage", "base", "--profile", "ci", "--out", str(d), "--resume"]) == 2
    assert "no resume file" in capsys.readouterr().err


@pytest.mark.parametrize("world, message", [("3", "does not divide batch_size=8"), ("2", "MASTER_ADDR")])
def test_world_size_is_checked_before_training(tmp_path, monkeypatch, capsys, world, message):
    monkeypatch.setenv("WORLD_SIZE", world)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert cli.main(["train", "--stage", "base", "--profile", "ci", "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_threads_option(tmp_path, capsys, monkeypatch):
    """--threads N: the command runs on N torch threads (profiles.torch_threads), restored afterwards."""
    before = torch.get_num_threads()
    seen = []
    real = cli._sample
    monkeypatch.setattr(cli, "_sample", lambda args: seen.append(torch.get_num_threads()) or real(args))
    other = 2 if before == 1 else 1
    try:
        assert cli.main(["sample", "--prompt", "a red circle", "--n", "1", "--steps", "1", "--threads", str(other),
                         "--out", str(tmp_path)]) == 0
        assert seen == [other] and torch.get_num_threads() == before
        assert cli.main(["eval", "--threads", "0", "--n", "2"]) == 2
        assert "--threads must be an int >= 1" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)
