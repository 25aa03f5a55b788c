"""The command line: ``python -m fastbptt {demo,char,lm,bench} ...``."""
import argparse
import sys

from ._cells import CELLS


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m fastbptt",
        description="Recurrent networks trained by backpropagation through time, fast, on the CPU.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,char,lm,bench}")

    demo = sub.add_parser(
        "demo", help="the adding problem: tanh vs IRNN vs LSTM vs GRU, vanishing gradients in numbers",
        description="Train a tanh RNN, an IRNN (ReLU with identity init), an "
                    "LSTM and a GRU on the adding problem with the same budget, and compare their "
                    "test MSE with the 1/6 baseline of always answering 1.")
    demo.add_argument("--T", type=int, default=100, help="sequence length (default 100)")
    demo.add_argument("--steps", type=int, default=None,
                      help="training batches per model (default: 12000 for T <= 100, proportionally more beyond)")
    demo.add_argument("--batch", type=int, default=16, help="batch size (default 16)")
    demo.add_argument("--hidden", type=int, default=100, help="hidden units (default 100)")
    demo.add_argument("--cells", default=None,
                      help="comma-separated subset of tanh,irnn,lstm,gru (default: all available)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--plot", metavar="FILE", default=None,
                      help="save the loss curves and the gradient-flow figure to FILE (PNG; needs matplotlib)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.add_argument("--distributed", action="store_true",
                      help="data-parallel under mpiexec: each rank trains on its block of every batch (needs mpi4py)")

    char = sub.add_parser("char", help="a character-level RNN (min-char-rnn's setup) on a text file",
                          description="Train a character-level model and print generated samples.")
    char.add_argument("file", nargs="?", default=None, help="a UTF-8 text file (default: the bundled corpus)")
    char.add_argument("--hidden", type=int, default=100)
    char.add_argument("--seq-length", type=int, default=25)
    char.add_argument("--lr", type=float, default=0.1)
    char.add_argument("--steps", type=int, default=20000)
    char.add_argument("--cell", default="tanh", choices=list(CELLS), help="the recurrent cell (default: tanh)")
    char.add_argument("--sample-every", type=int, default=2000)
    char.add_argument("--seed", type=int, default=0)
    char.add_argument("--no-progress", action="store_true")
    char.add_argument("--distributed", action="store_true",
                      help="data-parallel under mpiexec: the text in one track per rank (needs mpi4py)")

    from .lm import add_arguments as lm_arguments
    lm_arguments(sub.add_parser(
        "lm", help="a char- or word-level language model on a text file: perplexity and samples",
        description="Train a language model, report its validation perplexity against the "
                    "unigram baseline, and print samples."))

    sub.add_parser("bench", help="compiled vs NumPy (vs PyTorch) timing table; --help for options",
                   add_help=False)

    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        from .bench import main as bench_main
        return bench_main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "demo":
        from .demo import run_demo
        return run_demo(args)
    if args.command == "lm":
        from .lm import run_lm
        return run_lm(args)
    from .demo import run_char
    return run_char(args)


if __name__ == "__main__":
    sys.exit(main())
