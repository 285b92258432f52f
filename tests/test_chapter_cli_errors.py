"""The chapter command lines under bad input: one error path, arguments checked before any work.

``python -m imagen_edu.lm``, ``.clip`` (``.clip_eval``), ``.evaluate``, ``.ddpm_images`` and
``.data.shapes`` (and ``checkpoints.model_cli``, the train/eval command line of the LM and CLIP)
answer every user's mistake with exit status 2 and exactly one line on stderr that names the
argument and what was given; no traceback, and no training, sampling or loading first. The eval
output of the cascade is valid JSON and claims no score for captions that were not there.
"""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from imagen_edu import checkpoints, clip_eval, ddpm_images, evaluate, lm
from imagen_edu.data import shapes

REPO_ROOT = Path(__file__).resolve().parents[1]
SHIPPED = REPO_ROOT / "data" / "checkpoints"

MAINS = {"lm": lm.main, "clip": clip_eval.main, "evaluate": evaluate.main, "ddpm_images": ddpm_images.main,
         "shapes": shapes.main}


class WorkStarted(Exception):
    """Raised by the stand-ins of training: an argument check came too late."""


@pytest.fixture
def bad_files(tmp_path):
    """Paths of every kind of wrong file, by placeholder name."""
    (tmp_path / "pickle.pt").write_bytes(pickle.dumps({"w": [1.0, 2.0]}))
    torch.save({"w": torch.zeros(2)}, tmp_path / "torchsave.pt")
    (tmp_path / "random.bin").write_bytes(os.urandom(4096))
    (tmp_path / "empty.safetensors").write_bytes(b"")
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "a_file").write_text("x")
    return {"MISSING": str(tmp_path / "missing.safetensors"), "DIR": str(tmp_path / "a_folder"),
            "PICKLE": str(tmp_path / "pickle.pt"), "TORCHSAVE": str(tmp_path / "torchsave.pt"),
            "RANDOM": str(tmp_path / "random.bin"), "EMPTY": str(tmp_path / "empty.safetensors"),
            "NOPARENT": str(tmp_path / "no" / "such" / "m.safetensors"),
            "FILEPARENT": str(tmp_path / "a_file" / "m.safetensors"), "OUT": str(tmp_path / "m.safetensors"),
            "LM": str(SHIPPED / "lm.safetensors"), "CLIP": str(SHIPPED / "clip.safetensors"),
            "BASE": str(SHIPPED / "imagen_base.safetensors")}


@pytest.fixture
def no_work(monkeypatch):
    """Make every training entry point of the chapter CLIs fail loudly if it is reached."""
    def refuse(*a, **k):
        raise WorkStarted("training started before the arguments were checked")

    monkeypatch.setattr(lm, "train_lm", refuse)
    monkeypatch.setattr(clip_eval, "train_clip", refuse)
    monkeypatch.setattr(ddpm_images, "train_shapes", refuse)
    monkeypatch.setattr(shapes, "benchmark", refuse)
    monkeypatch.setattr(evaluate, "selftest", refuse)


