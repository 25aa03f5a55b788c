"""Language modelling: per-token cross-entropy and perplexity against an independent
computation, sampling (greedy, temperature, top-k, seeds, step), a model that learns a text
better than the unigram baseline, and ``python -m fastbptt lm``."""
import math

import numpy as np
import pytest

import fastbptt as fb
from fastbptt import tasks
from fastbptt.__main__ import main


def _log_softmax(z):
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def test_evaluate_lm_equals_one_pass_over_whole_tracks(backend, tol, rng):
    """Chunks of 4 with the state carried give exactly the cross-entropy of one forward
    over each whole track: the chunking loses nothing and scores each target once."""
    V, B = 6, 3
    ids = rng.integers(0, V, size=3 * 17 + 2)
    model = fb.RNN(V, 5, cell="gru", output_size=V, dtype="float64", seed=1, backend=backend)
    score = tasks.evaluate_lm(model, ids, seq_length=4, batch_size=B)
    tracks = ids[:B * 17].reshape(B, 17).T
    out, _ = model.forward(np.eye(V)[tracks[:-1]])
    nll = -np.take_along_axis(_log_softmax(out), tracks[1:, :, None], axis=2)
    t = tol(np.float64, "split")
    assert score.tokens == 16 * B
    assert score.cross_entropy == pytest.approx(nll.mean(), rel=t["rtol"], abs=t["atol"])
    assert score.perplexity == pytest.approx(math.exp(nll.mean()), rel=t["rtol"])
    assert score.bits_per_token == pytest.approx(nll.mean() / math.log(2), rel=t["rtol"])
    assert tasks.perplexity(model, ids, seq_length=4, batch_size=B) == score.perplexity


class _Table:
    """A stand-in language model whose logits depend only on the last input id: row
    ``logits[id]``. Takes one-hot input (T, B, V) like fb.RNN today, or ids (its
    accepts_ids); with ``has_step`` it offers step() and counts the calls."""

    def __init__(self, logits, *, accepts_ids=False, has_step=False):
        self.table = np.asarray(logits, dtype=np.float64)
        self.input_size = self.table.shape[0]
        self.dtype = np.dtype(np.float64)
        self.accepts_ids = accepts_ids
        self.steps = 0
        if has_step:
            self.step = self._step

    def _ids(self, x):
        return x if self.accepts_ids else x.argmax(axis=-1)

    def forward(self, x, h0=None):
        if not self.accepts_ids and x.shape[-1] != self.input_size:
            raise ValueError("x must be one-hot")
        return self.table[self._ids(x)], None

    def _step(self, x_t, state=None):
        self.steps += 1
        return self.table[self._ids(x_t)], None


def test_evaluate_lm_with_a_fixed_table(tol):
    table = np.log(np.array([[.1, .2, .3, .4], [.25, .25, .25, .25], [.7, .1, .1, .1], [.1, .1, .1, .7]]))
    ids = np.array([0, 3, 3, 2, 0, 1, 2, 2, 3, 1])
    score = tasks.evaluate_lm(_Table(table), ids, seq_length=3, batch_size=1)
    expected = -np.mean([table[a, b] for a, b in zip(ids[:-1], ids[1:])])
    t = tol(np.float64, "math")
    assert score.tokens == len(ids) - 1
    assert score.cross_entropy == pytest.approx(expected, rel=t["rtol"], abs=t["atol"])
    assert tasks.evaluate_lm(_Table(table, accepts_ids=True), ids, seq_length=3,
                             batch_size=1).cross_entropy == score.cross_entropy
    with pytest.raises(ValueError, match="output_size"):
        tasks.evaluate_lm(_Table(table[:, :2]), ids, batch_size=1)
    with pytest.raises(ValueError, match="input_size"):
        tasks.evaluate_lm(_Table(table), np.array([0, 1, 4, 2]), batch_size=1)


def _successor_table(V, margin=5.0):
    """Logits that favour (id + 1) mod V by ``margin`` over every other id."""
    table = np.zeros((V, V))
    table[np.arange(V), (np.arange(V) + 1) % V] = margin
    return table


@pytest.mark.parametrize("has_step", [False, True], ids=["forward", "step"])
@pytest.mark.parametrize("accepts_ids", [False, True], ids=["one-hot", "ids"])
def test_sample_greedy_follows_the_most_likely_chain(has_step, accepts_ids):
    model = _Table(_successor_table(5), accepts_ids=accepts_ids, has_step=has_step)
    drawn = tasks.sample(model, [3, 1], 7, temperature=0)
    np.testing.assert_array_equal(drawn, [2, 3, 4, 0, 1, 2, 3])
    assert drawn.dtype == np.int64
    if has_step:  # the prompt's two ids, then every drawn id but the last
        assert model.steps == 2 + 6
    np.testing.assert_array_equal(tasks.sample(model, [3], 4, top_k=1, seed=0), [4, 0, 1, 2])


