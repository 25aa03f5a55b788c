"""The adding problem with an IRNN (Le et al. 2015): a ReLU RNN whose W_hh starts as I.

Each sequence holds 100 random values and two markers; the target is the sum of the two
marked values, read out after the last step. Predicting 1 always scores MSE 1/6; this model
gets below 0.01 in about 12,000 batches (a minute or so on 2 cores).

    python examples/adding_problem.py
"""
import numpy as np

import fastbptt as fb

T, BATCH, HIDDEN, STEPS = 100, 16, 100, 12_000

model = fb.RNN(2, HIDDEN, cell="relu", init="identity", output_size=1, seed=0)
optimizer = fb.optim.Adam(model.params, lr=3e-4)
rng = np.random.default_rng(0)
batches = (fb.tasks.adding_problem(T, BATCH, seed=rng) for _ in iter(int, 1))
test = fb.tasks.adding_problem(T, 1000, seed=1)

history = fb.train.fit(model, batches, steps=STEPS, optimizer=optimizer, loss="mse",
                       last_step=True, clip_norm=1.0, eval_data=test, eval_every=1000)
print(f"test MSE {history.eval_loss[-1]:.4f} (baseline {fb.tasks.ADDING_BASELINE_MSE:.4f}), "
      f"{history.steps_per_second:.0f} batches/s")
model.save("irnn_adding.npz")
print("saved irnn_adding.npz; reload it with fb.load('irnn_adding.npz')")
