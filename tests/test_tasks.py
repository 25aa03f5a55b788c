"""fb.tasks: the layouts of the generated tasks, their baselines measured on samples, seeding,
and character-level text (encoding, next-character labels, chunking, bad files)."""
import math
import os

import numpy as np
import pytest

from fastbptt import tasks

# ------------------------------------------------------------------ adding problem


@pytest.mark.parametrize("T", [2, 7, 50])
def test_adding_layout(T, dtype):
    B = 64
    x, target = tasks.adding_problem(T, B, seed=3, dtype=dtype)
    assert x.shape == (T, B, 2) and x.dtype == dtype and x.flags.c_contiguous
    assert target.shape == (B, 1) and target.dtype == dtype
    values, marker = x[:, :, 0], x[:, :, 1]
    assert ((values >= 0) & (values <= 1)).all()
    assert np.isin(marker, (0, 1)).all()
    np.testing.assert_array_equal(marker.sum(axis=0), 2)
    half = T // 2
    np.testing.assert_array_equal(marker[:half].sum(axis=0), 1)  # one in the first half
    np.testing.assert_array_equal(marker[half:].sum(axis=0), 1)  # one in the second half
    for b in range(B):
        i, j = np.flatnonzero(marker[:, b])
        assert target[b, 0] == values[i, b] + values[j, b]


