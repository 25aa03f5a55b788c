"""Training checkpoints: everything ``fb.train.fit`` needs to continue an interrupted run.

A checkpoint is one ``.npz`` file, read and written without pickle:

* ``__meta__``: a JSON object -- the format's name and version, the model's configuration,
  the optimizer's class, the number of batches trained, the history, what the loop carries
  from batch to batch besides arrays, and the fit arguments that shape the run (so that a run
  resumed with other ones is refused instead of silently diverging);
* ``param/<name>``: the model's parameters, in their own dtype;
* ``optim/<key>``: the optimizer's ``state_dict()``, each value as an array;
* ``state/<i>``: the recurrent state carried into the next batch (``carry_state=True``), one
  array, or two for an LSTM's (h, c);
* ``__checksum__``: SHA-256 over all of the above, so that a damaged file is refused even
  where the zip container's own checks pass.

:func:`save_checkpoint` writes atomically: a temporary file in the same folder, flushed and
fsynced, renamed over the old checkpoint, then the folder fsynced. A process killed at any
moment leaves either the old checkpoint or the new one on disk, never a mixture.
"""
import hashlib
import json
import os
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np

__all__ = ["Checkpoint", "save_checkpoint", "load_checkpoint", "FORMAT", "FORMAT_VERSION"]

