"""Handwritten digits read row by row: scikit-learn's 8x8 digits as sequences of T = 8 rows of
I = 8 pixels, classified from the last step by an IRNN, an LSTM and a GRU, beside PyTorch on
the same recipe.

    pip install fastbptt[data,plot]        # scikit-learn, matplotlib (torch for the comparison)
    python examples/digits_rows.py [--seeds 0,1,2] [--threads 1] [--plot digits_rows.png] [--no-torch]

(the default is seed 0 alone, a few seconds; three seeds give the spread; ``--threads 1``
gives each framework one thread)

Recipe: the 1,797 images of ``sklearn.datasets.load_digits``, pixels / 16 in [0, 1]; a fixed
split (permutation seed 0) of 1,297 training and 500 test images. ``fb.RNN(8, 128, cell=...,
output_size=10)``; ``fb.losses.cross_entropy`` on the last step (``last_step=True``);
``fb.train.fit`` over shuffled mini-batches of 32 (the last partial batch of an epoch dropped),
Adam with its learning rate decayed by a cosine over the epochs (set before each epoch),
gradient norm clipped to 1.0; test accuracy after every epoch. LSTM and GRU: PyTorch's default
init, lr 5e-3, 20 epochs. IRNN (Le et al. 2015): ReLU, W_hh = I, zero biases as
``init="identity"`` sets them, input weights N(0, 1/I) in place of its N(0, 0.001²), lr 1e-2,
60 epochs (with N(0, 0.001²), a constant lr 1e-2 and 20 epochs the inputs barely moved the
state and the IRNN reached 91.5 ± 1.5 %, PyTorch 94.1 ± 1.0 %). PyTorch runs the same model
(nn.RNN/LSTM/GRU + nn.Linear, the same init rules: the readout and the gated cells' weights
uniform in ±1/√H in both), the same batches in the same order, the same loss, learning rates,
clip and Adam. float32 throughout. Started from PyTorch's initial weights
(``model.load_state_dict``), fastbptt's gradients match PyTorch's to float32 rounding along
PyTorch's whole IRNN run (relative 5e-6 or less, up to 2e-4 once the loss is below 1e-3); the two
runs' weights still part within a few dozen updates, as two float32 orders of summation do on
this ReLU recurrence, so the spread below is that of the initial draws.

Results, one run of ``--seeds 0,1,2 --threads 1`` on 2026-12-04 (test accuracy after the last
epoch, seeds 0 / 1 / 2, and mean ± standard deviation):

    IRNN  fastbptt 97.2 / 97.0 / 98.2  (97.5 ± 0.5 %)    torch 97.8 / 97.6 / 97.0  (97.5 ± 0.3 %)
    LSTM  fastbptt 98.6 / 98.0 / 97.8  (98.1 ± 0.3 %)    torch 98.0 / 97.4 / 97.4  (97.6 ± 0.3 %)
    GRU   fastbptt 98.8 / 98.4 / 98.2  (98.5 ± 0.2 %)    torch 99.2 / 98.0 / 98.4  (98.5 ± 0.5 %)

Training time of that run, 1 thread each, summed over the three seeds (evaluation excluded):
fastbptt 2.1 s (IRNN), 1.8 s (LSTM), 1.5 s (GRU); PyTorch 8.6 s, 3.9 s and 6.1 s (2.1-4.4x
fastbptt's per seed), on a shared 2-core machine.
"""
import argparse
import math
import time
from typing import NamedTuple

import numpy as np

import fastbptt as fb

# name: (fastbptt cell, init, Adam learning rate, epochs)
CELLS = {
    "irnn": ("relu", "identity", 1e-2, 60),
    "lstm": ("lstm", "default", 5e-3, 20),
    "gru": ("gru", "default", 5e-3, 20),
}
HIDDEN, BATCH, CLIP, TEST_SIZE = 128, 32, 1.0, 500


