"""Handwritten digits read row by row: scikit-learn's 8x8 digits as sequences of T = 8 rows of
I = 8 pixels, classified from the last step by an IRNN, an LSTM and a GRU, beside PyTorch on
the same recipe.

    pip install fastbptt[data,plot]        # scikit-learn, matplotlib (torch for the comparison)
    python examples/digits_rows.py [--seeds 0,1,2] [--plot digits_rows.png] [--no-torch]

(the default is seed 0 alone, about a minute on 2 quiet cores; three seeds give the spread)

Recipe: the 1,797 images of ``sklearn.datasets.load_digits``, pixels / 16 in [0, 1]; a fixed
split (permutation seed 0) of 1,297 training and 500 test images. ``fb.RNN(8, 128, cell=...,
output_size=10)``; ``fb.losses.cross_entropy`` on the last step (``last_step=True``);
``fb.train.fit`` over shuffled mini-batches of 32 (the last partial batch of an epoch dropped),
Adam, gradient norm clipped to 1.0, 20 epochs; test accuracy after every epoch. LSTM and GRU:
PyTorch's default init, lr 5e-3. IRNN (Le et al. 2015): ReLU, W_hh = I, input weights
N(0, 0.001²), lr 1e-2. PyTorch runs the same model (nn.RNN/LSTM/GRU + nn.Linear, the same init
rules), the same batches in the same order, the same loss, clip and Adam. float32 throughout.

Results, one run of ``--seeds 0,1,2`` (test accuracy after 20 epochs, seeds 0 / 1 / 2, and
mean ± standard deviation):

    LSTM  fastbptt 97.0 / 96.8 / 98.0  (97.3 ± 0.5 %)    torch 98.2 / 98.0 / 97.6  (97.9 ± 0.2 %)
    GRU   fastbptt 98.6 / 98.8 / 98.2  (98.5 ± 0.2 %)    torch 98.8 / 98.2 / 98.4  (98.5 ± 0.2 %)
    IRNN  fastbptt 93.6 / 91.0 / 90.0  (91.5 ± 1.5 %)    torch 95.2 / 94.4 / 92.8  (94.1 ± 1.0 %)

Training time: that run shared 2 cores with up to six other jobs, and the same model's time
varied twentyfold from seed to seed (a GRU took 0.7 s once and 12 s another time), so its
times say nothing reliable; summed over the three seeds, fastbptt trained in 69 s (LSTM),
14 s (GRU) and 68 s (IRNN), PyTorch in 110 s, 51 s and 228 s. Measure on a quiet machine.
"""
import argparse
import time
from typing import NamedTuple

import numpy as np

import fastbptt as fb

# name: (fastbptt cell, init, Adam learning rate)
CELLS = {
    "irnn": ("relu", "identity", 1e-2),
    "lstm": ("lstm", "default", 5e-3),
    "gru": ("gru", "default", 5e-3),
}
HIDDEN, EPOCHS, BATCH, CLIP, TEST_SIZE = 128, 20, 32, 1.0, 500


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


def train_fastbptt(name, data, *, seed, hidden=HIDDEN, epochs=EPOCHS, batch_size=BATCH, lr=None):
    """Train one fastbptt model; returns (model, :class:`Result`)."""
    cell, init, default_lr = CELLS[name]
    T, N, I = data.x_train.shape
    model = fb.RNN(I, hidden, cell=cell, init=init, output_size=10, seed=seed)
    optimizer = fb.optim.Adam(model.params, lr=lr or default_lr)
    accuracy, loss, seconds = [], [], 0.0
    for epoch in range(epochs):
        history = fb.train.fit(model, epoch_batches(data.x_train, data.y_train, batch_size, seed, epoch),
                               steps=N // batch_size, optimizer=optimizer, loss="cross_entropy",
                               last_step=True, clip_norm=CLIP, progress=False)
        seconds += history.seconds
        loss.extend(history.loss)
        out, _ = model.forward(data.x_test)
        accuracy.append(accuracy_of(out[-1], data.y_test))
    return model, Result(accuracy, loss, seconds)


def train_torch(name, data, *, seed, hidden=HIDDEN, epochs=EPOCHS, batch_size=BATCH, lr=None):
    """The same recipe in PyTorch (nn.RNN/LSTM/GRU + nn.Linear); returns a :class:`Result`."""
    import torch

    cell, init, default_lr = CELLS[name]
    T, N, I = data.x_train.shape
    torch.manual_seed(seed)
    kind = {"relu": torch.nn.RNN, "tanh": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
    extra = {"nonlinearity": cell} if cell in ("relu", "tanh") else {}
    rnn = kind(I, hidden, **extra)
    readout = torch.nn.Linear(hidden, 10)
    if init == "identity":      # Le et al.'s IRNN, as fb.RNN(init="identity") sets it
        with torch.no_grad():
            rnn.weight_hh_l0.copy_(torch.eye(hidden))
            torch.nn.init.normal_(rnn.weight_ih_l0, std=1e-3)
            rnn.bias_ih_l0.zero_()
            rnn.bias_hh_l0.zero_()
    params = list(rnn.parameters()) + list(readout.parameters())
    optimizer = torch.optim.Adam(params, lr=lr or default_lr)
    x_test = torch.from_numpy(data.x_test)
    accuracy, loss, seconds = [], [], 0.0
    for epoch in range(epochs):
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


def run(layout, argv=None, *, hidden=HIDDEN, epochs=EPOCHS, cells=tuple(CELLS), lrs=None,
        seeds="0", title="row by row", description=__doc__):
    """The command line of this example and of digits_pixels.py; ``lrs``: learning rates that
    replace CELLS' by name. Returns {(cell, seed): (fastbptt Result, torch Result or None)}."""
    lrs = dict(lrs or {})
    parser = argparse.ArgumentParser(description=description.split("\n\n")[0])
    parser.add_argument("--cells", default=",".join(cells), help="comma-separated subset of irnn,lstm,gru")
    parser.add_argument("--seeds", default=seeds, help=f"comma-separated seeds (default {seeds})")
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--hidden", type=int, default=hidden)
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    parser.add_argument("--plot", metavar="FILE", default=None, help="save the figure (PNG; needs matplotlib)")
    args = parser.parse_args(argv)
    cells = [c.strip() for c in args.cells.split(",")]
    unknown = [c for c in cells if c not in CELLS]
    if unknown:
        parser.error(f"unknown cells {unknown}; choose from {list(CELLS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    with_torch = not args.no_torch and _have_torch()
    data = load(layout)
    T, N, I = data.x_train.shape
    rates = ", ".join(f"{c} {lrs.get(c, CELLS[c][2]):g}" for c in cells)
    print(f"digits {title}: T={T}, I={I}, {N} training and {data.x_test.shape[1]} test images; "
          f"H={args.hidden}, {args.epochs} epochs of batches of {BATCH}, Adam (lr {rates}), clip {CLIP}"
          + ("" if with_torch else "; no PyTorch comparison"))
    results = {}
    for name in cells:
        for seed in seeds:
            recipe = dict(seed=seed, hidden=args.hidden, epochs=args.epochs, lr=lrs.get(name))
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
