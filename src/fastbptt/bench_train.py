"""Time the whole training update: fastbptt against PyTorch and JAX, each in its own process.

    python -m fastbptt bench --train [--cases charrnn-tanh,adding-lstm,...] [--processes 3]
                                     [--rounds N] [--quick]

One update is what a user's training loop does for one batch: the forward pass, the loss
(summed over the scored steps, mean over the batch), the backward pass, a global-norm clip
at 1.0 and an Adam step, float32, on fixed data (the same x and target every round):

* fastbptt: ``model.forward``, ``fb.losses``, ``model.backward(input_grad=False)``, and
  ``fb.optim.Adam.step(g.params, clip_norm=1.0)`` (the clip folded into the fused step, as
  ``fb.train.fit`` does) -- or ``model.train_step`` when the model has it;
* PyTorch: ``nn.RNN``/``nn.LSTM``/``nn.GRU`` and ``nn.Linear``, ``loss.backward()``,
  ``clip_grad_norm_``, ``torch.optim.Adam`` (fused where this torch has it, else foreach),
  ``torch.set_num_threads`` to fastbptt's thread count;
* JAX: ``jax.jit`` of the whole update -- ``value_and_grad`` of a ``lax.scan`` over the
  cell, optax's ``clip_by_global_norm`` and ``adam`` -- with the result blocked on.

Each implementation runs in a fresh process of its own (``--processes`` of them, alternating
with the others), so that no thread pool, allocator or JIT cache of one is seen by another;
a process warms up, times its rounds and prints its median. The table gives the median of
the processes' medians and each peer's time over fastbptt's (above 1: fastbptt is faster).
The machine is shared and its speed drifts over minutes: trust ratios taken in one run.
"""
import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np

DTYPE = np.float32
CLIP_NORM = 1.0
LR = 1e-3


@dataclass(frozen=True)
class Case:
    """One training problem: cell, sizes (T, B, I, H, O), the loss and where it scores."""

    cell: str
    T: int
    B: int
    I: int  # noqa: E741  (the paper's name)
    H: int
    O: int  # noqa: E741
    loss: str           # "cross_entropy" or "mse"
    last_step: bool
    init: str = "default"
    rounds: int = 200
    ids: bool = False        # fastbptt takes integer ids (T, B); the peers their one-hot
    embedding: int = 0       # E > 0: an embedding (V = I, E) before the layer, ids for all

    @property
    def layer_input(self):
        """The recurrent layer's input width: E with an embedding, else I."""
        return self.embedding or self.I

    def __str__(self):
        scored = "last step" if self.last_step else "every step"
        given = (f", embedding E={self.embedding}" if self.embedding
                 else ", fastbptt fed ids" if self.ids else "")
        return (f"{self.cell} T={self.T} B={self.B} I={self.I} H={self.H} O={self.O}, "
                f"{self.loss} at {scored}{given}")


CASES = {
    "charrnn-tanh": Case("tanh", 25, 1, 65, 100, 65, "cross_entropy", False, rounds=2000),
    "charrnn-lstm": Case("lstm", 25, 1, 65, 100, 65, "cross_entropy", False, rounds=1000),
    "adding-irnn": Case("relu", 100, 16, 2, 100, 1, "mse", True, init="identity", rounds=500),
    "adding-lstm": Case("lstm", 100, 16, 2, 100, 1, "mse", True, rounds=300),
    "adding-gru": Case("gru", 100, 16, 2, 100, 1, "mse", True, rounds=300),
    "small-gru": Case("gru", 100, 32, 32, 128, 10, "cross_entropy", True, rounds=100),
    "medium-lstm": Case("lstm", 50, 64, 256, 512, 10, "cross_entropy", True, rounds=10),
    # integer ids: the char-RNN fed ids instead of one-hot, and a word-level language model
    "charrnn-tanh-ids": Case("tanh", 25, 1, 65, 100, 65, "cross_entropy", False, rounds=2000,
                             ids=True),
    "charrnn-lstm-ids": Case("lstm", 25, 1, 65, 100, 65, "cross_entropy", False, rounds=1000,
                             ids=True),
    "wordlm-lstm": Case("lstm", 35, 20, 10_000, 256, 10_000, "cross_entropy", False, rounds=5,
                        embedding=256),
}
# ``--sweep``: the small models most users train, beyond the named cases -- every cell at
# B <= 32 and H <= 128, classifying each sequence from its last state (T = 50, I = 32, O = 10)
SWEEP_CELLS = ("tanh", "relu", "lstm", "gru")
SWEEP_BATCHES = (1, 8, 32)
SWEEP_HIDDEN = (32, 64, 128)
SWEEP_T, SWEEP_I, SWEEP_O = 50, 32, 10
_SPEC = re.compile(r"(tanh|relu|lstm|gru)-(\d+)x(\d+)x(\d+)x(\d+)x(\d+)")