def test_adding_marker_positions_cover_both_halves():
    """Every position of each half is used (an off-by-one in a range would miss one)."""
    T = 9
    x, _ = tasks.adding_problem(T, 5000, seed=0)
    marker = x[:, :, 1]
    first = np.argmax(marker, axis=0)
    second = T - 1 - np.argmax(marker[::-1], axis=0)
    assert set(first) == set(range(0, T // 2))
    assert set(second) == set(range(T // 2, T))


def test_adding_values_are_uniform(estimate_tol):
    x, _ = tasks.adding_problem(20, 5000, seed=1, dtype="float64")
    v = x[:, :, 0].ravel()
    # U(0, 1): mean 1/2, variance 1/12
    assert abs(v.mean() - 0.5) < estimate_tol["uniform_mean_abs"]
    assert abs(v.var() - 1 / 12) < estimate_tol["uniform_variance_abs"]


def test_adding_baseline(tol, estimate_tol):
    """Answering 1 scores MSE 1/6: the sum of two U(0,1) has mean 1, variance 2·(1/12)."""
    assert tasks.ADDING_BASELINE_MSE == pytest.approx(2 * (1 / 12), rel=tol(np.float64, "ulp")["rtol"])
    _, target = tasks.adding_problem(4, 400_000, seed=2, dtype="float64")
    mse = np.mean((target - 1.0) ** 2)
    assert abs(mse - tasks.ADDING_BASELINE_MSE) < estimate_tol["adding_baseline_mse_abs"]
    # and the constant answer 1 is the best one: any other constant does worse
    for c in (0.9, 1.1):
        assert np.mean((target - c) ** 2) > mse


def test_adding_seeds():
    a = tasks.adding_problem(10, 4, seed=7)
    b = tasks.adding_problem(10, 4, seed=7)
    c = tasks.adding_problem(10, 4, seed=8)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], c[0])
    # a Generator is used as it is: two calls draw two different batches
    gen = np.random.default_rng(7)
    first, second = tasks.adding_problem(10, 4, seed=gen), tasks.adding_problem(10, 4, seed=gen)
    np.testing.assert_array_equal(first[0], a[0])
    assert not np.array_equal(first[0], second[0])
    ss = np.random.SeedSequence(11)
    np.testing.assert_array_equal(tasks.adding_problem(10, 4, seed=ss)[0],
                                  tasks.adding_problem(10, 4, seed=np.random.SeedSequence(11))[0])


def test_adding_dtypes_hold_the_same_draws():
    x32, _ = tasks.adding_problem(10, 4, seed=5, dtype="float32")
    x64, _ = tasks.adding_problem(10, 4, seed=5, dtype=np.float64)
    np.testing.assert_array_equal(x32, x64.astype(np.float32))


@pytest.mark.parametrize("kw, error, match", [
    (dict(T=1, batch_size=4), ValueError, "T"),
    (dict(T=0, batch_size=4), ValueError, "T"),
    (dict(T=10, batch_size=0), ValueError, "batch_size"),
    (dict(T=10.0, batch_size=4), TypeError, "T"),
    (dict(T=10, batch_size=4, dtype="int32"), TypeError, "dtype"),
    (dict(T=10, batch_size=4, seed=1.5), TypeError, "seed"),
    (dict(T=10, batch_size=4, seed=True), TypeError, "seed"),
    (dict(T=10, batch_size=4, seed=-1), ValueError, "seed"),
])
def test_adding_bad_arguments(kw, error, match):
    with pytest.raises(error, match=match):
        tasks.adding_problem(**kw)


# ------------------------------------------------------------------ copy memory


@pytest.mark.parametrize("T, n_symbols, length", [(1, 8, 10), (5, 3, 4), (30, 8, 10)])
def test_copy_memory_layout(T, n_symbols, length, dtype):
    B = 50
    x, labels = tasks.copy_memory(T, B, n_symbols=n_symbols, length=length, seed=4, dtype=dtype)
    total = T + 2 * length
    assert x.shape == (total, B, n_symbols + 2) and x.dtype == dtype
    assert labels.shape == (total, B) and np.issubdtype(labels.dtype, np.integer)
    assert np.isin(x, (0, 1)).all()
    np.testing.assert_array_equal(x.sum(axis=2), 1)  # one-hot
    inputs = x.argmax(axis=2)
    blank, delimiter = 0, n_symbols + 1
    symbols = inputs[:length]
    assert ((symbols >= 1) & (symbols <= n_symbols)).all()
    np.testing.assert_array_equal(inputs[length:length + T - 1], blank)
    np.testing.assert_array_equal(inputs[length + T - 1], delimiter)
    np.testing.assert_array_equal(inputs[length + T:], blank)
    np.testing.assert_array_equal(labels[:T + length], blank)
    np.testing.assert_array_equal(labels[T + length:], symbols)


def test_copy_memory_paper_defaults():
    """Arjovsky et al.: 10 symbols from 8, sequences of T + 20, 10 categories."""
    x, labels = tasks.copy_memory(100, 3, seed=0)
    assert x.shape == (120, 3, 10) and labels.shape == (120, 3)
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x[109].argmax(axis=1), 9)  # the delimiter at step T + 9


def test_copy_memory_symbols_are_uniform(estimate_tol):
    _, labels = tasks.copy_memory(3, 20000, n_symbols=5, length=2, seed=9)
    counts = np.bincount(labels[-2:].ravel(), minlength=7)
    assert counts[0] == 0 and counts[6] == 0
    freq = counts[1:6] / counts.sum()
    np.testing.assert_allclose(freq, 0.2, atol=estimate_tol["symbol_frequency_abs"])


def test_copy_memory_seeds():
    a = tasks.copy_memory(12, 5, seed=1)
    b = tasks.copy_memory(12, 5, seed=1)
    c = tasks.copy_memory(12, 5, seed=2)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_copy_memory_baseline_formula(tol):
    rel = tol(np.float64, "ulp")["rtol"]
    for T in (1, 100, 500):
        assert tasks.copy_memory_baseline(T) == pytest.approx(10 * math.log(8) / (T + 20), rel=rel)
    assert tasks.copy_memory_baseline(50, n_symbols=4, length=3) == pytest.approx(3 * math.log(4) / 56, rel=rel)


@pytest.mark.parametrize("T, n_symbols, length", [(20, 8, 10), (7, 4, 3)])
def test_copy_memory_baseline_is_the_memoryless_cross_entropy(T, n_symbols, length, estimate_tol):
    """Fit the best model without memory -- the label frequencies at each step -- on one
    sample, score it on another: its cross-entropy per step approaches the baseline."""
    _, train = tasks.copy_memory(T, 40000, n_symbols=n_symbols, length=length, seed=10)
    _, test = tasks.copy_memory(T, 40000, n_symbols=n_symbols, length=length, seed=11)
    C = n_symbols + 2
    freq = np.stack([np.bincount(row, minlength=C) for row in train]) / train.shape[1]  # (T_total, C)
    p = np.take_along_axis(freq, test, axis=1)  # probability given to each test label
    assert (p > 0).all()
    ce_per_step = -np.log(p).sum(axis=0).mean() / test.shape[0]
    assert ce_per_step == pytest.approx(tasks.copy_memory_baseline(T, n_symbols, length),
                                        rel=estimate_tol["memoryless_cross_entropy_rtol"])


@pytest.mark.parametrize("kw, error, match", [
    (dict(T=0, batch_size=2), ValueError, "T"),
    (dict(T=5, batch_size=2, n_symbols=0), ValueError, "n_symbols"),
    (dict(T=5, batch_size=2, length=0), ValueError, "length"),
    (dict(T=5, batch_size=2, dtype="float16"), TypeError, "dtype"),
])
def test_copy_memory_bad_arguments(kw, error, match):
    with pytest.raises(error, match=match):
        tasks.copy_memory(**kw)


# ------------------------------------------------------------------ character-level text

TEXT = "the river runs; the river remembers.\nÉtienne wrote: 日本の川 -- and then?"


def test_vocab_and_round_trip(rng):
    corpus = tasks.CharCorpus(TEXT)
    assert list(corpus.vocab) == sorted(set(TEXT))
    assert corpus.vocab_size == len(set(TEXT)) and len(corpus) == len(TEXT)
    ids = corpus.encode(TEXT)
    assert ids.shape == (len(TEXT),) and np.issubdtype(ids.dtype, np.integer)
    assert [corpus.vocab[i] for i in ids] == list(TEXT)
    np.testing.assert_array_equal(corpus.ids, ids)
    assert corpus.decode(ids) == TEXT
    for _ in range(20):
        a, b = sorted(rng.integers(0, len(TEXT) + 1, size=2))
        assert corpus.decode(corpus.encode(TEXT[a:b])) == TEXT[a:b]
    assert corpus.decode(list(ids[:3])) == TEXT[:3]
    assert corpus.decode([]) == "" and corpus.encode("").shape == (0,)


def test_encode_decode_errors():
    corpus = tasks.CharCorpus("abc")
    with pytest.raises(ValueError, match="'z'"):
        corpus.encode("abz")
    with pytest.raises(TypeError, match="str"):
        corpus.encode(b"abc")
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        corpus.decode(np.array([0, 3]))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        corpus.decode([-1])
    with pytest.raises(TypeError, match="integers"):
        corpus.decode(np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="empty"):
        tasks.CharCorpus("")
    with pytest.raises(TypeError, match="str"):
        tasks.CharCorpus(["a", "b"])


def test_one_hot(dtype):
    corpus = tasks.CharCorpus(TEXT)
    ids = corpus.encode(TEXT).reshape(-1, 1)
    oh = corpus.one_hot(ids, dtype)
    assert oh.shape == (len(TEXT), 1, corpus.vocab_size) and oh.dtype == dtype
    np.testing.assert_array_equal(oh.sum(axis=-1), 1)
    np.testing.assert_array_equal(oh.argmax(axis=-1), ids)
    with pytest.raises(ValueError):
        corpus.one_hot([corpus.vocab_size])


def test_random_batches_hold_windows_and_next_characters(dtype):
    corpus = tasks.CharCorpus(TEXT * 3)
    T, B = 9, 6
    stream = corpus.batches(T, B, np.random.default_rng(0), dtype=dtype)
    for _ in range(5):
        x, labels = next(stream)
        assert x.shape == (T, B, corpus.vocab_size) and x.dtype == dtype
        assert labels.shape == (T, B) and np.issubdtype(labels.dtype, np.integer)
        for b in range(B):
            window = corpus.decode(x[:, b].argmax(axis=1))
            targets = corpus.decode(labels[:, b])
            assert targets[:-1] == window[1:]  # each label is the next input
            assert window + targets[-1] in corpus.text  # a real stretch of the text


def test_random_batches_seeded():
    corpus = tasks.CharCorpus(TEXT * 3)
    a = next(corpus.batches(5, 4, 123))
    b = next(corpus.batches(5, 4, np.random.default_rng(123)))
    c = next(corpus.batches(5, 4, 124))
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_random_batches_reach_both_ends():
    """Start offsets cover [0, N - T - 1]: the first and the last window both occur."""
    corpus = tasks.CharCorpus("abcdefghij")
    T = 4
    starts = set()
    for _, (x, labels) in zip(range(50), corpus.batches(T, 8, 0)):
        starts.update(int(i) for i in labels[0] - 1)  # label at t=0 is text[start + 1]
    assert starts == set(range(0, 10 - T))


def test_sequential_chunks_tile_the_stream():
    """min-char-rnn's order: consecutive chunks, labels shifted by one, then start over."""
    corpus = tasks.CharCorpus(TEXT)
    T = 7
    n_chunks = (len(TEXT) - 1) // T
    stream = corpus.sequential(T)
    inputs, targets = [], []
    for _ in range(n_chunks):
        x, labels = next(stream)
        assert x.shape == (T, 1, corpus.vocab_size) and labels.shape == (T, 1)
        inputs.append(corpus.decode(x[:, 0].argmax(axis=1)))
        targets.append(corpus.decode(labels[:, 0]))
        assert stream.epoch == 0
    assert "".join(inputs) == TEXT[:n_chunks * T]
    assert "".join(targets) == TEXT[1:n_chunks * T + 1]
    x, labels = next(stream)  # past the end: back to the start
    assert stream.epoch == 1
    assert corpus.decode(x[:, 0].argmax(axis=1)) == TEXT[:T]


def test_sequential_uses_the_last_character_when_it_fits():
    corpus = tasks.CharCorpus("abcdefg")  # 6 inputs with a following label: two chunks of 3
    stream = corpus.sequential(3)
    next(stream)
    _, labels = next(stream)
    assert corpus.decode(labels[:, 0]) == "efg" and stream.epoch == 0


def test_sequential_batched_tracks():
    text = "abcdefghijklmnopqrstuvwxyz"
    corpus = tasks.CharCorpus(text)
    B, T = 3, 4
    stream = corpus.sequential(T, B, dtype="float64")
    track = (len(text) - 1) // B  # 8 characters of input per track
    x, labels = next(stream)
    assert x.shape == (T, B, 26) and x.dtype == np.float64
    for b in range(B):
        assert corpus.decode(x[:, b].argmax(axis=1)) == text[b * track:b * track + T]
        assert corpus.decode(labels[:, b]) == text[b * track + 1:b * track + T + 1]
    x, _ = next(stream)
    for b in range(B):
        assert corpus.decode(x[:, b].argmax(axis=1)) == text[b * track + T:b * track + 2 * T]


def test_too_short_for_the_window():
    corpus = tasks.CharCorpus("abcde")
    with pytest.raises(ValueError, match="seq_length"):
        corpus.batches(5, 2)
    with pytest.raises(ValueError, match="seq_length"):
        corpus.sequential(3, 2)
    corpus.batches(4, 2)  # exactly enough: 4 inputs and the label after them
    with pytest.raises(ValueError, match="seq_length"):
        corpus.batches(0, 2)


# ------------------------------------------------------------------ files


def test_from_file_round_trip(tmp_path):
    path = tmp_path / "text.txt"
    path.write_bytes(TEXT.encode("utf-8"))
    corpus = tasks.CharCorpus.from_file(path)
    assert corpus.text == TEXT
    assert tasks.CharCorpus.from_file(str(path)).text == TEXT
    latin = tmp_path / "latin.txt"
    latin.write_bytes("Étienne".encode("latin-1"))
    assert tasks.CharCorpus.from_file(latin, encoding="latin-1").text == "Étienne"


def test_bad_files(tmp_path):
    missing = tmp_path / "nowhere.txt"
    with pytest.raises(FileNotFoundError, match="nowhere.txt"):
        tasks.CharCorpus.from_file(missing)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.txt.*empty"):
        tasks.CharCorpus.from_file(empty)
    binary = tmp_path / "data.bin"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(ValueError, match="data.bin"):
        tasks.CharCorpus.from_file(binary)
    undecodable = tmp_path / "latin.txt"
    undecodable.write_bytes("café au lait".encode("latin-1"))
    with pytest.raises(ValueError, match="latin.txt.*utf-8"):
        tasks.CharCorpus.from_file(undecodable)
    with pytest.raises(OSError, match=str(tmp_path.name)):
        tasks.CharCorpus.from_file(tmp_path)


# ------------------------------------------------------------------ the bundled corpus


def test_default_corpus():
    corpus = tasks.default_corpus()
    path = os.path.join(os.path.dirname(tasks.__file__), "data", "corpus.txt")
    with open(path, encoding="utf-8") as f:
        assert corpus.text == f.read()
    assert 20_000 <= len(corpus.text.encode("utf-8")) <= 40_000
    words = corpus.text.split()
    assert len(words) > 3000
    assert len(set(w.lower().strip(".,;:?") for w in words)) > 500  # prose, not a repeated line
    assert set("abcdefghijklmnopqrstuvwxyz .,\n") <= set(corpus.vocab)
    assert 30 <= corpus.vocab_size <= 100
    # the most common character of English prose is the space, then e
    counts = {c: corpus.text.count(c) for c in corpus.vocab}
    assert sorted(counts, key=counts.get, reverse=True)[:2] == [" ", "e"]
    x, labels = next(corpus.sequential(25))
    assert corpus.decode(labels[:, 0]) == corpus.text[1:26]


# ------------------------------------------------------------------ language-modelling corpora

WORDS = "The river runs.\nThe river remembers the rain, the rain's long-term memory.\n\nIt runs\n"


def test_vocabulary_orders_specials_then_by_count():
    vocab = tasks.Vocabulary.from_tokens(list("abbcccddd") + ["z"], specials=("<unk>",), unk="<unk>",
                                         min_count=2)
    # c and d both three times: code-point order breaks the tie; a and z (once) are dropped
    assert vocab.tokens == ("<unk>", "c", "d", "b")
    np.testing.assert_array_equal(vocab.encode(["d", "a", "b", "z"]), [2, 0, 3, 0])
    assert vocab.decode([1, 2, 0]) == ["c", "d", "<unk>"]
    assert len(vocab) == 4 and "c" in vocab and "a" not in vocab and vocab.unk == "<unk>"


def test_vocabulary_without_unk_names_unknown_tokens():
    vocab = tasks.Vocabulary(["x", "y"])
    with pytest.raises(ValueError, match="'q'"):
        vocab.encode(["x", "q"])
    with pytest.raises(TypeError, match="sequence of str"):
        vocab.encode("xy")
    with pytest.raises(ValueError, match="distinct"):
        tasks.Vocabulary(["x", "x"])
    with pytest.raises(ValueError, match="unk"):
        tasks.Vocabulary(["x"], unk="<unk>")
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        vocab.decode([2])
    with pytest.raises(ValueError, match="min_count"):
        tasks.Vocabulary.from_tokens(["x"], min_count=0)


def test_word_level_tokens_end_lines_with_eos():
    corpus = tasks.TextCorpus(WORDS, level="word", valid_fraction=0)
    tokens = corpus.tokenize("The river runs.\nIt's a long-term <unk>, no?\n")
    assert tokens == ["The", "river", "runs", ".", tasks.EOS,
                      "It's", "a", "long-term", "<unk>", ",", "no", "?", tasks.EOS]
    assert corpus.tokenize("no newline") == ["no", "newline"]
    assert corpus.vocab.tokens[:2] == (tasks.UNK, tasks.EOS)
    # every line of WORDS (the empty one too) ends with <eos>
    assert (corpus.ids == corpus.vocab.encode([tasks.EOS])[0]).sum() == WORDS.count("\n")
    assert corpus.decode(corpus.encode("The river runs.\nIt runs\n")) == "The river runs .\nIt runs\n"


def test_word_level_min_count_makes_rare_words_unk():
    corpus = tasks.TextCorpus(WORDS, level="word", min_count=2, valid_fraction=0)
    words = corpus.tokenize(WORDS)
    counts = {w: words.count(w) for w in words}
    kept = {t for t in corpus.vocab.tokens} - {tasks.UNK, tasks.EOS}
    assert kept == {w for w, c in counts.items() if c >= 2 and w != tasks.EOS}
    unk = corpus.vocab.encode([tasks.UNK])[0]
    rare = [i for i, w in enumerate(words) if counts[w] < 2]
    assert rare and (corpus.ids[rare] == unk).all()
    assert (np.delete(corpus.ids, rare) != unk).all()
    assert tasks.TextCorpus(WORDS, level="word", lower=True, valid_fraction=0).vocab.encode(["the"])[0] \
        != corpus.vocab.encode([tasks.UNK])[0]


def test_split_builds_the_vocabulary_from_the_training_part():
    text = "aaaabbbbab" * 9 + "abzz"   # z only in the last 4 of 94 characters
    corpus = tasks.TextCorpus(text, level="char", valid_fraction=0.1)
    n_valid = round(0.1 * len(text))
    assert len(corpus.valid) == n_valid and len(corpus.train) == len(text) - n_valid
    np.testing.assert_array_equal(np.concatenate([corpus.train, corpus.valid]), corpus.ids)
    assert "z" not in corpus.vocab and corpus.vocab.unk == tasks.UNK
    assert corpus.decode(corpus.valid[-2:]) == tasks.UNK * 2
    assert corpus.decode(corpus.train) == text[:len(corpus.train)]
    # without rare or unseen characters there is no <unk> at char level
    plain = tasks.TextCorpus("abcabcabcabc", level="char", valid_fraction=0.25)
    assert tasks.UNK not in plain.vocab and plain.vocab_size == 3
    with pytest.raises(ValueError, match="'d'"):
        plain.encode("abd")
    for ids in (corpus.train, corpus.valid, corpus.ids):
        assert not ids.flags.writeable


def test_text_corpus_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="level"):
        tasks.TextCorpus("abc", level="byte")
    with pytest.raises(ValueError, match="valid_fraction"):
        tasks.TextCorpus("abcdef", valid_fraction=1.0)
    with pytest.raises(TypeError, match="valid_fraction"):
        tasks.TextCorpus("abcdef", valid_fraction="0.1")
    with pytest.raises(ValueError, match="too few"):
        tasks.TextCorpus("ab", valid_fraction=0.5)
    with pytest.raises(TypeError, match="str"):
        tasks.TextCorpus(b"abc")
    with pytest.raises(ValueError, match="validation"):
        tasks.TextCorpus("abcdef", valid_fraction=0).split("valid")
    with pytest.raises(ValueError, match="which"):
        tasks.TextCorpus("abcdef", valid_fraction=0).split("test")
    (tmp_path / "bin").write_bytes(b"ab\0cd")
    with pytest.raises(ValueError, match="NUL"):
        tasks.TextCorpus.from_file(tmp_path / "bin")
    with pytest.raises(FileNotFoundError, match="missing"):
        tasks.TextCorpus.from_file(tmp_path / "missing")


