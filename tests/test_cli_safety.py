"""Nothing lost, nothing silent: ``python -m imagen_edu`` under careless use (chapter 6).

Every user mistake ends with one line on stderr and exit status 2 before any work; no command
deletes or replaces a finished result unless asked (``--overwrite``), and then not before the
replacement exists; sampling writes as it goes; one trainer per stage and folder.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imagen_edu import cli
from imagen_edu.outputs import FolderLock
from imagen_edu.stage import load_stage

ROOT = Path(__file__).resolve().parents[1]


def _one_line_error(capsys, *names):
    """stderr is exactly one line, an error naming each of ``names``, with no traceback."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert "error:" in err
    for n in names:
        assert n in err, (n, err)
    return err


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------------------------------------
# train: a finished run is never replaced by mistake
# ---------------------------------------------------------------------------------------------
def test_train_again_without_resume_keeps_the_earlier_run(cascade_dir, tmp_path, capsys):
    """Today's trap: a second `train` without --resume deleted the resume file at start-up."""
    d = _copy(cascade_dir, tmp_path / "d")
    before = {f.name: f.read_bytes() for f in d.glob("imagen_base*.safetensors")}
    assert cli.main(["train", "--stage", "base", "--profile", "ci", "--out", str(d)]) == 2
    _one_line_error(capsys, "already holds a run of stage 'base'", "--resume", "--overwrite")
    assert {f.name: f.read_bytes() for f in d.glob("imagen_base*.safetensors")} == before


def test_train_steps_zero_is_refused(cascade_dir, tmp_path, capsys):
    d = _copy(cascade_dir, tmp_path / "d")
    before = (d / "imagen_base.safetensors").read_bytes()
    for extra in ([], ["--overwrite"]):
        assert cli.main(["train", "--stage", "base", "--profile", "ci", "--out", str(d), "--steps", "0", *extra]) == 2
        _one_line_error(capsys, "--steps")
    assert (d / "imagen_base.safetensors").read_bytes() == before


def test_overwrite_keeps_the_old_files_until_the_new_run_writes(cascade_dir, tmp_path, capsys, monkeypatch):
    """--overwrite: a crash before the new run's first checkpoint leaves the old files as they were."""
    from imagen_edu import train as train_mod

    d = _copy(cascade_dir, tmp_path / "d")
    before = {f.name: f.read_bytes() for f in d.glob("imagen_base*")}

    def crash(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod.Trainer, "train", crash)
    assert cli.main(["train", "--stage", "base", "--profile", "ci", "--out", str(d), "--overwrite"]) == 130
    assert {f.name: f.read_bytes() for f in d.glob("imagen_base*")} == before
    monkeypatch.undo()
    assert cli.main(["train", "--stage", "base", "--profile", "ci", "--out", str(d), "--overwrite",
                     "--seed", "3"]) == 0
    assert (d / "imagen_base.safetensors").read_bytes() != before["imagen_base.safetensors"]
    assert load_stage(d / "imagen_base.safetensors").config.seed == 3


def test_resume_and_overwrite_together_are_refused(tmp_path, capsys):
    assert cli.main(["train", "--stage", "base", "--profile", "ci", "--out", str(tmp_path), "--resume",
                     "--overwrite"]) == 2
    _one_line_error(capsys, "--resume", "--overwrite")


@pytest.mark.parametrize("kind", ["file", "under_a_file"])
def test_unwritable_out_fails_before_any_work(tmp_path, capsys, monkeypatch, kind):
    """An --out that is a file (or lies under one) is found in the first second, not after training."""
    from imagen_edu import stage_training

    f = tmp_path / "a_file"
    f.write_text("x")
    out = f if kind == "file" else f / "sub"
    monkeypatch.setattr(stage_training, "training_pool", lambda *a, **k: pytest.fail("rendered before the check"))
    assert cli.main(["train", "--stage", "base", "--profile", "ci", "--out", str(out)]) == 2
    _one_line_error(capsys, "--out", str(out))


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True,
                    reason="root may write into a read-only folder")