def sweep_names():
    """The case names ``--sweep`` times: ``cell-TxBxIxHxO``, see :func:`case_of`."""
    return [f"{cell}-{SWEEP_T}x{B}x{SWEEP_I}x{H}x{SWEEP_O}"
            for cell in SWEEP_CELLS for B in SWEEP_BATCHES for H in SWEEP_HIDDEN]


def case_of(name):
    """The Case a name stands for: one of CASES, or ``cell-TxBxIxHxO`` (e.g. ``gru-50x8x32x64x10``):
    that cell and those sizes, cross-entropy on the last step (relu with identity
    initialisation, as the IRNN), rounds for about 20 GFLOP of products (20 to 2000 of
    them). None when it is neither."""
    if name in CASES:
        return CASES[name]
    match = _SPEC.fullmatch(name)
    if match is None:
        return None
    cell = match.group(1)
    T, B, I, H, O = (int(v) for v in match.groups()[1:])  # noqa: E741
    if min(T, B, I, H, O) < 1:
        return None
    gates = {"lstm": 4, "gru": 3}.get(cell, 1)
    flops = 6 * T * B * gates * H * (I + H)    # forward and backward's products
    rounds = int(np.clip(2e10 / flops, 20, 2000))
    return Case(cell, T, B, I, H, O, "cross_entropy", True,
                init="identity" if cell == "relu" else "default", rounds=rounds)


PEERS = ("fastbptt", "torch", "jax")
LABELS = {"fastbptt": "fastbptt", "torch": "torch", "jax": "JAX (jit)"}


def case_data(case, seed=0):
    """The fixed batch every implementation trains on: x (T, B, I) and the target -- int
    labels (T, B) or (B,) for cross-entropy, values (T, B, O) or (B, O) for mse."""
    rng = np.random.default_rng(seed)
    if case.loss == "cross_entropy" and case.I == case.O:   # a language model: next token
        ids = rng.integers(0, case.I, (case.T + 1, case.B))
        x = ids[:-1] if case.ids or case.embedding else np.eye(case.I, dtype=DTYPE)[ids[:-1]]
        target = ids[1:]
    else:
        x = rng.standard_normal((case.T, case.B, case.I)).astype(DTYPE)
        if case.loss == "cross_entropy":
            target = rng.integers(0, case.O, (case.T, case.B))
        else:
            target = rng.standard_normal((case.T, case.B, case.O)).astype(DTYPE)
    if case.last_step:
        target = target[-1]
    return x, target


# --------------------------------------------------------------------------- the updates