FORMAT = "fastbptt-checkpoint"
FORMAT_VERSION = 1
_META, _CHECKSUM = "__meta__", "__checksum__"
_PREFIXES = ("param/", "optim/", "state/")


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` read.

    model: an ``fb.RNN`` with the saved configuration and parameters; optimizer_state: the
    optimizer's ``state_dict()`` (for ``opt.load_state_dict``); optimizer: its class name;
    step: batches trained; history: a ``fb.train.History``; state: the carried recurrent
    state ((D·L, B, H), or an (h, c) pair for an LSTM; None without carry_state); fit: the
    fit arguments recorded with it; loop: fit's other counters (a dict).
    """

    model: object
    optimizer: str
    optimizer_state: dict
    step: int
    history: object
    state: object
    fit: dict
    loop: dict


def save_checkpoint(path, *, model, optimizer, step, history, state=None, fit=None, loop=None):
    """Write a checkpoint to ``path`` atomically (see the module's docstring).

    model: the ``fb.RNN``; optimizer: an ``fb.optim`` optimizer (its ``state_dict()`` is
    saved); step: batches trained; history: a ``fb.train.History``; state: the carried state
    or None; fit, loop: small JSON-able dicts (fit's arguments and counters).
    """
    path = os.fspath(path)
    if not isinstance(step, (int, np.integer)) or isinstance(step, bool) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    arrays = {f"param/{name}": np.ascontiguousarray(value) for name, value in model.params.items()}
    for key, value in optimizer.state_dict().items():
        value = np.asarray(value)
        if value.dtype == object:
            raise TypeError(f"optimizer.state_dict()[{key!r}] is not an array of numbers or text")
        arrays[f"optim/{key}"] = value
    if state is None:
        kind = "none"
    elif isinstance(state, tuple):
        kind = "tuple"
        arrays.update({f"state/{i}": np.ascontiguousarray(s) for i, s in enumerate(state)})
    else:
        kind = "array"
        arrays["state/0"] = np.ascontiguousarray(state)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": model.config,
            "optimizer": type(optimizer).__name__, "step": int(step), "state": kind,
            "history": _history_to_json(history), "fit": fit or {}, "loop": loop or {}}
    meta = np.array(json.dumps(meta, sort_keys=True))
    checksum = np.array(_checksum(meta, arrays))
    folder = os.path.dirname(os.path.abspath(path))
    # One fixed temporary name: a writer killed mid-file leaves one stray file, which the
    # next save overwrites.
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **{_META: meta, _CHECKSUM: checksum}, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_folder(folder)


def load_checkpoint(path, *, backend="auto"):
    """Read a checkpoint written by :func:`save_checkpoint` (``fit(checkpoint=path)``).

    Returns a :class:`Checkpoint`, its model on ``backend``. A truncated, damaged or foreign
    file (a model saved with ``model.save`` included) raises ValueError saying so.
    """
    from .model import RNN
    from .train import History

    files = _read(path)
    meta = files.pop(_META, None)
    if meta is None or meta.dtype.kind != "U" or meta.ndim != 0:
        raise ValueError(f"{path!s} is not a fastbptt checkpoint: it has no {_META} entry "
                         "(a model file? read those with fb.load)")
    checksum = files.pop(_CHECKSUM, None)
    try:
        info = json.loads(str(meta))
    except ValueError as exc:
        raise ValueError(f"{path!s} is a damaged checkpoint: its {_META} is not JSON ({exc})") from exc
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ValueError(f"{path!s} is not a fastbptt checkpoint")
    if info.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path!s} has checkpoint format version {info.get('format_version')!r}; "
                         f"this fastbptt reads {FORMAT_VERSION}")
    if checksum is None or checksum.dtype.kind != "U" or str(checksum) != _checksum(meta, files):
        raise ValueError(f"{path!s} is a damaged checkpoint: its checksum does not match its contents")
    unknown = [k for k in files if not k.startswith(_PREFIXES)]
    if unknown:
        raise ValueError(f"{path!s} is a damaged checkpoint: unexpected entries {unknown}")
    try:
        model = RNN(backend=backend, **info["model"])
        params = {k[len("param/"):]: v for k, v in files.items() if k.startswith("param/")}
        for name, value in params.items():
            if value.dtype != model.dtype:
                raise ValueError(f"parameter {name!r} has dtype {value.dtype}, expected {model.dtype}")
        model.load_state_dict(params)
        history = _history_from_json(History, info["history"])
        step, kind = info["step"], info["state"]
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step {step!r} is not a non-negative int")
        states = [files[f"state/{i}"] for i in range(sum(k.startswith("state/") for k in files))]
        if {"none": 0, "array": 1, "tuple": 2}.get(kind) != len(states):
            raise ValueError(f"the carried state ({kind!r}) does not match its {len(states)} arrays")
        state = None if kind == "none" else states[0] if kind == "array" else tuple(states)
        optimizer, fit, loop = str(info["optimizer"]), dict(info["fit"]), dict(info["loop"])
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ValueError(f"{path!s} is a damaged checkpoint: {exc}") from exc
    optimizer_state = {k[len("optim/"):]: v for k, v in files.items() if k.startswith("optim/")}
    return Checkpoint(model=model, optimizer=optimizer, optimizer_state=optimizer_state, step=step,
                      history=history, state=state, fit=fit, loop=loop)


def _read(path):
    """{name: array} of an .npz file; anything unreadable is a ValueError."""
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):  # an .npy file: one bare array
            raise ValueError("it holds a single array, not an .npz archive")
        with data:
            return {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise
    # zipfile raises NotImplementedError or RuntimeError for headers it cannot read, zlib.error
    # for damaged compressed data, BadZipFile for a bad CRC; all of them mean a damaged file.
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, NotImplementedError,
            RuntimeError, zlib.error) as exc:
        raise ValueError(f"{path!s} is not a readable fastbptt checkpoint: {exc}") from exc


def _checksum(meta, arrays):
    """SHA-256 (hex) over the meta string and every array's name, dtype, shape and bytes."""
    h = hashlib.sha256(str(meta).encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"\0{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _fsync_folder(folder):
    """Make the rename itself durable; not every platform can open a folder (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _history_to_json(history):
    """The history's fields as JSON values; floats keep every bit through repr."""
    out = {}
    for name, value in vars(history).items():
        if isinstance(value, list):
            out[name] = [v if isinstance(v, int) and not isinstance(v, bool) else float(v) for v in value]
        elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            out[name] = int(value)
        else:
            out[name] = float(value)
    return out


def _history_from_json(cls, fields):
    if not isinstance(fields, dict):
        raise TypeError("the history is not a JSON object")
    history = cls()
    known = vars(history)
    unknown = set(fields) - set(known)
    if unknown:
        raise ValueError(f"the history has unknown fields {sorted(unknown)}")
    for name, value in fields.items():
        if isinstance(known[name], list) != isinstance(value, list):
            raise TypeError(f"history field {name!r} has the wrong type")
        setattr(history, name, value)
    return history