# (command line, argv, the argument the line must name, the value it must quote)
CASES = [
    ("lm", ["eval", "--n", "0"], "--n", "0"),
    ("lm", ["eval", "--n", "-3"], "--n", "-3"),
    ("lm", ["eval", "--n", "abc"], "--n", "abc"),
    ("lm", ["eval", "--n", "1.5"], "--n", "1.5"),
    ("lm", ["eval", "--seed", "-1"], "--seed", "-1"),
    ("lm", ["eval", "--ckpt", "MISSING"], "--ckpt", "MISSING"),
    ("lm", ["eval", "--ckpt", "DIR"], "--ckpt", "DIR"),
    ("lm", ["eval", "--ckpt", "PICKLE"], "--ckpt", "PICKLE"),
    ("lm", ["eval", "--ckpt", "TORCHSAVE"], "--ckpt", "TORCHSAVE"),
    ("lm", ["eval", "--ckpt", "RANDOM"], "--ckpt", "RANDOM"),
    ("lm", ["eval", "--ckpt", "EMPTY"], "--ckpt", "EMPTY"),
    ("lm", ["eval", "--ckpt", "CLIP"], "--ckpt", "CLIP"),
    ("lm", ["eval", "--ckpt", "BASE"], "--ckpt", "BASE"),
    ("lm", ["eval", "--name", "no_such_model"], "--name", "no_such_model"),
    ("lm", ["train", "--no-manifest", "--out", "DIR"], "--out", "DIR"),
    ("lm", ["train", "--no-manifest", "--out", "NOPARENT"], "--out", "NOPARENT"),
    ("lm", ["train", "--no-manifest", "--out", "FILEPARENT"], "--out", "FILEPARENT"),
    ("lm", ["train", "--no-manifest", "--out", "OUT", "--profile", "bogus"], "--profile", "bogus"),
    ("lm", ["train", "--no-manifest", "--out", "OUT", "--seed", "-1"], "--seed", "-1"),
    ("lm", ["train", "--no-manifest", "--out", "OUT", "--seed", "1.7"], "--seed", "1.7"),
    ("lm", ["train", "--no-manifest", "--out", "OUT", "--seed", str(2 ** 63)], "--seed", str(2 ** 63)),
    ("lm", ["fit"], "cmd", "fit"),
    ("clip", ["eval", "--ckpt", "LM"], "--ckpt", "LM"),
    ("clip", ["eval", "--ckpt", "PICKLE"], "--ckpt", "PICKLE"),
    ("clip", ["eval", "--ckpt", "DIR"], "--ckpt", "DIR"),
    ("clip", ["eval", "--ckpt", "MISSING"], "--ckpt", "MISSING"),
    ("clip", ["train", "--no-manifest", "--out", "DIR"], "--out", "DIR"),
    ("clip", ["train", "--no-manifest", "--out", "NOPARENT"], "--out", "NOPARENT"),
    ("evaluate", ["selftest", "--n", "0"], "--n", "0"),
    ("evaluate", ["selftest", "--n", "-3"], "--n", "-3"),
    ("evaluate", ["selftest", "--seed", "-1"], "--seed", "-1"),
    ("evaluate", ["judge"], "command", "judge"),
    ("ddpm_images", ["bench", "--n-images", "0"], "--n-images", "0"),
    ("ddpm_images", ["bench", "--batch-size", "0"], "--batch-size", "0"),
    ("ddpm_images", ["bench", "--batch-size", "-3"], "--batch-size", "-3"),
    ("ddpm_images", ["bench", "--threads", "0"], "--threads", "0"),
    ("ddpm_images", ["bench", "--steps", "0,5"], "--steps", "0,5"),
    ("ddpm_images", ["bench", "--train-steps", "0"], "--train-steps", "0"),
    ("ddpm_images", ["bench", "--max-seconds", "nan"], "--max-seconds", "nan"),
    ("ddpm_images", ["bench", "--max-seconds", "-1"], "--max-seconds", "-1"),
    ("ddpm_images", ["bench", "--seed", "-1"], "--seed", "-1"),
    ("ddpm_images", ["bench", "--checkpoint", "MISSING"], "--checkpoint", "MISSING"),
    ("ddpm_images", ["bench", "--checkpoint", "DIR"], "--checkpoint", "DIR"),
    ("ddpm_images", ["bench", "--checkpoint", "PICKLE"], "--checkpoint", "PICKLE"),
    ("ddpm_images", ["bench", "--checkpoint", "RANDOM"], "--checkpoint", "RANDOM"),
    ("ddpm_images", ["bench", "--checkpoint", "LM"], "--checkpoint", "LM"),
    ("ddpm_images", ["bench", "--checkpoint", "LM", "--save", "OUT"], "--save", "--save"),
    ("ddpm_images", ["bench", "--save", "DIR"], "--save", "DIR"),
    ("ddpm_images", ["bench", "--save", "NOPARENT"], "--save", "NOPARENT"),
    ("shapes", ["bench", "--batch-size", "0"], "--batch-size", "0"),
    ("shapes", ["bench", "--batches", "-3"], "--batches", "-3"),
    ("shapes", ["bench", "--threads", "0"], "--threads", "0"),
    ("shapes", ["bench", "--batch-size", "many"], "--batch-size", "many"),
]


@pytest.mark.parametrize("cli, argv, arg, given", CASES, ids=[f"{c[0]}:{' '.join(c[1])}" for c in CASES])
def test_bad_argument_is_one_line_and_exit_2(cli, argv, arg, given, bad_files, no_work, capsys):
    """Each bad value of each chapter CLI: exit 2, exactly one line on stderr naming the argument and
    quoting what was given, no traceback, nothing printed on stdout, and no training reached."""
    argv = [bad_files.get(a, a) for a in argv]
    given = bad_files.get(given, given)
    rc = MAINS[cli](argv)
    out, err = capsys.readouterr()
    assert rc == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), err
    assert "Traceback" not in err and "internal error" not in err and out == ""
    assert ": error: " in lines[0] and arg in lines[0] and given in lines[0], lines[0]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, a folder nobody can write in")
