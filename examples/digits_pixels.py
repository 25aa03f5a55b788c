"""Handwritten digits read pixel by pixel: scikit-learn's 8x8 digits as sequences of T = 64
pixels (I = 1, row-major order), the small sibling of Le et al.'s sequential MNIST, classified
from the last step by an IRNN, an LSTM and a GRU, beside PyTorch on the same recipe.

    pip install fastbptt[data,plot]        # scikit-learn, matplotlib (torch for the comparison)
    python examples/digits_pixels.py [--seeds 0,1,2] [--cells irnn,lstm,gru] [--threads 1] [--plot digits_pixels.png]

Recipe: as examples/digits_rows.py (same data, split, batches, loss, clip, Adam with the cosine
decay of its learning rate, the IRNN's input weights N(0, 1/I), float32), with the sequence 64
steps long and H = 64: LSTM and GRU lr 1e-2 for 25 epochs, IRNN lr 3e-3 for 200 epochs. With
``init="identity"``'s N(0, 0.001²) input weights (one input, so 64 of them) the IRNN stayed at
or near chance (lr 3e-4 to 1e-2, 30 epochs); with N(0, 1/I) it was still gaining at 150 epochs.

Results, one run of ``--seeds 0,1,2 --threads 1`` on 2026-12-04 (test accuracy after the last
epoch, seeds 0 / 1 / 2, and mean ± standard deviation):

    IRNN  fastbptt 90.8 / 90.6 / 91.4  (90.9 ± 0.3 %)    torch 90.0 / 85.6 / 88.4  (88.0 ± 1.8 %)
    LSTM  fastbptt 91.2 / 89.6 / 89.0  (89.9 ± 0.9 %)    torch 90.2 / 89.0 / 92.8  (90.7 ± 1.6 %)
    GRU   fastbptt 94.2 / 93.6 / 94.6  (94.1 ± 0.4 %)    torch 94.8 / 93.8 / 91.2  (93.3 ± 1.5 %)

The IRNN's gap is the initial draws': fastbptt trained from PyTorch's three initial weight sets
(``model.load_state_dict``) reached 90.0 / 84.8 / 89.2 %.

Training time of that run, 1 thread each, summed over the three seeds (evaluation excluded):
fastbptt 14.4 s (IRNN), 5.1 s (LSTM), 4.9 s (GRU); PyTorch 79.3 s, 8.7 s and 32.6 s (1.7-7.2x
fastbptt's per seed), on a shared 2-core machine.
"""
from digits_rows import run

if __name__ == "__main__":
    run("pixels", hidden=64, lrs={"irnn": 3e-3, "lstm": 1e-2, "gru": 1e-2},
        epochs={"irnn": 200, "lstm": 25, "gru": 25}, title="pixel by pixel", description=__doc__)
