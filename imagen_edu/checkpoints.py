"""Checkpoints: safetensors files with JSON metadata, and the sha256 manifest of shipped ones.

Every model of the book (the chapter-2 language model, CLIP, the Imagen cascade) is stored the
same way:

* :func:`save` writes any ``state_dict`` plus a metadata dict to a ``.safetensors`` file,
  atomically (a temporary file in the same folder, then ``os.replace``), so a crash or a
  Colab disconnect never leaves half a checkpoint under the real name. Safetensors stores only
  tensors and strings: loading a checkpoint never runs code, unlike ``torch.load`` of a pickle.
* :func:`load` reads it back and turns a file that is not safetensors (a pickle, random bytes,
  an empty file, a folder) or a truncated or corrupt one into a clear ``ValueError`` naming it.
* The manifest ``data/checkpoints/manifest.json`` maps a *name* to a shipped file with its
  sha256, the exact command that made it, the seed, the compute profile and the metrics measured
  right after training. :func:`load_shipped` refuses a file whose hash does not match.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path

import safetensors.torch
import torch
from safetensors import safe_open

from . import DATA_DIR, profiles
from .arguments import ArgumentParser, check_seed, input_file, output_file
from .outputs import atomic_write
from .errors import run_cli

__all__ = [
    "CheckpointError",
    "checkpoint_dir",
    "manifest_path",
    "save",
    "load",
    "sha256",
    "read_manifest",
    "write_manifest",
    "register",
    "entry",
    "verify",
    "load_shipped",
    "model_cli",
]

#: the single safetensors metadata key under which :func:`save` stores its JSON document. One key
#: (not one per entry) because safetensors writes metadata keys in an arbitrary order: with one
#: key, the same weights and metadata always give the same bytes, hence the same sha256.
META_KEY = "imagen_edu"
FORMAT = "imagen_edu.checkpoints/1"
#: safetensors' own bound on the JSON header (100 MB): a longer one means the file is not safetensors
MAX_HEADER_BYTES = 100_000_000


class CheckpointError(ValueError):
    """A checkpoint file that is missing from the manifest, corrupt, truncated or altered."""


def checkpoint_dir() -> Path:
    """``imagen_edu.DATA_DIR / "checkpoints"``: where shipped checkpoints and the manifest live."""
    return Path(DATA_DIR) / "checkpoints"


def manifest_path() -> Path:
    """Path of ``data/checkpoints/manifest.json``."""
    return checkpoint_dir() / "manifest.json"


# ---------------------------------------------------------------------------------------------
# one file
# ---------------------------------------------------------------------------------------------
def save(path, state_dict: dict, metadata: dict | None = None) -> Path:
    """Write ``state_dict`` (name -> tensor) and ``metadata`` to ``path`` as safetensors, atomically.

    Args:
        path: destination, usually ``*.safetensors``.
        state_dict: ``{name: torch.Tensor}``, e.g. ``model.state_dict()``. Tensors are copied to
            the CPU and made contiguous; tied (shared) weights are stored once per name.
        metadata: JSON-serialisable values (configs, vocabularies, seeds...); each value is
            stored as one sorted JSON document in safetensors' string metadata and decoded
            again by :func:`load`. Equal inputs give byte-identical files.

    Returns:
        The path written.
    """
    if not isinstance(state_dict, dict) or not state_dict:
        raise TypeError("state_dict must be a non-empty dict of name -> torch.Tensor")
    tensors = {}
    for k, v in state_dict.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise TypeError(f"state_dict entries must be str -> torch.Tensor, got {k!r}: {type(v).__name__}")
        tensors[k] = v.detach().to("cpu").contiguous().clone()
    metadata = dict(metadata or {})
    for k, v in metadata.items():
        if not isinstance(k, str):
            raise TypeError(f"metadata keys must be str, got {k!r}")
        try:
            json.dumps(v)
        except (TypeError, ValueError) as err:
            raise TypeError(f"metadata[{k!r}] is not JSON-serialisable: {err}") from None
    meta = {META_KEY: json.dumps({"format": FORMAT, "metadata": metadata}, sort_keys=True)}
    path = Path(path)
    atomic_write(path, lambda tmp: safetensors.torch.save_file(tensors, tmp, metadata=meta))
    return path


def _check_header(path: Path) -> None:
    """``CheckpointError`` unless ``path`` starts like a safetensors file.

    A safetensors file is an 8-byte little-endian length ``N``, then an ``N``-byte JSON object
    (the tensors' names, dtypes, shapes and offsets, and the metadata), then the tensor bytes.
    Checking this first turns a pickle, random bytes or an empty file into one clear message
    before the safetensors library sees them.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        text = f.read(min(n, MAX_HEADER_BYTES)) if n >= 2 else b""
    if text[:1] == b"{" and n <= MAX_HEADER_BYTES:  # a safetensors header, whole or cut
        if n > size - 8:
            why = f"its header should hold {n} bytes but the file has {size} bytes in all"
        else:
            try:
                if isinstance(json.loads(text.decode("utf-8")), dict):
                    return
            except (UnicodeDecodeError, json.JSONDecodeError):
                pass
            why = "its header is not valid JSON"
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({why}); re-create it or restore "
                              "it from the repository")
    if size == 0:
        why = "it is empty"
    elif head[:1] == b"\x80" or head[:2] == b"PK":
        why = ("it looks like a pickle or torch.save file, which is never loaded here since unpickling "
               "can run code")
    else:
        why = "it does not start with a safetensors header"
    raise CheckpointError(f"checkpoint {path} is not a safetensors checkpoint ({why}); give a .safetensors "
                          "file written by this package")