@pytest.mark.parametrize("cli, argv", [("lm", ["train", "--no-manifest"]), ("clip", ["train", "--no-manifest"]),
                                       ("ddpm_images", ["bench"])])
def test_unwritable_folder_is_found_before_training(cli, argv, no_work, capsys):
    """A destination in a folder that refuses new files (here /proc; a read-only folder or mount is the
    same for anyone but root) stops the command before any training, naming the argument."""
    flag = "--save" if cli == "ddpm_images" else "--out"
    assert MAINS[cli](argv + [flag, "/proc/imagen_edu_test.safetensors"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and flag in err and "cannot write in /proc" in err


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True,
                    reason="root writes into read-only folders")
def test_read_only_folder_is_found_before_training(tmp_path, no_work, capsys):
    """``--out`` inside a read-only folder: exit 2 before training (as a normal user)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert lm.main(["train", "--no-manifest", "--out", str(ro / "m.safetensors")]) == 2
    finally:
        ro.chmod(0o755)
    assert "--out" in capsys.readouterr().err


def test_manifest_that_cannot_be_read_is_found_before_training(tmp_path, monkeypatch, no_work, capsys):
    """Recording a run needs the manifest: a corrupt one stops ``train`` before training, not after."""
    bad = tmp_path / "manifest.json"
    bad.write_text("{not json")
    monkeypatch.setattr(checkpoints, "manifest_path", lambda: bad)
    assert lm.main(["train", "--out", str(tmp_path / "m.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "manifest" in err and "not valid JSON" in err


def _toy_cli(tmp_path, train):
    """model_cli with stand-in callables (the shared train/eval command line)."""
    def load_checkpoint(ckpt, name):
        return checkpoints.load(ckpt)

    return lambda argv: checkpoints.model_cli(
        argv, prog="python -m imagen_edu.toy", description="toy", name="toy", filename="toy.safetensors",
        train_and_measure=train, load_checkpoint=load_checkpoint,
        evaluate_checkpoint=lambda m, args, rec: {"ok": 1})


def test_a_failed_run_keeps_the_finished_checkpoint(tmp_path, capsys):
    """Writing is atomic (write new, then rename): a run that dies after writing part of its file,
    or before writing it, leaves the earlier checkpoint at --out whole and no temporary file."""
    out = tmp_path / "m.safetensors"
    checkpoints.save(out, {"w": torch.ones(3)}, {"run": 1})
    before = out.read_bytes()

    def dies_while_saving(prof, seed, path):
        def partial(tensors, tmp, metadata=None):
            Path(tmp).write_bytes(b"half a checkpoint")
            raise OSError(28, "No space left on device", str(tmp))
        orig = checkpoints.safetensors.torch.save_file
        checkpoints.safetensors.torch.save_file = partial
        try:
            checkpoints.save(path, {"w": torch.zeros(3)}, {"run": 2})
        finally:
            checkpoints.safetensors.torch.save_file = orig

    rc = _toy_cli(tmp_path, dies_while_saving)(["train", "--no-manifest", "--out", str(out)])
    assert rc == 2 and "No space left on device" in capsys.readouterr().err
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]

    def crashes(prof, seed, path):
        raise RuntimeError("a bug while training")

    assert _toy_cli(tmp_path, crashes)(["train", "--no-manifest", "--out", str(out)]) == 1
    assert "internal error" in capsys.readouterr().err
    assert out.read_bytes() == before and checkpoints.load(out)[1] == {"run": 1}


def test_a_bad_argument_never_touches_an_existing_checkpoint(tmp_path, no_work, capsys):
    """A refused ``train`` (bad seed) leaves the file already at ``--out`` byte for byte."""
    out = tmp_path / "lm.safetensors"
    out.write_bytes((SHIPPED / "lm.safetensors").read_bytes())
    assert lm.main(["train", "--no-manifest", "--out", str(out), "--seed", "-5"]) == 2
    assert out.read_bytes() == (SHIPPED / "lm.safetensors").read_bytes()


def test_checkpoint_load_never_unpickles(tmp_path):
    """A pickle given as a checkpoint is refused as "not a safetensors checkpoint", never loaded: a
    pickle that would run code when unpickled (it would create a file) runs nothing."""
    marker = tmp_path / "code_ran"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    f = tmp_path / "evil.safetensors"
    f.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ValueError, match=f"{f}.*not a safetensors checkpoint.*pickle"):
        checkpoints.load(f)
    assert not marker.exists()


@pytest.mark.parametrize("module, argv, arg", [
    ("imagen_edu.lm", ["eval", "--n", "0"], "--n"),
    ("imagen_edu.clip", ["eval", "--ckpt", "LM"], "--ckpt"),
    ("imagen_edu.clip_eval", ["eval", "--ckpt", "PICKLE"], "--ckpt"),
    ("imagen_edu.evaluate", ["selftest", "--n", "-3"], "--n"),
    ("imagen_edu.ddpm_images", ["bench", "--batch-size", "0"], "--batch-size"),
    ("imagen_edu.data.shapes", ["bench", "--threads", "0"], "--threads"),
])
def test_module_entry_points_use_the_one_error_path(module, argv, arg, bad_files):
    """``python -m MODULE`` itself (its ``__main__`` block) exits 2 with one line and no traceback."""
    argv = [bad_files.get(a, a) for a in argv]
    done = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True, cwd=REPO_ROOT,
                          env=os.environ | {"OMP_NUM_THREADS": "1"}, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(done.stderr.splitlines()) == 1 and arg in done.stderr and "Traceback" not in done.stderr
    prog = "imagen_edu.clip" if module == "imagen_edu.clip_eval" else module  # clip_eval is clip's command line
    assert done.stderr.startswith(f"python -m {prog}: error: ")


# ---------------------------------------------------------------------------------------------
# the cascade's eval output: valid JSON, no score for captions that were not there
# ---------------------------------------------------------------------------------------------
class RenderingCascade:
    """A stand-in cascade that "samples" by rendering each caption: the judge finds every one right."""

    resolution = 32

    def sample(self, captions, n=1, seed=0, **kw):
        return shapes.render_captions(captions, self.resolution, seed=seed)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_evaluate_cascade_output_is_strict_json(n):
    """``evaluate_cascade`` with n = 1, 2, 3 gives valid JSON (``allow_nan=False``); an accuracy over
    no caption (the relation and ``all_two_object`` at n = 1: no two-object caption) is ``None``,
    never NaN nor 0.0; every other figure is a number, here 1.0 since the images are the captions'."""
    res = evaluate.evaluate_cascade(RenderingCascade(), n=n, progress=False)
    text = json.dumps(res, allow_nan=False)
    for split in ("test", "heldout"):
        r = json.loads(text)[split]
        assert (r["n"], r["n_one_object"], r["n_two_object"]) == (n, n - n // 2, n // 2)
        for key in ("all", "colour", "shape", "count", "all_one_object"):
            assert r[key] == 1.0, (split, key)
        for key in ("relation", "all_two_object"):
            assert r[key] == (None if n == 1 else 1.0), (split, key, r[key])


@pytest.mark.parametrize("n", [0, -3, 1.5, True, "2"])
def test_evaluate_cascade_checks_n_before_sampling(n):
    """``n`` must be an int >= 1, checked before the cascade samples anything."""
    class Refuses(RenderingCascade):
        def sample(self, *a, **k):
            raise WorkStarted("sampled before checking n")

    with pytest.raises((ValueError, TypeError), match="n must be an int >= 1"):
        evaluate.evaluate_cascade(Refuses(), n=n, progress=False)


def test_attribute_accuracy_relation_is_none_without_two_object_captions():
    """The judge's relation accuracy is a mean over two-object captions only: with none it is
    ``None`` (no score), not NaN (invalid JSON) nor 0."""
    caps = ["a red circle", "a blue square"]
    r = evaluate.attribute_accuracy(shapes.render_captions(caps, 32), caps)
    assert r["relation"] is None and r["n_two_object"] == 0 and r["all"] == 1.0
    json.dumps({k: v for k, v in r.items() if k != "verdicts"}, allow_nan=False)


def test_unknown_profile_in_the_environment_is_refused_before_training(monkeypatch, no_work, capsys):
    """``IMAGEN_EDU_PROFILE=bogus`` is not ignored: the bench and ``train`` stop before training, naming it."""
    monkeypatch.setenv("IMAGEN_EDU_PROFILE", "bogus")
    assert ddpm_images.main(["bench", "--n-images", "2"]) == 2
    assert lm.main(["train", "--no-manifest"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and all("unknown compute profile 'bogus'" in x for x in lines)
