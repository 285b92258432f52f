"""Tests of the command line ``python -m imagen_edu`` on a tiny ci cascade."""

import json
import subprocess
import sys

import pytest

from imagen_edu import checkpoints, cli


@pytest.fixture(scope="module")
def cascade_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_cascade")
    for stage in ("base", "sr1"):
        assert cli.main(["train", "--stage", stage, "--profile", "ci", "--out", str(d)]) == 0
    return d


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
    names = sorted(p.name for p in out.iterdir())
    assert names == ["0_0.png", "0_1.png", "0_2.png"]
    im = Image.open(out / "0_0.png")
    assert im.size == (16, 16) and im.mode == "RGB"


def test_sample_prompts_file(cascade_dir, tmp_path, capsys):
    f = tmp_path / "prompts.txt"
    f.write_text("a red circle\na blue square above a green triangle\na cyan triangle\n")
    out = tmp_path / "png"
    rc = cli.main(["sample", "--prompts-file", str(f), "--n", "2", "--steps", "2", "--out", str(out),
                   "--checkpoint-dir", str(cascade_dir), "--batch-size", "4"])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{i}_{k}.png" for i in range(3) for k in range(2))


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
