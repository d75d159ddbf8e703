"""The char-rnn model: embedding -> FastLSTM -> dropout -> linear over the vocabulary,
and generation through its one-step path."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import ops
from .module import FastLSTM


class CharRNN(nn.Module):
    def __init__(self, vocab_size: int, rnn_size: int = 256, num_layers: int = 2,
                 dropout: float = 0.2, embed_size: int = 64, backend: str = "auto"):
        super().__init__()
        self.config = dict(vocab_size=vocab_size, rnn_size=rnn_size, num_layers=num_layers,
                           dropout=dropout, embed_size=embed_size)
        self.embed = nn.Embedding(vocab_size, embed_size)
        self.lstm = FastLSTM(embed_size, rnn_size, num_layers, batch_first=True,
                             dropout=dropout if num_layers > 1 else 0.0, backend=backend,
                             dropout_masks="counter")
        self.dropout = dropout
        self.head = nn.Linear(rnn_size, vocab_size)

    def forward(self, ids, state=None):
        """ids [batch, seq] -> logits [batch, seq, vocab], (h, c)."""
        out, state = self.lstm(self.embed(ids), state)
        # fastlstm's dropout, here and between the LSTM's layers: torch's draws its CPU masks
        # from one sequential generator (2 x 27 ms of a 190 ms CPU training step at the
        # default size).
        return self.head(ops.dropout(out, self.dropout, self.training)), state


def next_ids(logits, temperature: float, top_k: int | None, generator=None):
    """One id per row of logits [batch, vocab]: argmax at temperature 0, else sampled from
    softmax(logits / temperature), restricted to the top_k most likely when given."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


@torch.no_grad()
def generate(model: CharRNN, prime_ids: torch.Tensor, length: int, temperature: float = 0.8,
             top_k: int | None = None, num_samples: int = 1, generator=None, on_ids=None):
    """Continue `prime_ids` (1-D) by `length` ids for `num_samples` samples at once, one
    step at a time through the model's recurrent state. on_ids(ids [num_samples]) is called
    as each step is drawn. Returns [num_samples, length]."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x = prime_ids.to(device).unsqueeze(0).expand(num_samples, -1)
    logits, state = model(x)
    drawn = []
    for _ in range(length):
        ids = next_ids(logits[:, -1], temperature, top_k, generator)
        drawn.append(ids)
        if on_ids is not None:
            on_ids(ids)
        logits, state = model(ids.unsqueeze(1), state)
    model.train(was_training)
    return torch.stack(drawn, dim=1) if drawn else x.new_zeros(num_samples, 0)