def test_text_corpus_from_file_and_bundled(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(WORDS, encoding="utf-8")
    corpus = tasks.TextCorpus.from_file(path, level="word", valid_fraction=0.2)
    assert corpus.source == str(path) and corpus.level == "word"
    np.testing.assert_array_equal(corpus.ids, tasks.TextCorpus(WORDS, level="word", valid_fraction=0.2).ids)
    bundled = tasks.TextCorpus.bundled(level="word", min_count=2)
    assert bundled.vocab_size > 100 and len(bundled.valid) > 100
    # min count 1: the first line comes back word for word, then its <eos>
    full = tasks.TextCorpus.bundled(level="word")
    first_line = full.text.split("\n")[0]
    assert full.decode(full.train[:len(first_line.split()) + 1]) == first_line + "\n"


def test_batchify_is_torchs_track_layout():
    tracks = tasks.batchify(np.arange(11), 3)   # 3 tracks of 3; ids 9 and 10 dropped
    np.testing.assert_array_equal(tracks, [[0, 3, 6], [1, 4, 7], [2, 5, 8]])
    assert tracks.dtype == np.int64 and tracks.flags.c_contiguous
    with pytest.raises(ValueError, match="too few"):
        tasks.batchify(np.arange(5), 3)
    with pytest.raises(TypeError, match="integers"):
        tasks.batchify(np.arange(10.0), 2)
    with pytest.raises(ValueError, match="1-D"):
        tasks.batchify(np.zeros((4, 4), int), 2)
    with pytest.raises(ValueError, match=">= 0"):
        tasks.batchify(np.array([0, -1, 2, 3]), 2)


def test_stream_chunks_tile_each_track_with_next_token_targets():
    ids = np.arange(3 * 12)          # tracks of 12: ids 12b .. 12b + 11
    stream = tasks.StreamBatches(ids, 5, 3)
    assert len(stream) == 3          # 11 scored steps: chunks of 5, 5 and 1
    chunks = [next(stream) for _ in range(3)]
    assert [x.shape for x, _ in chunks] == [(5, 3), (5, 3), (1, 3)]
    x_all = np.concatenate([x for x, _ in chunks])
    y_all = np.concatenate([y for _, y in chunks])
    np.testing.assert_array_equal(x_all, np.arange(11)[:, None] + 12 * np.arange(3))
    np.testing.assert_array_equal(y_all, x_all + 1)
    assert stream.epoch == 1 and stream.position == 0
    x, _ = next(stream)              # the next epoch starts over
    np.testing.assert_array_equal(x, chunks[0][0])
    finite = tasks.StreamBatches(ids, 5, 3, epochs=2)
    assert sum(1 for _ in finite) == 6


class _IdModel:
    """A stand-in for a model that takes ids, as fb.RNN says with accepts_ids."""

    accepts_ids = True
    input_size = 7
    dtype = np.dtype(np.float32)


class _OneHotModel:
    """A stand-in for a model that takes float input only (no accepts_ids)."""

    def __init__(self, input_size, dtype):
        self.input_size, self.dtype = input_size, np.dtype(dtype)


def test_stream_feeds_a_model_one_hot_or_ids(dtype):
    from fastbptt import RNN
    corpus = tasks.TextCorpus("abcdefg" * 20, valid_fraction=0.1)
    ids, _ = next(corpus.stream("train", 4, 2))
    x, y = next(corpus.stream("train", 4, 2, model=_OneHotModel(corpus.vocab_size, dtype)))
    assert x.shape == (4, 2, corpus.vocab_size) and x.dtype == dtype
    np.testing.assert_array_equal(x, np.eye(corpus.vocab_size, dtype=dtype)[ids])
    model = RNN(corpus.vocab_size, 3, output_size=corpus.vocab_size, dtype=dtype, seed=0)
    x_model, _ = next(corpus.stream("train", 4, 2, model=model))
    np.testing.assert_array_equal(x_model, ids)      # fb.RNN takes the ids themselves
    x_ids, _ = next(corpus.stream("train", 4, 2, model=_IdModel()))
    np.testing.assert_array_equal(x_ids, ids)
    assert x_ids.dtype == np.int64
    with pytest.raises(ValueError, match="input_size"):
        tasks.StreamBatches(np.arange(20) % 9, 4, 2, model=_IdModel())
    with pytest.raises(TypeError, match="model"):
        tasks.StreamBatches(np.arange(20) % 5, 4, 2, model="lstm")


def test_model_input_checks_the_ids():
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 7\)"):
        tasks.model_input(_IdModel(), np.array([[0, 7]]))
    with pytest.raises(ValueError, match="ids"):
        tasks.model_input(_IdModel(), np.array([-1]))
    with pytest.raises(TypeError, match="ids must hold integers"):
        tasks.model_input(_IdModel(), np.array([0.5]))
    with pytest.raises(TypeError, match="ids must hold integers"):
        tasks.model_input(_IdModel(), np.array([True]))
    original = np.array([[1, 2], [3, 4]])
    tasks.model_input(_IdModel(), original)
    np.testing.assert_array_equal(original, [[1, 2], [3, 4]])


