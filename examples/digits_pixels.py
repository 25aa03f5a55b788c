"""Handwritten digits read pixel by pixel: scikit-learn's 8x8 digits as sequences of T = 64
pixels (I = 1, row-major order), the small sibling of Le et al.'s sequential MNIST, classified
from the last step by a GRU and an LSTM, beside PyTorch on the same recipe.

    pip install fastbptt[data,plot]        # scikit-learn, matplotlib (torch for the comparison)
    python examples/digits_pixels.py [--seeds 0,1] [--cells gru,lstm,irnn] [--plot digits_pixels.png]

Recipe: as examples/digits_rows.py (same data, split, batches, loss, clip, Adam, float32), with
the sequence 64 steps long and: H = 64, 25 epochs, Adam lr 1e-2 for both cells. An IRNN
(``--cells irnn``, lr 1e-3) stays at chance here at this budget: over 64 steps its tiny initial
input weights learn too slowly.

Results, one run of ``--seeds 0,1`` (test accuracy after 25 epochs, seeds 0 / 1):

    GRU   fastbptt 97.8 / 95.4 %  (96.6 ± 1.2)    torch 93.8 / 93.2 %  (93.5 ± 0.3)
    LSTM  fastbptt 91.0 / 91.8 %  (91.4 ± 0.4)    torch 86.0 / 91.8 %  (88.9 ± 2.9)

Training time on a 2-core machine shared with other jobs (noisy: ratios within one run only):
LSTM 2.0 s against PyTorch's 3.1-3.2 s per seed (1.5x) while the machine was quiet; GRU
4-7 s against 43-53 s while it was busy.
"""
from digits_rows import run

if __name__ == "__main__":
    run("pixels", hidden=64, epochs=25, cells=("gru", "lstm"), lrs={"gru": 1e-2, "lstm": 1e-2},
        title="pixel by pixel", description=__doc__)
