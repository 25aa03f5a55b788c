"""``python -m fastbptt lm FILE --level char|word``: train a language model on a text file.

The text is cut into a vocabulary and a train/validation split (:class:`fastbptt.tasks.TextCorpus`),
the training part is read as B parallel tracks in consecutive chunks of T tokens with the state
carried from chunk to chunk (truncated BPTT), and every ``--eval-every`` batches the command
prints the validation perplexity beside the unigram baseline's and a sample.
"""
import argparse
import inspect
import math
import time

import numpy as np

from . import _backend, optim, tasks
from .model import RNN
from .train import fit


def add_arguments(parser):
    """The options of the ``lm`` subcommand, on an argparse (sub)parser."""
    parser.add_argument("file", nargs="?", default=None,
                        help="a UTF-8 text file (default: the bundled corpus)")
    parser.add_argument("--level", choices=tasks.LEVELS, default="char",
                        help="tokens: characters, or words and punctuation with <eos> at line ends")
    parser.add_argument("--min-count", type=int, default=None,
                        help="tokens seen fewer times become <unk> (default 1 for char, 2 for word)")
    parser.add_argument("--valid-fraction", type=float, default=0.1,
                        help="the end of the text held out for validation (default 0.1)")
    parser.add_argument("--lower", action="store_true", help="lower-case the text")
    parser.add_argument("--cell", default="lstm", help="tanh, relu, lstm or gru (default lstm)")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--embedding", type=int, default=None, metavar="E",
                        help="an embedding of size E before the recurrent layers")
    parser.add_argument("--seq-length", type=int, default=35, help="tokens per chunk, T (default 35)")
    parser.add_argument("--batch", type=int, default=20, help="parallel tracks, B (default 20)")
    parser.add_argument("--bptt", default=None, metavar="K1,K2",
                        help="an update every K1 steps through the last K2 within a chunk "
                             "(default: one update per chunk)")
    parser.add_argument("--steps", type=int, default=1000, help="training chunks (default 1000)")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam's learning rate")
    parser.add_argument("--clip", type=float, default=1.0, help="gradient norm clip (default 1.0)")
    parser.add_argument("--eval-every", type=int, default=None,
                        help="validation and a sample every this many chunks (default steps/5)")
    parser.add_argument("--sample-length", type=int, default=None,
                        help="tokens per sample (default 200 characters or 40 words)")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--prompt", default=None, help="text the samples continue")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def _bptt(text):
    if text is None:
        return None
    try:
        k1, k2 = (int(v) for v in text.split(","))
    except ValueError:
        raise SystemExit(f"--bptt must be K1,K2 (two ints), got {text!r}") from None
    return k1, k2


def _model(args, V):
    kwargs = dict(cell=args.cell, num_layers=args.layers, output_size=V, dtype=args.dtype,
                  seed=args.seed)
    if args.embedding is not None:
        if "embedding_size" not in inspect.signature(RNN).parameters:
            raise SystemExit("--embedding needs fb.RNN(..., embedding_size=E), which this "
                             "version of fastbptt does not have yet")
        kwargs["embedding_size"] = args.embedding
    return RNN(V, args.hidden, **kwargs)


def _prompt(args, corpus):
    if args.prompt is not None:
        ids = corpus.encode(args.prompt)
        if not len(ids):
            raise SystemExit(f"--prompt {args.prompt!r} holds no {corpus.level} tokens")
        return ids
    if corpus.level == "word":
        return corpus.vocab.encode([tasks.EOS])
    return corpus.encode("\n") if "\n" in corpus.vocab else corpus.train[:1]


def run_lm(args):
    started = time.perf_counter()
    min_count = args.min_count if args.min_count is not None else (2 if args.level == "word" else 1)
    kwargs = dict(level=args.level, min_count=min_count, valid_fraction=args.valid_fraction,
                  lower=args.lower)
    try:
        corpus = (tasks.TextCorpus.from_file(args.file, **kwargs) if args.file
                  else tasks.TextCorpus.bundled(**kwargs))
    except (OSError, ValueError, TypeError) as exc:
        raise SystemExit(f"lm: {exc}") from None
    if not len(corpus.valid):
        raise SystemExit("lm: --valid-fraction 0 leaves nothing to measure the perplexity on")
    V = corpus.vocab_size
    model = _model(args, V)
    T, B = args.seq_length, args.batch
    eval_batch = max(1, min(10, len(corpus.valid) // (2 * T) or len(corpus.valid) // 2))
    unigram = tasks.unigram_perplexity(corpus.train, corpus.valid, V)
    steps = args.steps
    eval_every = args.eval_every or max(1, steps // 5)
    sample_length = args.sample_length or (200 if args.level == "char" else 40)
    prompt = _prompt(args, corpus)
    try:
        stream = corpus.stream("train", T, B, model=model)
    except ValueError as exc:
        raise SystemExit(f"lm: the training part is too short for --batch {B}: {exc}") from None
    opt = optim.Adam(model.params, lr=args.lr)
    bptt = _bptt(args.bptt)
    rng = np.random.default_rng(args.seed)
    source = args.file or "the bundled corpus"
    print(_backend.describe())
    print(f"{args.level}-level {args.cell} language model on {source}: {len(corpus.train)} training "
          f"and {len(corpus.valid)} validation tokens, vocabulary {V} (min count {min_count}), "
          f"H={args.hidden}, {args.layers} layer(s), {B} tracks of {T}-token chunks "
          f"({len(stream)} per epoch), Adam lr {args.lr}, clip {args.clip}")
    print(f"unigram baseline: validation perplexity {unigram:.2f} (uniform: {V})")
    done, score = 0, None
    while done < steps:
        chunk = min(eval_every, steps - done)
        history = fit(model, stream, steps=chunk, optimizer=opt, loss="cross_entropy",
                      bptt=bptt, clip_norm=args.clip, carry_state=True,
                      progress=not args.no_progress, desc="lm", log_every=1)
        done += chunk
        score = tasks.evaluate_lm(model, corpus.valid, seq_length=T, batch_size=eval_batch)
        train_ce = float(np.mean(history.loss)) / T
        print(f"\n--- {done} chunks (epoch {stream.epoch}), {time.perf_counter() - started:.1f}s: "
              f"train {train_ce:.3f} nats/token, validation perplexity {score.perplexity:.2f} "
              f"({score.bits_per_token:.3f} bits/token) against unigram {unigram:.2f} ---")
        ids = tasks.sample(model, prompt, sample_length, temperature=args.temperature,
                           top_k=args.top_k, seed=rng)
        print(corpus.decode(prompt) + corpus.decode(ids) if args.level == "char"
              else corpus.decode(np.concatenate([prompt, ids])))
    verdict = "beats" if score.perplexity < unigram else "does not beat"
    print(f"\nvalidation perplexity {score.perplexity:.2f}: {verdict} the unigram baseline's "
          f"{unigram:.2f} (ratio {score.perplexity / unigram:.3f}) after {done} chunks, "
          f"{time.perf_counter() - started:.1f}s")
    return 0 if math.isfinite(score.perplexity) else 1


def main(argv=None):
    """Run the command alone (``python -m fastbptt.lm``)."""
    parser = add_arguments(argparse.ArgumentParser(prog="python -m fastbptt lm"))
    return run_lm(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