def epoch_lr(lr, epoch, epochs):
    """The learning rate of epoch ``epoch`` (from 0) of ``epochs``: a cosine from ``lr`` at
    the first epoch towards 0, set before each epoch in both frameworks."""
    return lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def irnn_input_std(input_size):
    """The IRNN's input weights are drawn N(0, 1/I) (unit-variance drive per step for
    unit-variance inputs), in both frameworks, in place of ``init="identity"``'s N(0, 0.001²):
    that drive is 350 times weaker for the rows (I = 8), 1000 times for the pixels (I = 1), and
    the IRNN learned far more slowly from it (in 64 pixels, not at all)."""
    return 1.0 / math.sqrt(input_size)


class Data(NamedTuple):
    """Time-major sequences: x_train (T, N_train, I) float32, y_train (N_train,) int64, and
    the same for the test set."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


class Result(NamedTuple):
    """One training run: test accuracy after each epoch, the training loss of each batch, the
    seconds spent in training (evaluation excluded)."""

    accuracy: list
    loss: list
    seconds: float


def load(layout="rows", *, test_size=TEST_SIZE, seed=0):
    """The digits as sequences: layout "rows" gives (8, N, 8), "pixels" (64, N, 1) (row-major
    pixel order). A fixed permutation (``seed``) puts ``test_size`` images in the test set."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ImportError("this example needs scikit-learn: pip install fastbptt[data] "
                          f"(or pip install scikit-learn): {exc}") from exc
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)        # (N, 8, 8), pixels 0..16
    if layout == "rows":
        seqs = images.transpose(1, 0, 2)                        # (8, N, 8): row t at step t
    elif layout == "pixels":
        seqs = images.reshape(len(images), 64, 1).transpose(1, 0, 2)   # (64, N, 1)
    else:
        raise ValueError(f"layout must be 'rows' or 'pixels', got {layout!r}")
    order = np.random.default_rng(seed).permutation(len(images))
    test, train = order[:test_size], order[test_size:]
    labels = digits.target.astype(np.int64)
    return Data(np.ascontiguousarray(seqs[:, train]), labels[train],
                np.ascontiguousarray(seqs[:, test]), labels[test])


def epoch_batches(x, y, batch_size, seed, epoch):
    """The shuffled mini-batches (x (T, B, I), y (B,)) of one epoch; both frameworks get the
    same ones. The last partial batch is dropped."""
    order = np.random.default_rng([seed, epoch]).permutation(x.shape[1])
    for i in range(0, len(order) - batch_size + 1, batch_size):
        rows = order[i:i + batch_size]
        yield np.ascontiguousarray(x[:, rows]), y[rows]


def accuracy_of(logits, y):
    return float(np.mean(np.argmax(logits, axis=1) == y))


def train_fastbptt(name, data, *, seed, hidden=HIDDEN, epochs=None, batch_size=BATCH, lr=None):
    """Train one fastbptt model (``epochs`` and ``lr`` None: CELLS'); returns (model,
    :class:`Result`)."""
    cell, init, default_lr, default_epochs = CELLS[name]
    lr, epochs = lr or default_lr, epochs or default_epochs
    T, N, I = data.x_train.shape
    model = fb.RNN(I, hidden, cell=cell, init=init, output_size=10, seed=seed)
    if init == "identity":      # W_hh = I and zero biases as fb sets them; input weights N(0, 1/I)
        weight = model.params["weight_ih_l0"]
        weight[...] = np.random.default_rng([seed, 1]).normal(0.0, irnn_input_std(I), weight.shape)
    optimizer = fb.optim.Adam(model.params, lr=lr)
    accuracy, loss, seconds = [], [], 0.0
    for epoch in range(epochs):
        optimizer.lr = epoch_lr(lr, epoch, epochs)
        history = fb.train.fit(model, epoch_batches(data.x_train, data.y_train, batch_size, seed, epoch),
                               steps=N // batch_size, optimizer=optimizer, loss="cross_entropy",
                               last_step=True, clip_norm=CLIP, progress=False)
        seconds += history.seconds
        loss.extend(history.loss)
        out, _ = model.forward(data.x_test)
        accuracy.append(accuracy_of(out[-1], data.y_test))
    return model, Result(accuracy, loss, seconds)


