"""Saving and loading models: NumPy's ``.npz`` with the configuration as JSON, never pickle.

A file holds ``__config__`` (a JSON object: the constructor's arguments, ``backend`` aside,
and ``format_version``) and one array ``param/<name>`` per parameter, under PyTorch's names.
A file of another format version, a damaged one, or one whose configuration this fastbptt
cannot build raises ValueError naming the file.
"""
import json
import zipfile
import zlib

import numpy as np

__all__ = ["FORMAT_VERSION", "load", "save"]

FORMAT_VERSION = 2
# Version 1 had no ``embedding_size`` (version 2 added it): its files are models without one.
READABLE_VERSIONS = (1, 2)


def save(model, path):
    """Write ``model``'s configuration and parameters to ``path`` (a path or a binary file
    object); a path is used as it is (no ".npz" appended)."""
    arrays = {f"param/{name}": value for name, value in model._checked_params().items()}
    config = np.array(json.dumps(dict(model.config, format_version=FORMAT_VERSION)))
    if hasattr(path, "write"):
        np.savez(path, __config__=config, **arrays)
    else:
        with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a path
            np.savez(f, __config__=config, **arrays)


def load(path, *, backend="auto"):
    """Read a model written by :meth:`RNN.save`; a damaged file raises ValueError."""
    from .model import CONFIG_KEYS, RNN  # the model module imports this one

    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):  # a bare .npy array
            raise ValueError("it holds one array, not an .npz archive")
        with data:
            files = {name: data[name] for name in data.files}
    # zipfile raises NotImplementedError or RuntimeError for headers it cannot read, zlib.error
    # for damaged compressed data; all of them mean a damaged file here.
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, NotImplementedError,
            RuntimeError, zlib.error) as exc:
        raise ValueError(f"{path!s} is not a readable fastbptt model file: {exc}") from exc
    if "__config__" not in files:
        raise ValueError(f"{path!s} is not a fastbptt model file: it has no configuration")
    try:
        config = json.loads(str(files.pop("__config__")))
        if not isinstance(config, dict):
            raise TypeError(f"a JSON object was expected, got {type(config).__name__}")
        version = config.pop("format_version")
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path!s} has a damaged configuration: {exc}") from exc
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise ValueError(f"{path!s} has format version {version}; this fastbptt reads "
                         f"{', '.join(map(str, READABLE_VERSIONS))}")
    if version == 1 and "embedding_size" not in config:
        config["embedding_size"] = None
    if set(config) != set(CONFIG_KEYS):
        raise ValueError(f"{path!s} has a damaged configuration: keys {sorted(config)}, "
                         f"expected {sorted(CONFIG_KEYS)}")
    try:
        model = RNN(backend=backend, **config)
    except (TypeError, ValueError, NotImplementedError) as exc:
        raise ValueError(f"{path!s} holds a configuration this fastbptt cannot build: {exc}") from exc
    params = {name[len("param/"):]: value for name, value in files.items() if name.startswith("param/")}
    for name, value in params.items():
        if value.dtype != model.dtype:
            raise ValueError(f"{path!s}: parameter {name!r} has dtype {value.dtype}, expected {model.dtype}")
    model.load_state_dict(params)
    return model
