"""The main jobs of ``python -m fastbptt``: the adding-problem demo and char-level training."""
import time

import numpy as np

from . import _backend, distributed, losses, optim, tasks
from .model import RNN
from .train import fit

# name: (cell, init, Adam learning rate). The tanh net starts from the default small uniform
# init; the IRNN (Le et al. 2015) is ReLU with W_hh = I.
DEMO_MODELS = {
    "tanh": ("tanh", "default", 1e-3),
    "irnn": ("relu", "identity", 3e-4),
    "lstm": ("lstm", "default", 1e-3),
    "gru": ("gru", "default", 1e-3),
}


def _adding_batches(T, batch_size, seed, dtype):
    """An endless stream of fresh adding-problem batches."""
    rng = np.random.default_rng(seed)
    while True:
        yield tasks.adding_problem(T, batch_size, seed=rng, dtype=dtype)


def _gradient_flow(model, x, target):
    """‖∂E/∂s_t‖ of the top layer for each t, averaged over the batch (the loss scores t = T)."""
    out, _ = model.forward(x)
    _, d_out = losses.mse(out, target, last_step=True)
    g = model.backward(d_out, step_norms=True)
    return g.step_norms[-1].mean(axis=1)


def run_demo(args):
    comm = distributed.command_line_comm(args)
    with distributed.main_job(comm):
        return _run_demo(args, comm)


