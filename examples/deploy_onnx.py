"""Deploy a trained model: export it to ONNX, run it in onnxruntime, and check it against
fastbptt; then generate with ``model.step``, one time step at a time.

A small bidirectional GRU trains briefly on the adding problem (a couple of hundred batches);
the export takes the initial state and the lengths as inputs, and onnxruntime's outputs on a
batch of variable lengths, at a batch size and length the export never saw, are compared with
``model.predict``'s (the cache-free forward).

    pip install fastbptt[onnx] onnxruntime
    python examples/deploy_onnx.py
"""
import numpy as np

import fastbptt as fb
from fastbptt.export import export_onnx

try:
    import onnxruntime as ort
except ImportError:
    raise SystemExit("this example runs the export in onnxruntime: pip install onnxruntime")

T, BATCH, HIDDEN, STEPS = 50, 32, 32, 200

# -- train briefly: the sum of the two marked values, read out after the last step
model = fb.RNN(2, HIDDEN, cell="gru", num_layers=2, bidirectional=True, output_size=1, seed=0)
rng = np.random.default_rng(0)


batches = (fb.tasks.adding_problem(T, BATCH, seed=rng) for _ in range(STEPS))
history = fb.train.fit(model, batches, steps=STEPS,
                       optimizer=fb.optim.Adam(model.params, lr=3e-3), loss="mse",
                       last_step=True, clip_norm=1.0, progress=False)
print(f"trained {STEPS} batches, last loss {history.loss[-1]:.4f}")

# -- export, with the initial state and the lengths as inputs of the graph
path = "adding_gru.onnx"
export_onnx(model, path, with_state=True, with_lengths=True)
session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
print(f"wrote {path}: inputs {[i.name for i in session.get_inputs()]}, "
      f"outputs {[o.name for o in session.get_outputs()]}")

# -- the same batch through both, at a batch size and length the export never saw
x, _ = fb.tasks.adding_problem(40, 7, seed=rng)
lengths = rng.integers(1, 41, 7)
h0 = np.zeros((model.num_layers * model.num_directions, 7, HIDDEN), np.float32)
out, h_n = model.predict(x, h0, lengths)
ort_out, ort_h_n = session.run(None, {"x": x, "h0": h0, "lengths": lengths.astype(np.int32)})
scale = max(1.0, float(np.abs(out).max()))
print(f"onnxruntime against fastbptt: out differs by {np.abs(ort_out - out).max() / scale:.1e}, "
      f"h_n by {np.abs(ort_h_n - h_n).max():.1e} (relative to the largest value)")

# -- one step at a time: a unidirectional model's steps chained equal predict
lstm = fb.RNN(3, 16, cell="lstm", output_size=2, seed=1)
seq = rng.standard_normal((20, 1, 3)).astype(np.float32)
whole, _ = lstm.predict(seq)
state, steps = None, []
for x_t in seq:
    y_t, state = lstm.step(x_t, state)
    steps.append(y_t)
print(f"step by step against predict: {np.abs(np.stack(steps) - whole).max():.1e}")
