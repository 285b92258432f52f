"""Tests of imagen_edu.checkpoints: safetensors round trip, atomic writes, the sha256 manifest."""

import hashlib
import json

import pytest
import torch

from imagen_edu import checkpoints as ck


def _state():
    torch.manual_seed(0)
    return {"w": torch.randn(3, 4), "b": torch.arange(5), "nested.x": torch.ones(2, dtype=torch.float16)}


def test_round_trip_tensors_and_metadata(tmp_path):
    state = _state()
    meta = {"config": {"d": 4, "names": ["a", "b"]}, "seed": 3, "note": "hello"}
    path = ck.save(tmp_path / "m.safetensors", state, meta)
    got, got_meta = ck.load(path)
    assert set(got) == set(state)
    for k in state:
        assert got[k].dtype == state[k].dtype
        assert torch.equal(got[k], state[k])
    assert got_meta == meta
    # no temporary files left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_tied_weights_are_saved(tmp_path):
    w = torch.randn(4, 4)
    ck.save(tmp_path / "t.safetensors", {"a": w, "b": w})  # shared storage: stored twice, no error
    got, _ = ck.load(tmp_path / "t.safetensors")
    assert torch.equal(got["a"], got["b"])


def test_save_is_atomic_on_failure(tmp_path):
    path = tmp_path / "m.safetensors"
    ck.save(path, _state(), {"v": 1})
    before = path.read_bytes()
    with pytest.raises(TypeError):
        ck.save(path, _state(), {"bad": object()})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_sha256_matches_hashlib(tmp_path):
    path = ck.save(tmp_path / "m.safetensors", _state())
    assert ck.sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_truncated_and_corrupt_files_raise_value_error(tmp_path):
    path = ck.save(tmp_path / "m.safetensors", _state())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        ck.load(path)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="not a safetensors checkpoint"):
        ck.load(path)
    with pytest.raises(FileNotFoundError):
        ck.load(tmp_path / "missing.safetensors")


def test_manifest_register_verify_and_mismatch(tmp_path):
    manifest = tmp_path / "manifest.json"
    path = ck.save(tmp_path / "m.safetensors", _state(), {"k": 1})
    ck.register("other", path, command="x", seed=1, metrics={}, manifest=manifest)
    ent = ck.register("toy", path, command="python make.py", seed=7, metrics={"acc": 0.5},
                      profile="ci", manifest=manifest)
    data = json.loads(manifest.read_text())
    assert set(data) == {"other", "toy"}  # registering keeps the other entries
    assert ent["file"] == "m.safetensors" and ent["sha256"] == ck.sha256(path)
    for key in ("file", "sha256", "command", "seed", "metrics", "created", "profile"):
        assert key in data["toy"]
    state, meta = ck.load_shipped("toy", manifest=manifest)
    assert meta == {"k": 1} and torch.equal(state["w"], _state()["w"])
    # alter one byte in the tensor data: the hash no longer matches
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="sha256"):
        ck.load_shipped("toy", manifest=manifest)
    with pytest.raises(ValueError, match="known"):
        ck.load_shipped("nope", manifest=manifest)


def test_bad_state_dict_types():
    with pytest.raises(TypeError):
        ck.save("/tmp/never.safetensors", {"a": [1, 2]})
    with pytest.raises(TypeError):
        ck.save("/tmp/never.safetensors", {})


def test_shipped_manifest_entries_match_their_files():
    for name in ck.read_manifest():
        ck.verify(name)  # raises on a missing file or a hash mismatch


def test_same_content_gives_the_same_bytes(tmp_path):
    meta = {"a": 1, "b": [1, 2], "c": {"x": "y"}, "d": "text", "e": 2.5, "f": None}
    hashes = {ck.sha256(ck.save(tmp_path / f"m{i}.safetensors", _state(), meta)) for i in range(4)}
    assert len(hashes) == 1


def test_foreign_safetensors_metadata_is_returned_raw(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "f.safetensors"), metadata={"format": "pt"})
    state, meta = ck.load(tmp_path / "f.safetensors")
    assert meta == {"format": "pt"} and torch.equal(state["w"], torch.zeros(2))


def test_model_cli_train_registers_and_eval_reports(tmp_path, monkeypatch, capsys):
    """The shared ``{train,eval}`` command line, with stand-in callables and a temporary manifest."""
    monkeypatch.setattr(ck, "manifest_path", lambda: tmp_path / "manifest.json")
    monkeypatch.delenv("IMAGEN_EDU_PROFILE", raising=False)
    calls = []

    def train_and_measure(prof, seed, out):
        calls.append(("train", prof.name, seed, out.name))
        ck.save(out, _state(), {"seed": seed})
        return {"acc": 0.5, "train_seconds": 1.5}

    def load_checkpoint(ckpt, name):
        calls.append(("load", ckpt, name))
        return "model"

    def evaluate_checkpoint(model, args, recorded):
        calls.append(("eval", model, args.k, recorded))
        return {"acc": 0.25}

    kw = dict(prog="python -m imagen_edu.toy", description="toy", name="toy", filename="toy.safetensors",
              train_and_measure=train_and_measure, load_checkpoint=load_checkpoint,
              evaluate_checkpoint=evaluate_checkpoint,
              extra_eval_args=lambda ev: ev.add_argument("--k", type=int, default=7))
    out = tmp_path / "toy.safetensors"
    assert ck.model_cli(["train", "--profile", "ci", "--seed", "3", "--out", str(out)], **kw) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"file": str(out), "sha256": ck.sha256(out), "acc": 0.5, "train_seconds": 1.5}
    ent = ck.entry("toy")
    assert ent["command"] == f"python -m imagen_edu.toy train --profile ci --seed 3 --out {out}"
    assert (ent["seed"], ent["profile"], ent["metrics"]) == (3, "ci", {"acc": 0.5, "train_seconds": 1.5})
    assert calls[0] == ("train", "ci", 3, "toy.safetensors")

    assert ck.model_cli(["eval"], **kw) == 0
    assert json.loads(capsys.readouterr().out) == {"acc": 0.25, "train_seconds": 1.5}
    assert calls[1:] == [("load", None, "toy"), ("eval", "model", 7, {"acc": 0.5, "train_seconds": 1.5})]

    assert ck.model_cli(["eval", "--ckpt", str(out), "--k", "2"], **kw) == 0
    assert json.loads(capsys.readouterr().out) == {"acc": 0.25}
    assert calls[3:] == [("load", str(out), "toy"), ("eval", "model", 2, {})]

    assert ck.model_cli([], **kw) == 2  # one line on stderr, no usage text (the error path of errors.run_cli)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "required" in err and "Traceback" not in err
