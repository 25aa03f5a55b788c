"""Generated tasks and text, as time-major numpy arrays; nothing is downloaded.

    x, target = fb.tasks.adding_problem(T=100, batch_size=32, seed=0)     # (T, B, 2), (B, 1)
    x, labels = fb.tasks.copy_memory(T=100, batch_size=32, seed=0)        # (T+20, B, 10), (T+20, B)
    corpus = fb.tasks.default_corpus()                                    # or CharCorpus.from_file(path)
    for x, labels in corpus.batches(25, 16, rng):                          # (25, 16, V), (25, 16)
        ...

Language modelling (char or word level, a vocabulary, a train/validation split, the stream
layout of truncated BPTT, perplexity and sampling):

    corpus = fb.tasks.TextCorpus.bundled(level="word", min_count=2)       # or .from_file(path, ...)
    model = fb.RNN(corpus.vocab_size, 128, cell="lstm", output_size=corpus.vocab_size)
    stream = corpus.stream("train", seq_length=35, batch_size=20, model=model)
    fb.train.fit(model, stream, steps=1000, optimizer=..., loss="cross_entropy", carry_state=True)
    fb.tasks.perplexity(model, corpus.valid)                              # against
    fb.tasks.unigram_perplexity(corpus.train, corpus.valid, corpus.vocab_size)
    ids = fb.tasks.sample(model, corpus.encode("the river"), 50, temperature=0.8, top_k=10)

Every generator takes ``seed``: None (fresh entropy), an int, a ``np.random.SeedSequence``
or a ``np.random.Generator`` (used as it is, so a stream of batches can share one). The
same seed gives the same arrays.
"""
import importlib.resources
import math
import os
import re
from collections import Counter
from typing import NamedTuple

import numpy as np

from ._validation import as_float_dtype, check_positive_int

