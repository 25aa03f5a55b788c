"""Variable-length sequences: the adding problem with lengths from T/2 to T, padded into
one batch, a GRU reading each sequence to its own end (PyTorch's PackedSequence semantics).

``lengths`` goes to ``forward`` (through ``fit``), and the loss scores each sequence at its
own last step; the padding is never computed on. Predicting 1 always scores MSE 1/6.

    python examples/variable_lengths.py
"""
import numpy as np

import fastbptt as fb

T, BATCH, HIDDEN, STEPS = 100, 16, 64, 4_000
rng = np.random.default_rng(0)


def padded_batch(size):
    """(x (T, size, 2), target (size, 1), lengths (size,)): one adding problem per length."""
    lengths = rng.integers(T // 2, T + 1, size=size)
    x = np.zeros((T, size, 2), dtype=np.float32)
    target = np.empty((size, 1), dtype=np.float32)
    for b, length in enumerate(lengths):
        x[:length, b:b + 1], target[b:b + 1] = fb.tasks.adding_problem(length, 1, seed=rng)
    return x, target, lengths


model = fb.RNN(2, HIDDEN, cell="gru", output_size=1, seed=0)
optimizer = fb.optim.Adam(model.params, lr=3e-3)
batches = (padded_batch(BATCH) for _ in iter(int, 1))
history = fb.train.fit(model, batches, steps=STEPS, optimizer=optimizer, loss="mse",
                       last_step=True, clip_norm=1.0, eval_data=padded_batch(1000), eval_every=500)
print(f"test MSE {history.eval_loss[-1]:.4f} (baseline {fb.tasks.ADDING_BASELINE_MSE:.4f}), "
      f"{history.steps_per_second:.0f} batches/s")