def load(path, device: str = "cpu") -> tuple[dict, dict]:
    """Read a safetensors checkpoint.

    Returns:
        ``(state_dict, metadata)``: tensors on ``device`` and the metadata dict as given to
        :func:`save` (values JSON-decoded; a file written by another tool gives its raw strings).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError (a ValueError) naming the file: a folder, a file that is not safetensors
        (a pickle, random bytes, an empty file), or one that is truncated or corrupt.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder, not a safetensors checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    _check_header(path)
    try:
        tensors = {}
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            raw = f.metadata() or {}
            for k in f.keys():
                tensors[k] = f.get_tensor(k)
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except BaseException as err:  # SafetensorError, OSError, or the Rust side's PanicException (a BaseException)
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt (not a readable safetensors "
                              f"file: {type(err).__name__}: {err}); re-create it or restore it "
                              "from the repository") from None
    meta = dict(raw)
    if META_KEY in raw:
        try:
            doc = json.loads(raw[META_KEY])
            if doc.get("format") == FORMAT:
                meta = doc["metadata"]
        except (json.JSONDecodeError, AttributeError, KeyError):
            pass  # someone else's key of that name: return the raw strings
    return tensors, meta


def sha256(path, chunk: int = 1 << 20) -> str:
    """The hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# the manifest of shipped checkpoints
# ---------------------------------------------------------------------------------------------
def read_manifest(path=None) -> dict:
    """The manifest as ``{name: entry}`` (empty if the file does not exist yet)."""
    path = Path(path) if path is not None else manifest_path()
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"manifest {path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"manifest {path} must hold a JSON object {{name: entry}}")
    return data


def write_manifest(manifest: dict, path=None) -> Path:
    """Write the manifest atomically, keys sorted, indented for readable diffs."""
    path = Path(path) if path is not None else manifest_path()
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path


