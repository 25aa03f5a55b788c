"""A character-level RNN in min-char-rnn's setup: H=100, 25-step chunks of one stream with the
hidden state carried across them, Adagrad with lr 0.1, gradients clipped to [-5, 5].

    python examples/char_rnn.py [path/to/text.txt]

Without an argument it trains on the corpus bundled with fastbptt.
"""
import sys

import numpy as np

import fastbptt as fb

corpus = fb.tasks.CharCorpus.from_file(sys.argv[1]) if len(sys.argv) > 1 else fb.tasks.default_corpus()
V = corpus.vocab_size
model = fb.RNN(V, 100, output_size=V, seed=0)
optimizer = fb.optim.Adagrad(model.params, lr=0.1)
chunks = corpus.sequential(25)  # consecutive (inputs, next-character labels) of one stream

for round_ in range(10):
    history = fb.train.fit(model, chunks, steps=2000, optimizer=optimizer, loss="cross_entropy",
                           clip_value=5.0, carry_state=True, desc=f"round {round_ + 1}")
    # sample 200 characters, one step at a time, from the first character of the text
    rng = np.random.default_rng(round_)
    x = corpus.one_hot(corpus.encode(corpus.text[0]), model.dtype)[:, None, :]
    h, text = None, []
    for _ in range(200):
        logits, h = model.forward(x, h)
        p = np.exp(logits[0, 0].astype(np.float64) - logits[0, 0].max())
        nxt = rng.choice(V, p=p / p.sum())
        text.append(nxt)
        x = corpus.one_hot(np.array([nxt]), model.dtype)[:, None, :]
    print(f"\nloss per chunk {np.mean(history.loss[-100:]):.2f}:\n{corpus.decode(np.array(text))}\n")