def fastbptt_update(case, threads):
    """A no-argument callable doing one fastbptt update (and nothing else)."""
    import fastbptt as fb

    model = fb.RNN(case.I, case.H, cell=case.cell, output_size=case.O, init=case.init, seed=0,
                   embedding_size=case.embedding or None)
    x, target = case_data(case)
    opt = fb.optim.Adam(model.params, lr=LR)
    loss_fn = getattr(fb.losses, case.loss)
    if hasattr(model, "train_step"):
        def update():
            model.train_step(x, target, loss=case.loss, optimizer=opt, last_step=case.last_step,
                             clip_norm=CLIP_NORM)
        return update

    import inspect
    skip_dx = {"input_grad": False} if "input_grad" in inspect.signature(model.backward).parameters else {}

    def update():
        out, _ = model.forward(x)
        _, d_out = loss_fn(out, target, last_step=case.last_step)
        g = model.backward(d_out, **skip_dx)
        opt.step(g.params, clip_norm=CLIP_NORM)  # the clip folded into the fused step
    return update


def torch_update(case, threads):
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    width = case.layer_input
    if case.cell in ("tanh", "relu"):
        rnn = torch.nn.RNN(width, case.H, nonlinearity=case.cell)
    else:
        rnn = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[case.cell](width, case.H)
    readout = torch.nn.Linear(case.H, case.O)
    embed = torch.nn.Embedding(case.I, case.embedding) if case.embedding else None
    params = list(rnn.parameters()) + list(readout.parameters())
    if embed is not None:
        params += list(embed.parameters())
    try:
        opt = torch.optim.Adam(params, lr=LR, fused=True)
    except (RuntimeError, TypeError, ValueError):  # no fused CPU Adam in this torch
        opt = torch.optim.Adam(params, lr=LR, foreach=True)
    x_np, target_np = case_data(case)
    if case.ids and not case.embedding:
        x_np = np.eye(case.I, dtype=DTYPE)[x_np]
    x = torch.from_numpy(x_np)
    target = torch.from_numpy(target_np)
    B = case.B

    def update():
        opt.zero_grad(set_to_none=True)
        out, _ = rnn(embed(x) if embed is not None else x)
        y = readout(out[-1] if case.last_step else out)
        if case.loss == "cross_entropy":
            loss = torch.nn.functional.cross_entropy(y.reshape(-1, case.O), target.reshape(-1),
                                                     reduction="sum") / B
        else:
            loss = ((y - target) ** 2).sum() / B
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP_NORM)
        opt.step()
    return update


def jax_update(case, threads):
    import jax
    import jax.numpy as jnp
    import optax

    H, I, O, B = case.H, case.I, case.O, case.B
    G = {"lstm": 4, "gru": 3}.get(case.cell, 1)
    rng = np.random.default_rng(0)
    bound = 1 / np.sqrt(H)

    def uniform(*shape):
        return jnp.asarray(rng.uniform(-bound, bound, shape).astype(DTYPE))
    params = {"w_ih": uniform(G * H, case.layer_input), "w_hh": uniform(G * H, H),
              "b_ih": uniform(G * H), "b_hh": uniform(G * H), "w_out": uniform(O, H),
              "b_out": uniform(O)}
    if case.embedding:
        params["embedding"] = jnp.asarray(rng.standard_normal((I, case.embedding)).astype(DTYPE))
    if case.init == "identity":
        params["w_hh"] = jnp.eye(H, dtype=DTYPE)

    def cell(p, state, x_t):
        if case.cell == "lstm":
            h, c = state
            z = x_t @ p["w_ih"].T + p["b_ih"] + h @ p["w_hh"].T + p["b_hh"]
            i, f, g, o = jnp.split(z, 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), h
        if case.cell == "gru":
            h = state
            xr, xz, xn = jnp.split(x_t @ p["w_ih"].T + p["b_ih"], 3, axis=-1)
            hr, hz, hn = jnp.split(h @ p["w_hh"].T + p["b_hh"], 3, axis=-1)
            r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
            n = jnp.tanh(xn + r * hn)
            h = (1 - z) * n + z * h
            return h, h
        f = jnp.tanh if case.cell == "tanh" else jax.nn.relu
        h = f(x_t @ p["w_ih"].T + p["b_ih"] + state @ p["w_hh"].T + p["b_hh"])
        return h, h

    def loss(p, x, target):
        zeros = jnp.zeros((B, H), DTYPE)
        state = (zeros, zeros) if case.cell == "lstm" else zeros
        if case.embedding:
            x = p["embedding"][x]
        _, hs = jax.lax.scan(lambda s, x_t: cell(p, s, x_t), state, x)
        y = (hs[-1] if case.last_step else hs) @ p["w_out"].T + p["b_out"]
        if case.loss == "cross_entropy":
            logp = jax.nn.log_softmax(y, axis=-1)
            return -jnp.take_along_axis(logp, target[..., None], axis=-1).sum() / B
        return ((y - target) ** 2).sum() / B

    opt = optax.chain(optax.clip_by_global_norm(CLIP_NORM), optax.adam(LR))
    opt_state = opt.init(params)

    @jax.jit
    def step(p, s, x, target):
        value, grads = jax.value_and_grad(loss)(p, x, target)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, value

    x_np, target_np = case_data(case)
    if case.ids and not case.embedding:
        x_np = np.eye(case.I, dtype=DTYPE)[x_np]
    x, target = jnp.asarray(x_np), jnp.asarray(target_np)
    carry = [params, opt_state]

    def update():
        p, s, value = step(carry[0], carry[1], x, target)
        value.block_until_ready()
        carry[0], carry[1] = p, s
    return update