def register(name: str, file, *, command: str, seed: int | None, metrics: dict,
             profile: str | None = None, manifest=None, **extra) -> dict:
    """Add or replace the manifest entry ``name`` for ``file`` (which must exist), computing its sha256.

    ``file`` is stored relative to the manifest's folder when it lies inside it. The entry holds
    ``file, sha256, command, seed, metrics, created (UTC ISO time), profile`` and any ``extra``.
    Re-reads the manifest just before writing, so entries of other models are kept.
    """
    mpath = Path(manifest) if manifest is not None else manifest_path()
    file = Path(file).resolve()
    if not file.is_file():
        raise FileNotFoundError(f"cannot register {file}: no such file")
    try:
        rel = str(file.relative_to(mpath.parent.resolve()))
    except ValueError:
        rel = str(file)
    ent = {
        "file": rel,
        "sha256": sha256(file),
        "command": command,
        "seed": seed,
        "metrics": metrics,
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "profile": profile,
        **extra,
    }
    data = read_manifest(mpath)
    data[name] = ent
    write_manifest(data, mpath)
    return ent


def entry(name: str, manifest=None) -> dict:
    """The manifest entry ``name``; ``CheckpointError`` listing the known names otherwise."""
    data = read_manifest(manifest)
    if name not in data:
        mp = Path(manifest) if manifest is not None else manifest_path()
        raise CheckpointError(f"no checkpoint called {name!r} in {mp}; known: {sorted(data)}")
    return data[name]


def _file_of(name: str, manifest=None) -> Path:
    ent = entry(name, manifest)
    mp = Path(manifest) if manifest is not None else manifest_path()
    f = Path(ent["file"])
    return f if f.is_absolute() else mp.parent / f


def verify(name: str, manifest=None) -> Path:
    """Check the shipped file ``name`` exists and has the manifest's sha256; return its path."""
    f = _file_of(name, manifest)
    if not f.is_file():
        raise FileNotFoundError(f"shipped checkpoint {name!r} should be at {f} but is missing; "
                                "re-create it with the manifest's command")
    want = entry(name, manifest)["sha256"]
    got = sha256(f)
    if got != want:
        raise CheckpointError(f"checkpoint {name!r} at {f} has sha256 {got[:16]}..., but the manifest "
                              f"says {want[:16]}...: the file was altered or is incomplete. Restore it "
                              f"from the repository or re-create it with: {entry(name, manifest)['command']}")
    return f


def load_shipped(name: str, device: str = "cpu", manifest=None) -> tuple[dict, dict]:
    """Load the shipped checkpoint ``name`` after verifying its sha256 against the manifest.

    Returns ``(state_dict, metadata)`` as :func:`load`. Raises ``CheckpointError`` (a
    ``ValueError``) on a hash mismatch, an unknown name or a corrupt file.
    """
    return load(verify(name, manifest), device=device)


def model_cli(argv, *, prog: str, description: str, name: str, filename: str,
              train_and_measure, load_checkpoint, evaluate_checkpoint, extra_eval_args=None,
              check_eval_args=None) -> int:
    """The ``{train,eval}`` command line shared by the models (``python -m imagen_edu.lm``, ``.clip``).

    ``train [--profile P] [--seed S] [--out OUT] [--name NAME] [--no-manifest]`` sets the
    compute profile, calls ``train_and_measure(profile, seed, out)`` (train with the profile's
    settings, measure, save the model to ``out``; returns the metrics dict), records the run in
    the manifest under ``NAME`` with the command ``{prog} train --profile P --seed S --out OUT``
    and prints the file, its sha256 and the metrics as JSON.

    ``eval [--name NAME] [--ckpt FILE]`` (plus the options ``extra_eval_args(parser)`` adds) calls
    ``load_checkpoint(ckpt, name)`` (``ckpt`` is ``None`` for the shipped checkpoint ``name``),
    then ``evaluate_checkpoint(loaded, args, recorded)`` where ``recorded`` holds the metrics
    the manifest recorded for the shipped checkpoint (``{}`` with ``--ckpt``), and prints the
    metrics as JSON, with the recorded ``train_seconds`` when there is one.

    Every argument is checked before any work (``check_eval_args(args)`` checks the extra eval
    options): the profile, the seed, that ``--out`` can be written and the manifest read and
    written (before training, so a mistake never costs a finished run), that ``--ckpt`` is a
    checkpoint of this model. ``OUT`` is written new and then renamed into place, so an earlier
    file there stays whole until the new one exists. Runs inside :func:`imagen_edu.errors.run_cli`:
    returns the exit code (0; 2 with one line on stderr for a user's mistake; 1 for a bug).
    """
    return run_cli(lambda: _model_cli(argv, prog=prog, description=description, name=name, filename=filename,
                                      train_and_measure=train_and_measure, load_checkpoint=load_checkpoint,
                                      evaluate_checkpoint=evaluate_checkpoint, extra_eval_args=extra_eval_args,
                                      check_eval_args=check_eval_args), prog=prog)