def _approx(value, tol):
    """pytest.approx at the float64 "math" tolerance: a few float64 operations apart."""
    t = tol(np.float64, "math")
    return pytest.approx(value, rel=t["rtol"], abs=t["atol"])


def test_unigram_perplexity_against_hand_counts(tol):
    # counts (2, 1, 0) + 1 over 3 + 3: p = 1/2, 1/3, 1/6; eval [0, 1]: exp(-(ln 1/2 + ln 1/3)/2) = √6
    got = tasks.unigram_perplexity([0, 0, 1], [0, 1], 3)
    assert got == _approx(math.sqrt(6), tol)
    # unsmoothed: the training frequencies themselves; an unseen token has perplexity inf
    assert tasks.unigram_perplexity([0, 0, 1], [0, 0, 1, 1], 3, smoothing=0) == _approx(
        math.exp(-(2 * math.log(2 / 3) + 2 * math.log(1 / 3)) / 4), tol)
    with np.errstate(divide="ignore"):
        assert tasks.unigram_perplexity([0, 0, 1], [2], 3, smoothing=0) == math.inf
    # with no training data the smoothed model is uniform: perplexity V
    assert tasks.unigram_perplexity([], [0, 1, 2, 2], 5) == _approx(5, tol)
    with pytest.raises(ValueError, match="eval_ids"):
        tasks.unigram_perplexity([0], [], 3)
    with pytest.raises(ValueError, match="train_ids"):
        tasks.unigram_perplexity([3], [0], 3)
    with pytest.raises(ValueError, match="smoothing"):
        tasks.unigram_perplexity([0], [0], 3, smoothing=-1)
