"""One training update fed integer ids against the same update fed their one-hot rows.

``model.train_step`` (forward, cross-entropy at every step, backward, global-norm clip 1.0,
Adam), float32, at the char-RNN shape (T = 25, B = 1, V = 65, H = 100; tanh and LSTM) and at
a 10,000-word LSTM without an embedding (T = 35, B = 20, V = 10,000, H = 256, a 10,000-wide
readout): ``ids`` gathers W_ih's columns and scatters its gradient, ``one-hot`` multiplies
``np.eye(V)[ids]`` by W_ih and its gradient by the one-hot rows. The two give the same
parameters (tests/test_ids.py checks it); this puts their times side by side.

    python -m pytest benchmarks/test_bench_ids.py -p no:cacheprovider \\
        --benchmark-columns=median,iqr,rounds --benchmark-group-by=group

Timings are reported, never asserted.
"""
import numpy as np
import pytest

import fastbptt as fb

# name: (cell, T, B, V, H)
SHAPES = {
    "charrnn-tanh": ("tanh", 25, 1, 65, 100),
    "charrnn-lstm": ("lstm", 25, 1, 65, 100),
    "wordlm-lstm": ("lstm", 35, 20, 10_000, 256),
}


@pytest.mark.parametrize("feed", ["ids", "one-hot"])
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_update_fed_ids_or_one_hot(benchmark, shape_name, feed):
    cell, T, B, V, H = SHAPES[shape_name]
    rng = np.random.default_rng(0)
    ids = rng.integers(0, V, size=(T, B))
    target = rng.integers(0, V, size=(T, B))
    x = ids if feed == "ids" else np.eye(V, dtype=np.float32)[ids]
    model = fb.RNN(V, H, cell=cell, output_size=V, seed=0, dtype=np.float32)
    opt = fb.optim.Adam(model.params, lr=1e-3)
    benchmark.group = f"ids-{shape_name}"
    benchmark.extra_info.update(T=T, B=B, V=V, H=H)
    kwargs = dict(loss="cross_entropy", optimizer=opt, clip_norm=1.0)
    if V > 1000:   # about 0.1-0.3 s an update: a few rounds, as pytest-benchmark's default would not
        benchmark.pedantic(model.train_step, args=(x, target), kwargs=kwargs, rounds=10,
                           warmup_rounds=2)
    else:
        benchmark(model.train_step, x, target, **kwargs)
