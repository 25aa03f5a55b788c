"""Generated tasks and character-level text, as time-major numpy arrays; nothing is downloaded.

    x, target = fb.tasks.adding_problem(T=100, batch_size=32, seed=0)     # (T, B, 2), (B, 1)
    x, labels = fb.tasks.copy_memory(T=100, batch_size=32, seed=0)        # (T+20, B, 10), (T+20, B)
    corpus = fb.tasks.default_corpus()                                    # or CharCorpus.from_file(path)
    for x, labels in corpus.batches(25, 16, rng):                          # (25, 16, V), (25, 16)
        ...

Every generator takes ``seed``: None (fresh entropy), an int, a ``np.random.SeedSequence``
or a ``np.random.Generator`` (used as it is, so a stream of batches can share one). The
same seed gives the same arrays.
"""
import importlib.resources
import math
import os

import numpy as np

from ._validation import as_float_dtype, check_positive_int

__all__ = [
    "ADDING_BASELINE_MSE",
    "CharCorpus",
    "SequentialChunks",
    "adding_problem",
    "copy_memory",
    "copy_memory_baseline",
    "default_corpus",
]

ADDING_BASELINE_MSE = 1.0 / 6.0
"""The test MSE of always answering 1 on the adding problem, the score to beat.

The target is the sum of two independent U(0, 1) values: its mean is 1 and its variance is
1/12 + 1/12 = 1/6. A model that has learned nothing about which values are marked does best
by predicting the mean, and its mean squared error is then that variance, 1/6 ≈ 0.167.
"""


def _rng(seed):
    """A np.random.Generator from None, an int, a SeedSequence or a Generator (kept as is)."""
    if isinstance(seed, (bool, np.bool_)) or not (
            seed is None or isinstance(seed, (int, np.integer, np.random.SeedSequence,
                                              np.random.Generator, np.random.BitGenerator))):
        raise TypeError(f"seed must be None, an int, a np.random.SeedSequence or a np.random.Generator, "
                        f"got {seed!r}")
    if isinstance(seed, (int, np.integer)) and seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed}")
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------- adding problem