def test_sample_top_k_and_temperature(estimate_tol):
    V = 6
    row = np.array([3.0, 2.0, 1.0, 0.0, -1.0, 0.5])
    model = _Table(np.tile(row, (V, 1)))
    top2 = tasks.sample(model, [0], 400, top_k=2, seed=1)
    assert set(top2) == {0, 1}
    # temperature 1: softmax(row); a high temperature flattens it towards uniform
    n = 4000
    p = np.exp(_log_softmax(row))
    freq = np.bincount(tasks.sample(model, [0], n, seed=2), minlength=V) / n
    assert np.abs(freq - p).max() < estimate_tol["sampled_frequency_abs"]
    hot = np.bincount(tasks.sample(model, [0], n, temperature=100.0, seed=3), minlength=V) / n
    assert np.abs(hot - 1 / V).max() < estimate_tol["sampled_frequency_abs"]
    np.testing.assert_array_equal(tasks.sample(model, [0], 20, seed=7), tasks.sample(model, [0], 20, seed=7))


def test_sample_bad_arguments():
    model = _Table(_successor_table(4))
    for kwargs, error, match in [(dict(temperature=-1), ValueError, "temperature"),
                                 (dict(temperature=float("nan")), ValueError, "temperature"),
                                 (dict(top_k=0), ValueError, "top_k"),
                                 (dict(top_k=1.5), TypeError, "top_k")]:
        with pytest.raises(error, match=match):
            tasks.sample(model, [0], 3, **kwargs)
    with pytest.raises(ValueError, match="prompt"):
        tasks.sample(model, [], 3)
    with pytest.raises(ValueError, match="prompt"):
        tasks.sample(model, [4], 3)
    with pytest.raises(ValueError, match="n must be"):
        tasks.sample(model, [0], 0)


def test_sample_from_an_rnn_carries_the_state(backend):
    """Drawing greedily step by step equals one forward over prompt + drawn ids: every
    drawn id is the argmax of that forward's output at the step before."""
    V = 5
    model = fb.RNN(V, 8, cell="lstm", output_size=V, dtype="float64", seed=3, backend=backend)
    prompt = np.array([1, 4, 2])
    drawn = tasks.sample(model, prompt, 6, temperature=0)
    seq = np.concatenate([prompt, drawn])
    out, _ = model.forward(np.eye(V)[seq[:-1, None]])
    np.testing.assert_array_equal(out[len(prompt) - 1:, 0].argmax(axis=1), drawn)


def test_an_lstm_beats_the_unigram_baseline(backend):
    """A text with strong context (one sentence over and over, a few words changed) is
    learnt far past its unigram perplexity in a few hundred small updates."""
    rng = np.random.default_rng(0)
    words = ["red", "green", "blue", "grey"]
    text = "\n".join(f"the {rng.choice(words)} river runs to the sea" for _ in range(300)) + "\n"
    corpus = tasks.TextCorpus(text, level="word", valid_fraction=0.1)
    V = corpus.vocab_size
    model = fb.RNN(V, 24, cell="lstm", output_size=V, seed=0, backend=backend)
    fb.train.fit(model, corpus.stream("train", 10, 8, model=model), steps=150,
                 optimizer=fb.optim.Adam(model.params, lr=1e-2), loss="cross_entropy",
                 clip_norm=1.0, carry_state=True, progress=False)
    unigram = tasks.unigram_perplexity(corpus.train, corpus.valid, V)
    assert tasks.perplexity(model, corpus.valid, batch_size=4) < 0.5 * unigram


@pytest.mark.parametrize("level", ["char", "word"])
def test_lm_command_prints_perplexity_baseline_and_samples(level, capsys, tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("the river runs to the sea\nand the sea runs back\n" * 30, encoding="utf-8")
    assert main(["lm", str(path), "--level", level, "--steps", "6", "--eval-every", "3",
                 "--hidden", "8", "--seq-length", "8", "--batch", "4", "--sample-length", "5",
                 "--bptt", "4,6", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("backend: ")
    assert f"{level}-level lstm language model on {path}" in out
    assert "unigram baseline: validation perplexity" in out
    assert out.count("validation perplexity") == 1 + 2 + 1   # baseline, two evaluations, verdict
    assert "the unigram baseline's" in out


def test_lm_command_on_the_bundled_corpus(capsys):
    assert main(["lm", "--level", "word", "--steps", "2", "--hidden", "4", "--no-progress",
                 "--cell", "gru", "--prompt", "The river"]) == 0
    out = capsys.readouterr().out
    assert "the bundled corpus" in out and "\nThe river" in out


def test_lm_command_errors(tmp_path, capsys):
    with pytest.raises(SystemExit, match="not found"):
        main(["lm", str(tmp_path / "missing.txt")])
    with pytest.raises(SystemExit, match="K1,K2"):
        main(["lm", "--bptt", "4", "--steps", "1", "--no-progress"])
    with pytest.raises(SystemExit):
        main(["lm", "--level", "byte"])
    short = tmp_path / "short.txt"
    short.write_text("abcdefghij" * 3, encoding="utf-8")
    with pytest.raises(SystemExit, match="too short"):
        main(["lm", str(short), "--batch", "20", "--no-progress"])