def train_torch(name, data, *, seed, hidden=HIDDEN, epochs=None, batch_size=BATCH, lr=None):
    """The same recipe in PyTorch (nn.RNN/LSTM/GRU + nn.Linear); returns a :class:`Result`."""
    import torch

    cell, init, default_lr, default_epochs = CELLS[name]
    lr, epochs = lr or default_lr, epochs or default_epochs
    T, N, I = data.x_train.shape
    torch.manual_seed(seed)
    kind = {"relu": torch.nn.RNN, "tanh": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
    extra = {"nonlinearity": cell} if cell in ("relu", "tanh") else {}
    rnn = kind(I, hidden, **extra)
    readout = torch.nn.Linear(hidden, 10)
    if init == "identity":      # Le et al.'s IRNN as in train_fastbptt: input weights N(0, 1/I)
        with torch.no_grad():
            rnn.weight_hh_l0.copy_(torch.eye(hidden))
            torch.nn.init.normal_(rnn.weight_ih_l0, std=irnn_input_std(I))
            rnn.bias_ih_l0.zero_()
            rnn.bias_hh_l0.zero_()
    params = list(rnn.parameters()) + list(readout.parameters())
    optimizer = torch.optim.Adam(params, lr=lr)
    x_test = torch.from_numpy(data.x_test)
    accuracy, loss, seconds = [], [], 0.0
    for epoch in range(epochs):
        for group in optimizer.param_groups:
            group["lr"] = epoch_lr(lr, epoch, epochs)
        started = time.perf_counter()
        for x, y in epoch_batches(data.x_train, data.y_train, batch_size, seed, epoch):
            out, _ = rnn(torch.from_numpy(x))
            value = torch.nn.functional.cross_entropy(readout(out[-1]), torch.from_numpy(y))
            optimizer.zero_grad()
            value.backward()
            torch.nn.utils.clip_grad_norm_(params, CLIP)
            optimizer.step()
            loss.append(float(value.detach()))
        seconds += time.perf_counter() - started
        with torch.no_grad():
            out, _ = rnn(x_test)
            accuracy.append(accuracy_of(readout(out[-1]).numpy(), data.y_test))
    return Result(accuracy, loss, seconds)


def _have_torch():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def run(layout, argv=None, *, hidden=HIDDEN, cells=tuple(CELLS), lrs=None, epochs=None,
        seeds="0", title="row by row", description=__doc__):
    """The command line of this example and of digits_pixels.py; ``lrs``, ``epochs``: learning
    rates and epoch counts that replace CELLS' by name (``--epochs`` replaces them all).
    Returns {(cell, seed): (fastbptt Result, torch Result or None)}."""
    lrs = dict(lrs or {})
    epochs = {name: (epochs or {}).get(name, CELLS[name][3]) for name in CELLS}
    parser = argparse.ArgumentParser(description=description.split("\n\n")[0])
    parser.add_argument("--cells", default=",".join(cells), help="comma-separated subset of irnn,lstm,gru")
    parser.add_argument("--seeds", default=seeds, help=f"comma-separated seeds (default {seeds})")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of every cell (default: "
                        + ", ".join(f"{name} {count}" for name, count in epochs.items()) + ")")
    parser.add_argument("--hidden", type=int, default=hidden)
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    parser.add_argument("--plot", metavar="FILE", default=None, help="save the figure (PNG; needs matplotlib)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads of each framework (fb.set_num_threads, torch.set_num_threads)")
    args = parser.parse_args(argv)
    if args.epochs is not None:
        epochs = dict.fromkeys(epochs, args.epochs)
    cells = [c.strip() for c in args.cells.split(",")]
    unknown = [c for c in cells if c not in CELLS]
    if unknown:
        parser.error(f"unknown cells {unknown}; choose from {list(CELLS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    with_torch = not args.no_torch and _have_torch()
    if args.threads is not None:
        fb.set_num_threads(args.threads)
        if with_torch:
            import torch
            torch.set_num_threads(args.threads)
    data = load(layout)
    T, N, I = data.x_train.shape
    rates = ", ".join(f"{c} {lrs.get(c, CELLS[c][2]):g} for {epochs[c]} epochs" for c in cells)
    threads = "" if args.threads is None else f"; {args.threads} thread(s) each"
    print(f"digits {title}: T={T}, I={I}, {N} training and {data.x_test.shape[1]} test images; "
          f"H={args.hidden}, batches of {BATCH}, Adam (lr {rates}; cosine decay over the epochs), "
          f"clip {CLIP}" + threads + ("" if with_torch else "; no PyTorch comparison"))
    results = {}
    for name in cells:
        for seed in seeds:
            recipe = dict(seed=seed, hidden=args.hidden, epochs=epochs[name], lr=lrs.get(name))
            _, ours = train_fastbptt(name, data, **recipe)
            theirs = train_torch(name, data, **recipe) if with_torch else None
            results[name, seed] = (ours, theirs)
            line = f"{name:<5} seed {seed}: fastbptt {100 * ours.accuracy[-1]:5.1f} % in {ours.seconds:6.1f} s"
            if theirs is not None:
                line += (f"   torch {100 * theirs.accuracy[-1]:5.1f} % in {theirs.seconds:6.1f} s"
                         f"   (torch time / fastbptt time {theirs.seconds / ours.seconds:.2f})")
            print(line, flush=True)
    print("\nmean ± standard deviation over the seeds of the final test accuracy:")
    for name in cells:
        ours = [100 * results[name, s][0].accuracy[-1] for s in seeds]
        line = f"{name:<5} fastbptt {np.mean(ours):5.1f} ± {np.std(ours):.1f} %"
        if with_torch:
            theirs = [100 * results[name, s][1].accuracy[-1] for s in seeds]
            t_ours = sum(results[name, s][0].seconds for s in seeds)
            t_theirs = sum(results[name, s][1].seconds for s in seeds)
            line += (f"   torch {np.mean(theirs):5.1f} ± {np.std(theirs):.1f} %   "
                     f"training time fastbptt {t_ours:.1f} s, torch {t_theirs:.1f} s")
        print(line)
    if args.plot:
        plot(results, cells, seeds, args.plot, title=f"digits {title} (T={T})")
        print(f"saved the figure to {args.plot}")
    return results


def plot(results, cells, seeds, path, *, title):
    """Left: the training loss of the first seed (smoothed per epoch), fastbptt solid and
    torch dashed; right: the test accuracy after every epoch, every seed."""
    fig, (ax_loss, ax_acc) = fb.plot.subplots(2, figsize=(12, 4.5))
    for name in cells:
        ours, theirs = results[name, seeds[0]]
        line, = ax_loss.plot(*_per_epoch(ours), lw=2, label=f"{name} fastbptt")
        if theirs is not None:
            ax_loss.plot(*_per_epoch(theirs), lw=1.5, ls="--", color=line.get_color(), label=f"{name} torch")
        for seed in seeds:
            ours, theirs = results[name, seed]
            epochs = np.arange(1, len(ours.accuracy) + 1)
            ax_acc.plot(epochs, 100 * np.array(ours.accuracy), color=line.get_color(), lw=1.5,
                        label=f"{name} fastbptt" if seed == seeds[0] else None)
            if theirs is not None:
                ax_acc.plot(epochs, 100 * np.array(theirs.accuracy), color=line.get_color(), lw=1,
                            ls="--", label=f"{name} torch" if seed == seeds[0] else None)
    ax_loss.set(yscale="log", xlabel="epoch", ylabel="training cross-entropy (epoch mean)",
                title=f"{title}: training loss, seed {seeds[0]}")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", ylim=(50, 100),
               title=f"test accuracy, seeds {', '.join(map(str, seeds))}")
    ax_loss.legend()
    ax_acc.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return fig


def _per_epoch(result):
    per = len(result.loss) // len(result.accuracy)
    return np.arange(1, len(result.accuracy) + 1), np.mean(
        np.reshape(result.loss[:per * len(result.accuracy)], (len(result.accuracy), per)), axis=1)


if __name__ == "__main__":
    run("rows")