def adding_problem(T, batch_size, *, seed=None, dtype="float32"):
    """The adding problem (Hochreiter & Schmidhuber 1997), in the form of Le et al. (2015).

    Each sequence has two channels: channel 0 holds values drawn uniformly from [0, 1);
    channel 1 is a marker, 1 at exactly two steps and 0 elsewhere. The first marked step is
    uniform in the first half [0, T//2), the second uniform in the second half [T//2, T).
    The target is the sum of the two marked values, to be read out after the last step.

    Returns
    -------
    x : (T, B, 2) array of ``dtype``
    target : (B, 1) array of ``dtype``, exactly ``x[i, b, 0] + x[j, b, 0]`` in ``dtype``
        for the marked steps i, j of sequence b.

    See :data:`ADDING_BASELINE_MSE` for the score of a model that has learned nothing.
    """
    T = check_positive_int("T", T)
    B = check_positive_int("batch_size", batch_size)
    if T < 2:
        raise ValueError(f"T must be >= 2 so that both halves hold a marker, got {T}")
    dtype = as_float_dtype(dtype)
    rng = _rng(seed)
    x = np.zeros((T, B, 2), dtype=dtype)
    x[:, :, 0] = rng.random((T, B))
    first = rng.integers(0, T // 2, size=B)
    second = rng.integers(T // 2, T, size=B)
    cols = np.arange(B)
    x[first, cols, 1] = 1
    x[second, cols, 1] = 1
    # Summed from the values as stored in x, so the target is exact in float32 as well.
    target = (x[first, cols, 0] + x[second, cols, 0]).reshape(B, 1)
    return x, target


# --------------------------------------------------------------------------- copy memory


def copy_memory(T, batch_size, *, n_symbols=8, length=10, seed=None, dtype="float32"):
    """The copy-memory task of Arjovsky, Shah & Bengio (2016).

    Categories: 0 is the blank, 1..n_symbols the symbols, n_symbols+1 the delimiter. The
    input sequence, of length T + 2·length (T + 20 in the paper), is

        steps [0, length)                  symbols drawn uniformly from 1..n_symbols
        steps [length, length+T-1)         blanks (T - 1 of them)
        step  length+T-1                   the delimiter: "repeat now"
        steps [length+T, T+2·length)       blanks

    and the labels are blanks for the first T + length steps, then the ``length`` symbols
    of the beginning, in order.

    Returns
    -------
    x : (T + 2·length, B, n_symbols + 2) one-hot array of ``dtype``
    labels : (T + 2·length, B) int64, ready for ``fb.losses.cross_entropy``

    See :func:`copy_memory_baseline` for the loss of a model without memory.
    """
    T = check_positive_int("T", T)
    B = check_positive_int("batch_size", batch_size)
    n_symbols = check_positive_int("n_symbols", n_symbols)
    length = check_positive_int("length", length)
    dtype = as_float_dtype(dtype)
    rng = _rng(seed)
    total = T + 2 * length
    symbols = rng.integers(1, n_symbols + 1, size=(length, B))
    inputs = np.zeros((total, B), dtype=np.int64)
    inputs[:length] = symbols
    inputs[length + T - 1] = n_symbols + 1
    labels = np.zeros((total, B), dtype=np.int64)
    labels[-length:] = symbols
    return _one_hot(inputs, n_symbols + 2, dtype), labels


def copy_memory_baseline(T, n_symbols=8, length=10):
    """Cross-entropy per step (nats) of the best strategy without memory on :func:`copy_memory`.

    Such a model predicts blank with certainty for the first T + length steps, which costs
    nothing, then, unable to recall the symbols, the uniform distribution over the
    n_symbols symbols for the last ``length`` steps, at ln(n_symbols) each. Averaged over
    the T + 2·length steps that is

        length · ln(n_symbols) / (T + 2·length)        = 10 ln 8 / (T + 20) by default.

    A model that beats it remembers something.
    """
    T = check_positive_int("T", T)
    n_symbols = check_positive_int("n_symbols", n_symbols)
    length = check_positive_int("length", length)
    return length * math.log(n_symbols) / (T + 2 * length)


def _one_hot(ids, n, dtype):
    """(..., n) one-hot of the int array ``ids`` whose entries are known to lie in [0, n)."""
    out = np.zeros(ids.shape + (n,), dtype=dtype)
    np.put_along_axis(out, ids[..., None], 1, axis=-1)
    return out


# --------------------------------------------------------------------------- character-level text


class CharCorpus:
    """A text as a sequence of character ids, for character-level language models.

    Parameters
    ----------
    text : str, not empty
    source : str, optional
        Where the text came from, for messages (``from_file`` sets the path).

    Attributes
    ----------
    text : str
    vocab : tuple of str
        The distinct characters of ``text``, sorted; a character's id is its index here.
    ids : (N,) int64, read-only
        ``text`` encoded; N = len(text).
    """

    def __init__(self, text, *, source=None):
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if not text:
            raise ValueError("text is empty: a corpus needs at least one character")
        self.text = text
        self.source = source
        codes = _code_points(text)
        # sorted code points are the sorted characters: str ordering is by code point
        self._codes = np.unique(codes)
        self.vocab = tuple(chr(c) for c in self._codes)
        self.ids = np.searchsorted(self._codes, codes).astype(np.int64)
        self.ids.flags.writeable = False

    @classmethod
    def from_file(cls, path, *, encoding="utf-8"):
        """Read a text file. A missing or unreadable file, an empty one, or one that is not
        text in ``encoding`` (binary data, NUL bytes) raises an error naming the path."""
        try:
            raw = open(path, "rb").read()
        except FileNotFoundError:
            raise FileNotFoundError(f"corpus file not found: {os.fspath(path)!s}") from None
        except IsADirectoryError:
            raise IsADirectoryError(f"corpus path is a directory, not a text file: {os.fspath(path)!s}") from None
        except OSError as exc:
            raise OSError(f"cannot read corpus file {os.fspath(path)!s}: {exc.strerror or exc}") from exc
        if not raw:
            raise ValueError(f"corpus file {os.fspath(path)!s} is empty")
        if b"\0" in raw:
            raise ValueError(f"corpus file {os.fspath(path)!s} contains NUL bytes: it looks binary, not text")
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError as exc:
            raise ValueError(f"corpus file {os.fspath(path)!s} is not {encoding} text: "
                             f"undecodable byte 0x{raw[exc.start]:02x} at offset {exc.start}") from None
        return cls(text, source=os.fspath(path))

    def __len__(self):
        return len(self.text)

    def __repr__(self):
        where = f" from {self.source!r}" if self.source else ""
        return f"CharCorpus({len(self.text)} characters, vocabulary {len(self.vocab)}{where})"

    @property
    def vocab_size(self):
        """V, the number of distinct characters."""
        return len(self.vocab)

    def encode(self, text):
        """(len(text),) int64 ids of the characters of ``text``; each must be in ``vocab``."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        codes = _code_points(text)
        ids = np.searchsorted(self._codes, codes)
        found = self._codes[np.minimum(ids, len(self._codes) - 1)] == codes
        if not found.all():
            unknown = sorted({chr(c) for c in codes[~found]})
            raise ValueError(f"characters not in the corpus vocabulary: {unknown[:10]!r}"
                             + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""))
        return ids.astype(np.int64)

    def decode(self, ids):
        """The string of a 1-D sequence of ids (an int array or a list of ints)."""
        ids = self._check_ids("ids", ids)
        if ids.ndim != 1:
            raise ValueError(f"ids must be 1-D to decode, got shape {ids.shape}")
        return self._codes[ids].astype("<u4").tobytes().decode("utf-32-le", errors="surrogatepass")

    def one_hot(self, ids, dtype="float32"):
        """ids (...) -> one-hot (..., V) of ``dtype``."""
        ids = self._check_ids("ids", ids)
        return _one_hot(ids, len(self.vocab), as_float_dtype(dtype))

    def batches(self, seq_length, batch_size, rng=None, *, dtype="float32"):
        """An endless iterator of random windows of the text, for training.

        Each batch holds ``batch_size`` windows of ``seq_length`` characters starting at
        uniformly random offsets; the labels are the next characters.

        Yields
        ------
        inputs : (seq_length, B, V) one-hot of ``dtype``
        labels : (seq_length, B) int64, labels[t, b] = the id of the character after inputs[t, b]
        """
        T = check_positive_int("seq_length", seq_length)
        B = check_positive_int("batch_size", batch_size)
        dtype = as_float_dtype(dtype)
        self._check_length(T)
        rng = _rng(rng)
        return self._random_batches(T, B, rng, dtype)

    def _random_batches(self, T, B, rng, dtype):
        offsets = np.arange(T)[:, None]
        V = len(self.vocab)
        while True:
            # a window and its labels need T + 1 characters: starts in [0, N - T - 1]
            starts = rng.integers(0, len(self.ids) - T, size=B)
            idx = offsets + starts
            yield _one_hot(self.ids[idx], V, dtype), self.ids[idx + 1]

    def sequential(self, seq_length, batch_size=1, *, dtype="float32"):
        """Consecutive chunks of the text, min-char-rnn's way, for carrying the hidden state.

        With ``batch_size=1`` the chunks tile one stream: chunk k covers characters
        [k·T, (k+1)·T) and its labels [k·T + 1, (k+1)·T + 1), so the state at the end of a
        chunk is the right initial state for the next. With B > 1 the text is cut into B
        equal tracks, one per batch row, each read in the same way. When the next chunk
        would run past the end, the stream starts over from the beginning (see
        :attr:`SequentialChunks.epoch`); it never ends.

        Returns a :class:`SequentialChunks` iterator of (inputs (T, B, V), labels (T, B)).
        """
        T = check_positive_int("seq_length", seq_length)
        B = check_positive_int("batch_size", batch_size)
        return SequentialChunks(self, T, B, as_float_dtype(dtype))

    def _check_length(self, T, B=1):
        if (len(self.ids) - 1) // B < T:
            raise ValueError(f"the corpus has {len(self.ids)} characters: too short for {B} "
                             f"sequence(s) of seq_length {T} plus the next-character label "
                             f"(needs at least {B * T + 1})")

    def _check_ids(self, name, ids):
        a = np.asarray(ids)
        if a.dtype == object or not (np.issubdtype(a.dtype, np.integer) or a.size == 0):
            raise TypeError(f"{name} must hold integers, got dtype {a.dtype}")
        if a.size and (a.min() < 0 or a.max() >= len(self.vocab)):
            raise ValueError(f"{name} must lie in [0, {len(self.vocab)}), got values in [{a.min()}, {a.max()}]")
        return a.astype(np.intp, copy=False)


class SequentialChunks:
    """The endless iterator :meth:`CharCorpus.sequential` returns.

    Attributes
    ----------
    position : int
        Offset, within each track, of the next chunk's first input character.
    epoch : int
        How many times the stream has started over from the beginning; a change tells the
        caller that the carried hidden state no longer continues the text (min-char-rnn
        resets it there).
    """

    def __init__(self, corpus, seq_length, batch_size, dtype):
        corpus._check_length(seq_length, batch_size)
        self.corpus = corpus
        self.seq_length = seq_length
        self.batch_size = batch_size
        self.dtype = dtype
        # B tracks of track_len inputs each; a track's labels reach one character further.
        self.track_len = (len(corpus.ids) - 1) // batch_size
        self._track_starts = np.arange(batch_size) * self.track_len
        self.position = 0
        self.epoch = 0

    def __iter__(self):
        return self

    def __next__(self):
        T = self.seq_length
        if self.position + T > self.track_len:
            self.position = 0
            self.epoch += 1
        idx = np.arange(self.position, self.position + T)[:, None] + self._track_starts
        self.position += T
        ids = self.corpus.ids
        return _one_hot(ids[idx], len(self.corpus.vocab), self.dtype), ids[idx + 1]

    def reset(self):
        """Start again from the beginning of the text (epoch 0)."""
        self.position = 0
        self.epoch = 0


def _code_points(text):
    """(len(text),) uint32 code points of a str, without a Python-level loop."""
    return np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype="<u4").astype(np.uint32)


def default_corpus():
    """The English prose the package ships (``fastbptt/data/corpus.txt``, written for this
    project: about 30 KB on rivers, time and recurrent networks), as a :class:`CharCorpus`."""
    resource = importlib.resources.files(__package__).joinpath("data").joinpath("corpus.txt")
    text = resource.read_text(encoding="utf-8")
    return CharCorpus(text, source="fastbptt/data/corpus.txt")