__all__ = [
    "ADDING_BASELINE_MSE",
    "CharCorpus",
    "EOS",
    "LMScore",
    "SequentialChunks",
    "StreamBatches",
    "TextCorpus",
    "UNK",
    "Vocabulary",
    "adding_problem",
    "batchify",
    "copy_memory",
    "copy_memory_baseline",
    "default_corpus",
    "evaluate_lm",
    "model_input",
    "perplexity",
    "sample",
    "unigram_perplexity",
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
        text = _read_text(path, encoding)
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


def _read_text(path, encoding):
    """The text of a file. A missing or unreadable file, an empty one, or one that is not text
    in ``encoding`` (binary data, NUL bytes) raises an error naming the path."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
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
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise ValueError(f"corpus file {os.fspath(path)!s} is not {encoding} text: "
                         f"undecodable byte 0x{raw[exc.start]:02x} at offset {exc.start}") from None


BUNDLED_CORPUS = "fastbptt/data/corpus.txt"


def _bundled_text():
    resource = importlib.resources.files(__package__).joinpath("data").joinpath("corpus.txt")
    return resource.read_text(encoding="utf-8")


def default_corpus():
    """The English prose the package ships (``fastbptt/data/corpus.txt``, written for this
    project: about 30 KB on rivers, time and recurrent networks), as a :class:`CharCorpus`."""
    return CharCorpus(_bundled_text(), source=BUNDLED_CORPUS)


# --------------------------------------------------------------------------- language modelling

UNK = "<unk>"
"""The token that stands for every token outside the vocabulary (rare or unseen)."""
EOS = "<eos>"
"""The token a word-level corpus puts at the end of each line (torch's word_language_model's)."""

LEVELS = ("char", "word")

# A word, with inner apostrophes or hyphens ("river's", "long-term"), or one punctuation mark;
# UNK and EOS written in a file (Penn Treebank style) stay single tokens.
_WORD = re.compile(r"<unk>|<eos>|\w+(?:['’-]\w+)*|[^\w\s]")


class Vocabulary:
    """Tokens and their ids: a token's id is its index in ``tokens``.

    Parameters
    ----------
    tokens : sequence of distinct str
    unk : str or None
        The token (one of ``tokens``) that unknown tokens are encoded as; None: an unknown
        token is an error.

    Build one from a token stream with :meth:`from_tokens`.
    """

    def __init__(self, tokens, *, unk=None):
        tokens = tuple(tokens)
        if not tokens:
            raise ValueError("tokens is empty: a vocabulary needs at least one token")
        if not all(isinstance(t, str) for t in tokens):
            raise TypeError("tokens must all be str")
        if len(set(tokens)) != len(tokens):
            duplicated = sorted({t for t in tokens if tokens.count(t) > 1})
            raise ValueError(f"tokens must be distinct, got duplicates {duplicated[:10]!r}")
        if unk is not None and unk not in tokens:
            raise ValueError(f"unk {unk!r} is not one of the tokens")
        self.tokens = tokens
        self.unk = unk
        self._index = {t: i for i, t in enumerate(tokens)}

    @classmethod
    def from_tokens(cls, tokens, *, min_count=1, specials=(), unk=None):
        """The vocabulary of a token stream: ``specials`` first (in their order), then every
        token seen at least ``min_count`` times, most frequent first (ties in code-point
        order), so that ids do not depend on where a token first appears.

        unk: None, or one of ``specials``, which the tokens seen fewer times then stand for.
        """
        min_count = check_positive_int("min_count", min_count)
        specials = tuple(specials)
        if unk is not None and unk not in specials:
            raise ValueError(f"unk {unk!r} must be one of the specials {specials!r}")
        counts = Counter(tokens)
        kept = sorted((t for t, c in counts.items() if c >= min_count and t not in specials),
                      key=lambda t: (-counts[t], t))
        return cls(specials + tuple(kept), unk=unk)

    def __len__(self):
        return len(self.tokens)

    def __contains__(self, token):
        return token in self._index

    def __repr__(self):
        return f"Vocabulary({len(self.tokens)} tokens, unk={self.unk!r})"

    def encode(self, tokens):
        """(n,) int64 ids of a sequence of tokens; an unknown token becomes ``unk`` (or is
        an error naming it, without ``unk``)."""
        if isinstance(tokens, str):
            raise TypeError("tokens must be a sequence of str, not one str (a corpus's encode() "
                            "splits a text into tokens)")
        index = self._index
        if self.unk is not None:
            unk = index[self.unk]
            return np.fromiter((index.get(t, unk) for t in tokens), dtype=np.int64)
        tokens = list(tokens)
        unknown = sorted({t for t in tokens if t not in index})
        if unknown:
            raise ValueError(f"tokens not in the vocabulary: {unknown[:10]!r}"
                             + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""))
        return np.fromiter((index[t] for t in tokens), dtype=np.int64, count=len(tokens))

    def decode(self, ids):
        """The list of tokens of a 1-D sequence of ids."""
        ids = _check_token_ids("ids", ids, len(self.tokens))
        if ids.ndim != 1:
            raise ValueError(f"ids must be 1-D to decode, got shape {ids.shape}")
        return [self.tokens[i] for i in ids]


class TextCorpus:
    """A text as token ids for language modelling: a vocabulary and a train/validation split.

    Parameters
    ----------
    text : str, not empty
    level : {"char", "word"}
        "char": every character is a token. "word": each line is split into words and
        punctuation marks, and :data:`EOS` ends every line (where the text has a newline).
    min_count : int
        Tokens seen fewer times than this in the training part become :data:`UNK`.
    valid_fraction : float in [0, 1)
        The last ``round(valid_fraction · N)`` tokens are the validation part; the
        vocabulary is built from the training part alone, so validation tokens it never saw
        become :data:`UNK`, as they would in use.
    lower : bool
        Lower-case the text first.
    source : str, optional
        Where the text came from, for messages.

    Attributes
    ----------
    vocab : :class:`Vocabulary`
        Word level: UNK, EOS, then the words by frequency. Char level: the characters by
        frequency, after UNK when some character is rare or unseen in the training part.
    train, valid : (N_train,), (N_valid,) int64, read-only
    ids : (N,) int64, read-only: the whole text, train then valid.
    """

    def __init__(self, text, *, level="char", min_count=1, valid_fraction=0.1, lower=False,
                 source=None):
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
        min_count = check_positive_int("min_count", min_count)
        if isinstance(valid_fraction, (bool, np.bool_)) or not isinstance(
                valid_fraction, (int, float, np.integer, np.floating)):
            raise TypeError(f"valid_fraction must be a number in [0, 1), got {valid_fraction!r}")
        if not 0 <= valid_fraction < 1:
            raise ValueError(f"valid_fraction must lie in [0, 1), got {valid_fraction}")
        self.text = text.lower() if lower else text
        self.level = level
        self.lower = bool(lower)
        self.source = source
        tokens = self.tokenize(self.text)
        n_valid = int(round(valid_fraction * len(tokens)))
        n_train = len(tokens) - n_valid
        if n_train < 2 or (valid_fraction > 0 and n_valid < 2):
            raise ValueError(f"the text has {len(tokens)} {level} tokens: too few for a training "
                             f"part and a validation part of at least 2 tokens each "
                             f"(valid_fraction={valid_fraction})")
        train_tokens = tokens[:n_train]
        if level == "word":
            specials, unk = (UNK, EOS), UNK
        else:
            counts = Counter(train_tokens)
            rare = any(c < min_count for c in counts.values())
            unseen = not set(tokens[n_train:]) <= counts.keys()
            specials, unk = ((UNK,), UNK) if rare or unseen else ((), None)
        self.vocab = Vocabulary.from_tokens(train_tokens, min_count=min_count, specials=specials,
                                            unk=unk)
        self.ids = self.vocab.encode(tokens)
        self.ids.flags.writeable = False
        self.train = self.ids[:n_train]
        self.valid = self.ids[n_train:]

    @classmethod
    def from_file(cls, path, *, encoding="utf-8", **kwargs):
        """Read a text file (errors name the path: missing, empty, binary, not ``encoding``);
        ``kwargs`` as for the class."""
        return cls(_read_text(path, encoding), source=os.fspath(path), **kwargs)

    @classmethod
    def bundled(cls, **kwargs):
        """The English prose the package ships (about 30 KB, 5,000 words); ``kwargs`` as for
        the class."""
        return cls(_bundled_text(), source=BUNDLED_CORPUS, **kwargs)

    def __repr__(self):
        where = f" from {self.source!r}" if self.source else ""
        return (f"TextCorpus({self.level} level, {len(self.train)} train + {len(self.valid)} "
                f"valid tokens, vocabulary {len(self.vocab)}{where})")

    @property
    def vocab_size(self):
        """V, the number of token ids (the model's input_size and output_size)."""
        return len(self.vocab)

    def tokenize(self, text):
        """The list of tokens of ``text`` at this corpus's level (not lower-cased here)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if self.level == "char":
            return list(text)
        lines = text.split("\n")
        tokens = []
        for i, line in enumerate(lines):
            tokens.extend(_WORD.findall(line))
            if i < len(lines) - 1:
                tokens.append(EOS)
        return tokens

    def encode(self, text):
        """(n,) int64 ids of ``text`` (lower-cased if the corpus is); unknown tokens -> UNK,
        or an error naming them when the vocabulary has no UNK."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return self.vocab.encode(self.tokenize(text.lower() if self.lower else text))

    def decode(self, ids):
        """The text of a 1-D sequence of ids: characters joined, or words joined by spaces
        with EOS as a line break."""
        tokens = self.vocab.decode(ids)
        if self.level == "char":
            return "".join(tokens)
        pieces = []
        for token in tokens:
            if token == EOS:
                pieces.append("\n")
            else:
                if pieces and pieces[-1] != "\n":
                    pieces.append(" ")
                pieces.append(token)
        return "".join(pieces)

    def split(self, which):
        """The ids of ``which``: "train" or "valid"."""
        if which == "train":
            return self.train
        if which == "valid":
            if not len(self.valid):
                raise ValueError("the corpus has no validation part (valid_fraction=0)")
            return self.valid
        raise ValueError(f"which must be 'train' or 'valid', got {which!r}")

    def stream(self, which, seq_length, batch_size, *, model=None, epochs=None):
        """The :class:`StreamBatches` of the ``which`` part ("train" or "valid")."""
        return StreamBatches(self.split(which), seq_length, batch_size, model=model, epochs=epochs)


def batchify(ids, batch_size):
    """Cut a stream of ids (N,) into ``batch_size`` parallel tracks: (N // B, B), column b
    holding ids[b·n : (b+1)·n] for n = N // B (the last N mod B ids are dropped). Torch's
    word_language_model's layout: a row is one time step of every track."""
    B = check_positive_int("batch_size", batch_size)
    ids = _check_token_ids("ids", ids)
    if ids.ndim != 1:
        raise ValueError(f"ids must be 1-D, got shape {ids.shape}")
    n = len(ids) // B
    if n < 2:
        raise ValueError(f"ids holds {len(ids)} tokens: too few for {B} tracks of at least 2 "
                         f"(an input and its next-token target); needs at least {2 * B}")
    return np.ascontiguousarray(ids[:n * B].reshape(B, n).T, dtype=np.int64)


class StreamBatches:
    """Consecutive chunks of a token stream cut into parallel tracks, for truncated BPTT.

    The stream is cut by :func:`batchify` into B tracks of n tokens; chunk k holds steps
    [k·T, k·T + T) of every track as inputs and the next tokens as targets, so that the state
    at the end of one chunk is the right initial state of the next (``fit(...,
    carry_state=True)``, with ``bptt=(k1, k2)`` inside a chunk as wanted). The last chunk of
    an epoch is shorter when T does not divide n - 1. After the last chunk the stream starts
    over (``epoch`` counts how often), or stops after ``epochs`` epochs.

    Parameters
    ----------
    ids : (N,) ints
    seq_length, batch_size : int, T and B
    model : an ``fb.RNN`` or None
        None yields the ids (T, B); a model yields what its forward takes for them
        (:func:`model_input`: the ids, or their one-hot (T, B, V) in its dtype).
    epochs : int or None (endless)

    Yields
    ------
    x : (T, B) int64 ids, or the model's input for them
    target : (T, B) int64, target[t, b] = the token after x[t, b] in track b
    """

    def __init__(self, ids, seq_length, batch_size, *, model=None, epochs=None):
        self.seq_length = check_positive_int("seq_length", seq_length)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.epochs = None if epochs is None else check_positive_int("epochs", epochs)
        self.tracks = batchify(ids, self.batch_size)
        self.tracks.flags.writeable = False
        if model is not None and not hasattr(model, "input_size"):
            raise TypeError(f"model must be an fb.RNN or None, got {type(model).__name__}")
        if model is not None and self.tracks.max() >= model.input_size:
            raise ValueError(f"ids reach {self.tracks.max()}, beyond the model's input_size "
                             f"{model.input_size}")
        self.model = model
        self.position = 0
        self.epoch = 0

    def __len__(self):
        """Chunks per epoch."""
        return -(-(len(self.tracks) - 1) // self.seq_length)

    def __iter__(self):
        return self

    def __next__(self):
        if self.epochs is not None and self.epoch >= self.epochs:
            raise StopIteration
        i = self.position
        steps = min(self.seq_length, len(self.tracks) - 1 - i)
        x, target = self.tracks[i:i + steps], self.tracks[i + 1:i + 1 + steps]
        self.position += steps
        if self.position >= len(self.tracks) - 1:
            self.position = 0
            self.epoch += 1
        return (x if self.model is None else model_input(self.model, x)), target

    def reset(self):
        """Start again from the beginning (epoch 0)."""
        self.position = 0
        self.epoch = 0


def _check_token_ids(name, ids, size=None):
    """ids as an intp array after checking it holds integers in [0, size)."""
    a = np.asarray(ids)
    if a.dtype == object or a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or a.size == 0):
        raise TypeError(f"{name} must hold integers (token ids), got dtype {a.dtype}")
    if a.size and (a.min() < 0 or (size is not None and a.max() >= size)):
        bound = f"[0, {size})" if size is not None else ">= 0"
        raise ValueError(f"{name} must lie in {bound}, got values in [{a.min()}, {a.max()}]")
    return a.astype(np.intp, copy=False)


def model_input(model, ids):
    """What ``model.forward`` (or ``model.step``) takes for the token ids ``ids`` (...), each
    in [0, model.input_size): the ids themselves (int64) when the model takes ids (its
    ``accepts_ids`` is true), else their one-hot (..., input_size) in the model's dtype,
    which means the same sequence."""
    V = model.input_size
    ids = _check_token_ids("ids", ids, V)
    if getattr(model, "accepts_ids", False):
        return ids.astype(np.int64, copy=False)
    return _one_hot(ids, V, model.dtype)


class LMScore(NamedTuple):
    """A language model's score on a token stream: ``cross_entropy`` in nats per token,
    ``perplexity`` = exp(cross_entropy), over ``tokens`` scored targets."""

    cross_entropy: float
    perplexity: float
    tokens: int

    @property
    def bits_per_token(self):
        """The cross-entropy in bits (bits per character at char level)."""
        return self.cross_entropy / math.log(2)


def _runner(model):
    """The model's forward pass without a cache for backward where it has one."""
    return getattr(model, "predict", None) or model.forward


def _nll_sum(logits, target):
    """Σ -log softmax(logits)[target] over (T, B), in float64; logits (T, B, C)."""
    if logits.ndim != 3 or logits.shape[:2] != target.shape:
        raise ValueError(f"the model's output must have shape {target.shape + ('C',)}, got {logits.shape}")
    if logits.shape[2] <= target.max():
        raise ValueError(f"the model has {logits.shape[2]} outputs, too few for token ids up to "
                         f"{target.max()}: give it output_size = the vocabulary size")
    z = logits.astype(np.float64)
    z -= z.max(axis=2, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=2))
    picked = np.take_along_axis(z, target[..., None], axis=2)[..., 0]
    return float(np.sum(log_norm - picked))


def evaluate_lm(model, ids, *, seq_length=35, batch_size=10):
    """Per-token cross-entropy and perplexity of ``model`` (logits over the vocabulary, its
    output_size = V) on the stream ``ids`` (N,), read as :class:`StreamBatches` of
    ``batch_size`` tracks in chunks of ``seq_length`` with the state carried from chunk to
    chunk, from zeros. Every next-token target of the tracks is scored once (the last
    N mod B ids are dropped, as by :func:`batchify`). Returns an :class:`LMScore`."""
    run = _runner(model)
    total, count, state = 0.0, 0, None
    for x, target in StreamBatches(ids, seq_length, batch_size, model=model, epochs=1):
        out, state = run(x, state)
        total += _nll_sum(out, target)
        count += target.size
    if not math.isfinite(total):
        raise FloatingPointError("the model's cross-entropy is not finite on these ids")
    ce = total / count
    return LMScore(ce, math.exp(ce) if ce < 700 else math.inf, count)


def perplexity(model, ids, *, seq_length=35, batch_size=10):
    """exp(per-token cross-entropy) of ``model`` on ``ids``: :func:`evaluate_lm`'s perplexity."""
    return evaluate_lm(model, ids, seq_length=seq_length, batch_size=batch_size).perplexity


def unigram_perplexity(train_ids, eval_ids, vocab_size, *, smoothing=1.0):
    """The perplexity on ``eval_ids`` of the unigram model of ``train_ids``: each token
    predicted with its training frequency, add-``smoothing`` (Laplace) smoothed over the
    ``vocab_size`` ids so that no token has probability 0,

        p(v) = (count(v) + smoothing) / (N_train + smoothing · V),
        perplexity = exp(-mean log p(eval token)).

    The score of a model that has learned word frequencies but no context: the one a
    language model must beat."""
    V = check_positive_int("vocab_size", vocab_size)
    train_ids = _check_token_ids("train_ids", train_ids, V).ravel()
    eval_ids = _check_token_ids("eval_ids", eval_ids, V).ravel()
    if not len(eval_ids):
        raise ValueError("eval_ids is empty")
    if isinstance(smoothing, (bool, np.bool_)) or not isinstance(smoothing, (int, float, np.integer, np.floating)) \
            or not (math.isfinite(smoothing) and smoothing >= 0):
        raise ValueError(f"smoothing must be a finite number >= 0, got {smoothing!r}")
    counts = np.bincount(train_ids, minlength=V).astype(np.float64) + smoothing
    total = counts.sum()
    if total == 0:
        raise ValueError("train_ids is empty and smoothing is 0: no probabilities to score with")
    with np.errstate(divide="ignore"):
        log_p = np.log(counts / total)
    return float(np.exp(-np.mean(log_p[eval_ids])))


def sample(model, prompt, n, *, temperature=1.0, top_k=None, seed=None):
    """Generate ``n`` token ids from a language model after the ids ``prompt`` (1-D, not empty).

    The model reads the prompt, then each drawn token in turn, carrying its state: through
    ``model.step(x_t, state)`` when it has one, else ``model.forward`` one step at a time.
    Each token is drawn from softmax(logits / temperature) restricted to the ``top_k`` most
    likely ids (all when None); temperature 0 takes the most likely id.

    Returns (n,) int64 ids.
    """
    n = check_positive_int("n", n)
    if isinstance(temperature, (bool, np.bool_)) or not isinstance(
            temperature, (int, float, np.integer, np.floating)) or not (
            math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    V = model.input_size
    if top_k is not None:
        top_k = check_positive_int("top_k", top_k)
    prompt = _check_token_ids("prompt", prompt, V)
    if prompt.ndim != 1 or not len(prompt):
        raise ValueError(f"prompt must be a non-empty 1-D sequence of ids, got shape {prompt.shape}")
    rng = _rng(seed)
    step = getattr(model, "step", None)
    run = _runner(model)
    state = None

    def advance(token_ids):
        nonlocal state
        if step is not None:
            for token in token_ids:
                logits, state = step(model_input(model, np.array([token])), state)
            return np.asarray(logits)[0]
        out, state = run(model_input(model, np.asarray(token_ids)[:, None]), state)
        return out[-1, 0]

    logits = advance(prompt)
    drawn = np.empty(n, dtype=np.int64)
    for i in range(n):
        drawn[i] = _draw(np.asarray(logits, dtype=np.float64), temperature, top_k, rng)
        if i < n - 1:
            logits = advance(drawn[i:i + 1])
    return drawn


def _draw(logits, temperature, top_k, rng):
    """One id from the logits (C,) at ``temperature`` among the ``top_k`` largest."""
    if not np.isfinite(logits).all():
        raise FloatingPointError("the model's logits are not finite")
    if temperature == 0:
        return int(np.argmax(logits))
    z = logits / temperature
    if top_k is not None and top_k < len(z):
        cut = np.partition(z, len(z) - top_k)[len(z) - top_k]
        z = np.where(z >= cut, z, -np.inf)
    p = np.exp(z - z.max())
    return int(rng.choice(len(p), p=p / p.sum()))