def _model_cli(argv, *, prog, description, name, filename, train_and_measure, load_checkpoint,
               evaluate_checkpoint, extra_eval_args, check_eval_args) -> int:
    """:func:`model_cli` without its error handling: raises on a user's mistake."""
    ap = ArgumentParser(prog=prog, description=description)
    sub = ap.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="train, save a checkpoint and record it in the manifest")
    tr.add_argument("--profile", default=None, help=f"compute profile, one of {profiles.names()}")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--out", default=str(checkpoint_dir() / filename))
    tr.add_argument("--name", default=name, help="manifest entry name")
    tr.add_argument("--no-manifest", action="store_true", help="do not record the run in the manifest")
    ev = sub.add_parser("eval", help="re-measure the shipped (or a given) checkpoint, print JSON")
    ev.add_argument("--name", default=name)
    ev.add_argument("--ckpt", default=None, help="a checkpoint file instead of the shipped one")
    if extra_eval_args is not None:
        extra_eval_args(ev)
    args = ap.parse_args(argv)
    if not args.name.strip():
        raise ValueError(f"--name must be a non-empty manifest entry name, got {args.name!r}")

    if args.cmd == "train":
        try:
            prof = profiles.get(args.profile) if args.profile else profiles.current()
        except ValueError as err:  # names --profile, or the environment variable when none was given
            raise ValueError(f"--profile: {err}" if args.profile else f"{profiles.ENV_VAR}: {err}") from None
        check_seed(args.seed, "--seed")
        out = output_file(args.out, "--out")
        if not args.no_manifest:  # a manifest that cannot be read or written is found now, not after training
            read_manifest()
            output_file(manifest_path(), "the manifest (or pass --no-manifest)")
        if args.profile:
            os.environ[profiles.ENV_VAR] = prof.name
        metrics = train_and_measure(prof, args.seed, out)
        if not args.no_manifest:
            cmd = f"{prog} train --profile {prof.name} --seed {args.seed} --out {args.out}"
            register(args.name, out, command=cmd, seed=args.seed, metrics=metrics, profile=prof.name)
        print(json.dumps({"file": str(out), "sha256": sha256(out), **metrics}, indent=2))
        return 0

    if check_eval_args is not None:
        check_eval_args(args)
    if args.ckpt is not None:
        input_file(args.ckpt, "--ckpt")
        try:
            loaded = load_checkpoint(args.ckpt, args.name)
        except (ValueError, KeyError, TypeError, RuntimeError) as err:  # RuntimeError: tensors that do not fit
            text = err.args[0] if isinstance(err, KeyError) and err.args else err
            raise ValueError(f"--ckpt {args.ckpt}: {text}") from None
        recorded = {}
    else:
        try:
            recorded = entry(args.name).get("metrics", {})
        except CheckpointError as err:  # an unknown name: the message lists the known ones
            raise CheckpointError(f"--name: {err}") from None
        loaded = load_checkpoint(None, args.name)
    metrics = evaluate_checkpoint(loaded, args, recorded)
    if "train_seconds" in recorded:
        metrics["train_seconds"] = recorded["train_seconds"]
    print(json.dumps(metrics, indent=2))
    return 0