def test_read_only_out_fails_before_any_work(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert cli.main(["train", "--stage", "base", "--profile", "ci", "--out", str(ro)]) == 2
        _one_line_error(capsys, "not writable")
    finally:
        ro.chmod(0o700)


def test_a_second_trainer_on_the_same_stage_and_folder_stops(tmp_path, capsys):
    """One lock per stage and folder: the second trainer stops at once and names the first."""
    with FolderLock(tmp_path, "imagen_base", what="stage 'base'"):
        assert cli.main(["train", "--stage", "base", "--profile", "ci", "--out", str(tmp_path)]) == 2
        _one_line_error(capsys, "in use", f"process {os.getpid()}")
        # another stage trains side by side in the same folder
        assert cli.main(["train", "--stage", "sr1", "--profile", "ci", "--out", str(tmp_path), "--steps", "2"]) == 0
    assert cli.main(["train", "--stage", "base", "--profile", "ci", "--out", str(tmp_path), "--steps", "2"]) == 0


#: steps of the killed run: long enough to be killed mid-way (the ci base stage does 7 to 20 a second here; it saves every 200)
STEPS = 220


def _train_cmd(out, *extra):
    return [sys.executable, "-m", "imagen_edu", "train", "--stage", "base", "--profile", "ci", "--out", str(out),
            "--threads", "1", *extra]


@pytest.mark.parametrize("resume", [False, True])
def test_a_killed_train_leaves_a_loadable_stage(cascade_dir, tmp_path, resume):
    """SIGKILL at a random moment of `train --overwrite` / `train --resume`: the folder still
    holds a loadable stage and resume file (each is written atomically), and --resume goes on."""
    d = _copy(cascade_dir, tmp_path / "d")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    extra = ["--resume" if resume else "--overwrite", "--steps", str(STEPS), "--set", "max_seconds=None"]
    p = subprocess.Popen(_train_cmd(d, *extra), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    time.sleep(random.Random(int(resume)).uniform(3.0, 8.0))
    p.send_signal(signal.SIGKILL)
    p.wait()
    st = load_stage(d / "imagen_base.safetensors")
    assert st.config.name == "base"
    r = subprocess.run(_train_cmd(d, "--resume", "--steps", str(STEPS), "--set", "max_seconds=None"), env=env,
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["steps"] == STEPS
    assert load_stage(d / "imagen_base.safetensors").config.name == "base"


# ---------------------------------------------------------------------------------------------
# sample: checked first, written as it goes, never mixed
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, names", [
    (["--guidance", "inf"], ["--guidance"]),
    (["--guidance", "nan"], ["--guidance"]),
    (["--guidance", "-1"], ["--guidance"]),
    (["--seed", str(2 ** 64)], ["--seed"]),
    (["--seed", "-1"], ["--seed"]),
    (["--n", "0"], ["--n"]),
    (["--steps", "0"], ["--steps"]),
    (["--steps", "100000"], ["steps"]),
    (["--batch-size", "0"], ["--batch-size"]),
    (["--threads", "0"], ["--threads"]),
])
def test_sample_bad_values_one_line(cascade_dir, tmp_path, capsys, argv, names):
    out = tmp_path / "o"
    rc = cli.main(["sample", "--prompt", "a red circle", "--out", str(out), "--checkpoint-dir", str(cascade_dir),
                   *argv])
    assert rc == 2
    _one_line_error(capsys, *names)
    # nothing written: no PNG, no settings record (a lock file may stay: it holds no result)
    assert not out.exists() or not [f for f in out.iterdir() if f.name != ".sample.lock"]
    # and so the same folder takes a good run afterwards
    assert cli.main(["sample", "--prompt", "a red circle", "--n", "1", "--steps", "2", "--out", str(out),
                     "--checkpoint-dir", str(cascade_dir)]) == 0


def test_sample_bogus_profile_is_an_error(cascade_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("IMAGEN_EDU_PROFILE", "bogus")
    assert cli.main(["sample", "--prompt", "a red circle", "--out", str(tmp_path), "--checkpoint-dir",
                     str(cascade_dir)]) == 2
    _one_line_error(capsys, "bogus")


@pytest.mark.parametrize("kind", ["dir", "binary"])
def test_bad_prompts_file_one_line(cascade_dir, tmp_path, capsys, kind):
    f = tmp_path / "p"
    if kind == "dir":
        f.mkdir()
    else:
        f.write_bytes(bytes(range(256)) * 4)
    assert cli.main(["sample", "--prompts-file", str(f), "--out", str(tmp_path / "o"), "--checkpoint-dir",
                     str(cascade_dir)]) == 2
    _one_line_error(capsys, "--prompts-file")


def test_sample_writes_each_batch_and_a_rerun_skips_it(cascade_dir, tmp_path, capsys, monkeypatch):
    """A crash after the first batch leaves that batch on disk; the rerun makes only the rest."""
    out = tmp_path / "o"
    argv = ["sample", "--prompt", "a red circle", "--n", "5", "--steps", "2", "--batch-size", "2", "--out", str(out),
            "--checkpoint-dir", str(cascade_dir)]
    real = cli.save_png
    calls = []

    def dying(img, path):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(path)
        return real(img, path)

    monkeypatch.setattr(cli, "save_png", dying)
    assert cli.main(argv) == 130
    assert sorted(p.name for p in out.glob("*.png")) == ["0_0.png", "0_1.png"]
    monkeypatch.setattr(cli, "save_png", real)
    first = (out / "0_0.png").read_bytes()
    assert cli.main(argv) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["written"] == 3 and res["skipped"] == 2
    assert sorted(p.name for p in out.glob("*.png")) == [f"0_{k}.png" for k in range(5)]
    assert (out / "0_0.png").read_bytes() == first


def test_sample_refuses_to_mix_settings_and_overwrite_replaces(cascade_dir, tmp_path, capsys):
    out = tmp_path / "o"
    base = ["sample", "--prompt", "a red circle", "--n", "2", "--steps", "2", "--out", str(out), "--checkpoint-dir",
            str(cascade_dir)]
    assert cli.main(base + ["--seed", "1"]) == 0
    old = (out / "0_0.png").read_bytes()
    capsys.readouterr()
    assert cli.main(base + ["--seed", "2"]) == 2
    _one_line_error(capsys, "other settings", "seed", "--overwrite")
    assert (out / "0_0.png").read_bytes() == old
    assert cli.main(base + ["--seed", "2", "--overwrite"]) == 0
    assert (out / "0_0.png").read_bytes() != old
    assert json.loads((out / "sample.json").read_text())["seed"] == 2
    assert not list(out.glob(".sample-new.*"))


def test_sample_over_unrecorded_pngs_needs_overwrite_and_replaces_them(cascade_dir, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "0_0.png").write_bytes(b"not made by sample")
    argv = ["sample", "--prompt", "a red circle", "--n", "1", "--steps", "2", "--out", str(out), "--checkpoint-dir",
            str(cascade_dir)]
    assert cli.main(argv) == 2
    _one_line_error(capsys, "no 'sample' run recorded", "--overwrite")
    assert (out / "0_0.png").read_bytes() == b"not made by sample"
    assert cli.main([*argv, "--overwrite"]) == 0
    assert (out / "0_0.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "sample.json").is_file() and not list(out.glob(".sample-new.*"))


# ---------------------------------------------------------------------------------------------
# eval: the output location is checked before the evaluation runs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["folder", "existing"])
def test_eval_out_is_checked_before_evaluating(cascade_dir, tmp_path, capsys, monkeypatch, kind):
    target = tmp_path / "res"
    if kind == "folder":
        target.mkdir()
    else:
        target.write_text("{}")
    monkeypatch.setattr(cli, "evaluate_cascade", lambda *a, **k: pytest.fail("evaluated before the check"))
    assert cli.main(["eval", "--checkpoint-dir", str(cascade_dir), "--n", "2", "--out", str(target)]) == 2
    _one_line_error(capsys, "--out")
    if kind == "existing":
        assert target.read_text() == "{}"


def test_eval_out_overwrite_writes_json(cascade_dir, tmp_path, capsys):
    target = tmp_path / "res.json"
    target.write_text("{}")
    assert cli.main(["eval", "--checkpoint-dir", str(cascade_dir), "--n", "2", "--steps", "2", "--out", str(target),
                     "--overwrite"]) == 0
    assert json.loads(target.read_text())["test"]["n"] == 2


def test_an_unexpected_error_says_it_is_a_bug_and_where_to_report(cascade_dir, capsys, monkeypatch):
    monkeypatch.setattr(cli, "evaluate_cascade", lambda *a, **k: 1 / 0)
    assert cli.main(["eval", "--checkpoint-dir", str(cascade_dir), "--n", "2"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "bug" in err and "Reporting a problem" in err
    assert len(err.strip().splitlines()) == 1



# ---------------------------------------------------------------------------------------------
# every command: a bad value is one line and exit 2, before any work
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, names", [
    (["train", "--stage", "base", "--steps", "-5"], ["--steps"]),
    (["train", "--stage", "base", "--seed", "-1"], ["--seed"]),
    (["train", "--stage", "base", "--seed", str(2 ** 63)], ["--seed"]),
    (["train", "--stage", "base", "--set", "guidance=1e999"], ["guidance"]),
    (["train", "--stage", "base", "--set", "guidance=nan"], ["guidance"]),
    (["train", "--stage", "base", "--set", "seed=1.7"], ["seed"]),
    (["train", "--stage", "base", "--set", "lr=0"], ["lr"]),
    (["train", "--stage", "base", "--set", "batch_size=0"], ["batch_size"]),
    (["train", "--stage", "base", "--threads", "0"], ["--threads"]),
    (["train", "--stage", "base", "--steps", "abc"], ["--steps", "abc"]),
    (["train", "--stage", "sr9"], ["--stage", "sr9"]),
    (["train", "--stage", "base", "--profile", "bogus"], ["bogus"]),
    (["train", "--stage", "base", "--text-encoder", "nope"], ["nope"]),
    (["train", "--stage", "base", "--data", "folder:/no/such/folder"], ["/no/such/folder"]),
    (["eval", "--n", "0"], ["--n"]),
    (["eval", "--guidance", "inf"], ["--guidance"]),
    (["eval", "--batch-size", "-2"], ["--batch-size"]),
    (["bench", "--train-steps", "0"], ["--train-steps"]),
    (["embed", "--encoder", "lm", "--captions", "/no/such/file.txt"], ["/no/such/file.txt"]),
    (["embed", "--encoder", "lm", "--batch-size", "0", "--captions", "x"], ["--batch-size"]),
])
def test_every_command_bad_values_one_line(tmp_path, capsys, monkeypatch, argv, names):
    from imagen_edu import stage_training

    monkeypatch.setattr(stage_training, "_train_stage", lambda *a, **k: pytest.fail("trained before the check"))
    monkeypatch.setattr(cli, "evaluate_cascade", lambda *a, **k: pytest.fail("evaluated before the check"))
    monkeypatch.setattr(cli, "bench_stage", lambda *a, **k: pytest.fail("benchmarked before the check"))
    monkeypatch.setenv("IMAGEN_EDU_PROFILE", "ci")
    if argv[0] in ("train", "embed"):
        argv = [*argv, "--out", str(tmp_path / "o")]
        if argv[0] == "train" and "--profile" not in argv:
            argv += ["--profile", "ci"]
    assert cli.main(argv) == 2
    _one_line_error(capsys, *names)


def test_embed_overwrite_keeps_the_old_cache_until_the_new_one_is_complete(tmp_path, capsys, monkeypatch):
    """embed --overwrite writes the new cache beside the old one and swaps it in whole; a crash while
    encoding leaves the old cache loadable, and a folder holding other files is never replaced."""
    from imagen_edu import embcache

    caps = tmp_path / "caps.txt"
    caps.write_text("a red circle\na blue square\n")
    out = tmp_path / "cache"
    argv = ["embed", "--encoder", "lm", "--captions", str(caps), "--out", str(out), "--dtype", "float32"]
    assert cli.main(argv) == 0
    before = {f.name: f.read_bytes() for f in out.iterdir()}

    def crash(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(embcache, "_write_cache", crash)
    assert cli.main([*argv, "--overwrite"]) == 130
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    assert len(embcache.EmbeddingCache(out)) == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".cache.")]
    monkeypatch.undo()
    caps.write_text("a red circle\na blue square\na green triangle\n")
    assert cli.main([*argv, "--overwrite"]) == 0
    assert len(embcache.EmbeddingCache(out)) == 3
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    capsys.readouterr()
    assert cli.main(["embed", "--encoder", "lm", "--captions", str(caps), "--out", str(mine), "--overwrite"]) == 2
    _one_line_error(capsys, "not part of an embedding cache")
    assert (mine / "notes.txt").read_text() == "keep me"