def _run_demo(args, comm):
    T, B, H = args.T, args.batch, args.hidden
    steps = args.steps or (12000 if T <= 100 else 120 * T)
    names = list(DEMO_MODELS)
    if args.cells:
        wanted = [c.strip() for c in args.cells.split(",")]
        unknown = [c for c in wanted if c not in DEMO_MODELS]
        if unknown:
            raise SystemExit(f"unknown cells {unknown}; choose from {list(DEMO_MODELS)}")
        names = wanted
    baseline = tasks.ADDING_BASELINE_MSE
    x_test, y_test = tasks.adding_problem(T, 1000, seed=args.seed + 10_000)
    print(_backend.describe())
    print(f"The adding problem, T={T}: the target is the sum of the two marked values among {T}.")
    print(f"Always answering 1 scores MSE {baseline:.4f}; a model that has learned it scores near 0.")
    print(f"Each model: H={H}, {steps} batches of {B}, Adam, clip_norm=1.0; test set of 1000.\n")
    results = {}
    for name in names:
        cell, init, lr = DEMO_MODELS[name]
        model = RNN(2, H, cell=cell, init=init, output_size=1, seed=args.seed)
        history = fit(model, distributed.shards_of(_adding_batches(T, B, args.seed, model.dtype), comm,
                                                   last_step=True), steps=steps, comm=comm,
                      optimizer=optim.Adam(model.params, lr=lr), loss="mse", last_step=True,
                      clip_norm=1.0, eval_data=(x_test, y_test), eval_every=max(1, steps // 20),
                      progress=not args.no_progress, desc=f"{name:>5}", log_every=max(1, steps // 400))
        flow = _gradient_flow(model, x_test[:, :100], y_test[:100])
        results[name] = (history, flow)
    print(f"\n{'model':<6} {'test MSE':>9} {'vs 1/6':>7} {'batches/s':>10} {'seconds':>8}  verdict")
    for name, (history, _) in results.items():
        mse = history.eval_loss[-1]
        verdict = "solved" if mse < 0.01 else ("learning" if mse < 0.5 * baseline else "at baseline")
        print(f"{name:<6} {mse:>9.4f} {mse / baseline:>7.3f} {history.steps_per_second:>10.0f} "
              f"{history.seconds:>8.1f}  {verdict}")
    print("\n‖∂E/∂s_t‖ reaching each step from the loss at t=T (gradient flow, mean over 100 sequences):")
    marks = sorted({0, T // 4, T // 2, 3 * T // 4, T - 1})
    print(f"{'model':<6} " + " ".join(f"{'t=' + str(t + 1):>10}" for t in marks))
    for name, (_, flow) in results.items():
        print(f"{name:<6} " + " ".join(f"{flow[t]:>10.3g}" for t in marks))
    if args.plot:
        _plot(args.plot, results, baseline, T)
        print(f"\nsaved the loss curves and the gradient flow to {args.plot}")
    return 0


def _plot(path, results, baseline, T):
    from . import plot
    try:
        fig, axes = plot.subplots(3)
    except ImportError as exc:
        raise SystemExit(f"--plot: {exc}") from None
    plot.history({name: history for name, (history, _) in results.items()}, axes=axes[:2],
                 baseline=baseline, ylabel="MSE", title=f"Adding problem, T={T}")
    plot.gradient_flow({name: flow for name, (_, flow) in results.items()}, ax=axes[2], path=path,
                       title="Gradient flow from the loss at t=T back through time")


def run_char(args):
    comm = distributed.command_line_comm(args)
    with distributed.main_job(comm):
        return _run_char(args, comm)


def _run_char(args, comm):
    corpus = tasks.CharCorpus.from_file(args.file) if args.file else tasks.default_corpus()
    V = len(corpus.vocab)
    model = RNN(V, args.hidden, cell=args.cell, output_size=V, seed=args.seed)
    opt = optim.Adagrad(model.params, lr=args.lr)
    source = args.file or "the bundled corpus"
    print(_backend.describe())
    print(f"char-level {args.cell} RNN on {source}: {len(corpus.text)} characters, vocabulary {V}, "
          f"H={args.hidden}, {args.seq_length}-step chunks, Adagrad lr {args.lr}")
    rng = np.random.default_rng(args.seed)
    tracks = 1 if comm is None else comm.Get_size()
    stream = distributed.shards_of(_id_chunks(corpus, args.seq_length, tracks), comm)
    smooth = -np.log(1.0 / V) * args.seq_length
    done = 0
    started = time.perf_counter()
    while done < args.steps:
        chunk = min(args.sample_every, args.steps - done)
        history = fit(model, stream, steps=chunk, optimizer=opt, loss="cross_entropy",
                      clip_value=5.0, carry_state=True, progress=not args.no_progress, comm=comm,
                      desc="char", log_every=1)
        for value in history.loss:
            smooth = 0.999 * smooth + 0.001 * value
        done += chunk
        print(f"\n--- after {done} chunks, smoothed loss {smooth:.2f} "
              f"({time.perf_counter() - started:.1f}s) ---")
        print(sample(model, corpus, corpus.text[0], 200, rng))
    return 0


def _id_chunks(corpus, T, tracks):
    """``corpus.sequential(T, tracks)``'s stream of chunks as ids: (inputs (T, B), labels
    (T, B)), the model gathering its input weights' columns instead of multiplying one-hot
    rows. The same chunks in the same order (B tracks, starting over at the end)."""
    corpus.sequential(T, tracks)            # its checks: the text is long enough
    track_len = (len(corpus.ids) - 1) // tracks
    starts = np.arange(tracks) * track_len
    position = 0
    while True:
        if position + T > track_len:
            position = 0
        idx = np.arange(position, position + T)[:, None] + starts
        position += T
        yield corpus.ids[idx], corpus.ids[idx + 1]


def sample(model, corpus, seed_char, n, rng):
    """Generate n characters from the model, one step at a time, starting at seed_char."""
    V = len(corpus.vocab)
    x = corpus.encode(seed_char)[-1:]       # ids (1,): a batch of one
    state = None
    out_ids = []
    for _ in range(n):
        logits, state = model.step(x, state)
        p = np.exp(logits[0].astype(np.float64) - logits[0].max())
        nxt = rng.choice(V, p=p / p.sum())
        out_ids.append(nxt)
        x = np.array([nxt])
    return corpus.decode(np.array(out_ids))