BUILDERS = {"fastbptt": fastbptt_update, "torch": torch_update, "jax": jax_update}


def peer_status(peer):
    """None when ``peer`` can be timed here, else why not (and how to install it)."""
    needs = {"torch": ("torch",), "jax": ("jax", "optax")}.get(peer, ())
    missing = [name for name in needs if importlib.util.find_spec(name) is None]
    if missing:
        return f"not installed (pip install {' '.join(missing)})"
    return None


# --------------------------------------------------------------------------- one process


def time_in_this_process(peer, case, rounds, threads, warmup_seconds=0.3):
    """Median and interquartile range (ms) of ``rounds`` updates after a warm-up."""
    update = BUILDERS[peer](case, threads)
    started = time.perf_counter()
    update()  # JIT compilation, first-touch allocations
    while time.perf_counter() - started < warmup_seconds:
        update()
    times = np.empty(rounds)
    for i in range(rounds):
        t0 = time.perf_counter()
        update()
        times[i] = time.perf_counter() - t0
    q1, med, q3 = np.percentile(times * 1e3, [25, 50, 75])
    return {"median_ms": float(med), "iqr_ms": float(q3 - q1)}


def _worker(argv):
    parser = argparse.ArgumentParser(prog="python -m fastbptt.bench_train --worker")
    parser.add_argument("--worker", choices=PEERS, required=True)
    parser.add_argument("--case", required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    args = parser.parse_args(argv)
    case = case_of(args.case)
    if case is None:
        parser.error(f"unknown case {args.case!r}")
    result = time_in_this_process(args.worker, case, args.rounds, args.threads)
    print(json.dumps(result))
    return 0


def _run_worker(peer, name, rounds, threads):
    env = dict(os.environ)
    if peer == "jax":
        env.setdefault("JAX_PLATFORMS", "cpu")
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=true "
                            f"intra_op_parallelism_threads={threads}").strip()
    if peer != "fastbptt":  # one process per implementation: keep the others' pools out
        env.setdefault("OMP_NUM_THREADS", str(threads))
    cmd = [sys.executable, "-m", "fastbptt.bench_train", "--worker", peer, "--case", name,
           "--rounds", str(rounds), "--threads", str(threads)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"{peer} on {name} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- the table


def _parse(argv):
    parser = argparse.ArgumentParser(
        prog="python -m fastbptt bench --train",
        description="Time the whole training update (forward, loss, backward, clip, Adam) of "
                    "fastbptt, PyTorch and JAX, each in its own processes.")
    parser.add_argument("--cases", default=None,
                        help=f"comma-separated, from {', '.join(CASES)} (default: all), or "
                             "cell-TxBxIxHxO shapes (e.g. gru-50x8x32x64x10: cross-entropy on "
                             "the last step)")
    parser.add_argument("--sweep", action="store_true",
                        help=f"time the small-model grid instead: every cell of "
                             f"{', '.join(SWEEP_CELLS)} at B in {SWEEP_BATCHES}, H in "
                             f"{SWEEP_HIDDEN} (T={SWEEP_T}, I={SWEEP_I}, O={SWEEP_O})")
    parser.add_argument("--processes", type=int, default=3,
                        help="fresh processes per implementation and case, alternating (default 3)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="timed updates per process (default: per case)")
    parser.add_argument("--peers", default=",".join(PEERS),
                        help="comma-separated subset of fastbptt,torch,jax (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="1 process, 5 rounds: checks that it runs, not a measurement")
    args = parser.parse_args(argv)
    if args.sweep and args.cases is not None:
        parser.error("give --cases or --sweep, not both")
    if args.sweep:
        names = sweep_names()
    else:
        names = [n.strip() for n in (args.cases or ",".join(CASES)).split(",") if n.strip()]
    unknown = [n for n in names if case_of(n) is None]
    if unknown:
        parser.error(f"unknown cases {unknown}; choose from {list(CASES)} or give "
                     "cell-TxBxIxHxO")
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    if "fastbptt" not in peers or any(p not in PEERS for p in peers):
        parser.error(f"--peers must include fastbptt and name only {PEERS}")
    args.cases, args.peers = names, peers
    return args


def main(argv=None):
    """Print the update table; returns 0."""
    from . import _backend

    args = _parse(argv)
    threads = _backend._compiled.threads() if _backend._compiled is not None else os.cpu_count()
    processes = 1 if args.quick else max(1, args.processes)
    print("fastbptt bench --train: one training update (forward, loss, backward, "
          f"clip_grad_norm {CLIP_NORM}, Adam), float32, fixed batch")
    print(f"{_backend.describe()}; every peer on {threads} threads, each in its own processes "
          f"({processes} per implementation and case, alternating)")
    peers = []
    for peer in args.peers:
        why = peer_status(peer)
        if why:
            print(f"{LABELS[peer]}: not timed, {why}")
        else:
            peers.append(peer)
    width = max([14] + [len(n) for n in args.cases])
    header = f"  {'case':<{width}} {'fastbptt ms':>12}" + "".join(
        f" {LABELS[p] + ' ms':>14} {'x ' + p:>9}" for p in peers if p != "fastbptt")
    print("\n" + header)
    ratios = {}
    for name in args.cases:
        case = case_of(name)
        rounds = 5 if args.quick else (args.rounds or case.rounds)
        medians = {peer: [] for peer in peers}
        for _ in range(processes):
            for peer in peers:
                medians[peer].append(_run_worker(peer, name, rounds, threads)["median_ms"])
        ms = {peer: float(np.median(v)) for peer, v in medians.items()}
        row = f"  {name:<{width}} {ms['fastbptt']:>12.3f}"
        for peer in peers:
            if peer != "fastbptt":
                ratios.setdefault(peer, []).append((ms[peer] / ms["fastbptt"], name))
                row += f" {ms[peer]:>14.3f} {ratios[peer][-1][0]:>8.2f}x"
        print(row, flush=True)
    if len(args.cases) > 1:
        for peer, pairs in ratios.items():
            ratio, name = min(pairs)
            print(f"  lowest x {peer}: {ratio:.2f}x ({name}); median "
                  f"{np.median([r for r, _ in pairs]):.2f}x over {len(pairs)} cases")
    print("\nmedian of the processes' median update times; 'x peer' is the peer's time over "
          "fastbptt's (above 1: fastbptt is faster).")
    for name in args.cases:
        print(f"  {name}: {case_of(name)}")
    return 0


if __name__ == "__main__":
    if "--worker" in sys.argv[1:]:
        sys.exit(_worker(sys.argv[1:]))
    sys.exit(main(sys.argv[1:]))
