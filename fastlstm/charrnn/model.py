"""The char-rnn model: embedding -> FastLSTM -> dropout -> linear over the vocabulary,
and generation: on the CPU through the fused op (ops.generate), elsewhere one step at a
time through the model."""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from .. import _extension, ops
from ..module import FastLSTM


class CharRNN(nn.Module):
    def __init__(self, vocab_size: int, rnn_size: int = 256, num_layers: int = 2,
                 dropout: float = 0.2, embed_size: int = 64, backend: str = "auto",
                 weight_drop: float = 0.0):
        super().__init__()
        self.config = dict(vocab_size=vocab_size, rnn_size=rnn_size, num_layers=num_layers,
                           dropout=dropout, embed_size=embed_size, weight_drop=weight_drop)
        self.weight_drop = weight_drop
        self.embed = nn.Embedding(vocab_size, embed_size)
        self.lstm = FastLSTM(embed_size, rnn_size, num_layers, batch_first=False,
                             dropout=dropout if num_layers > 1 else 0.0, backend=backend,
                             dropout_masks="counter")
        self.dropout = dropout
        self.head = nn.Linear(rnn_size, vocab_size)

    def forward(self, ids, state=None):
        """ids [batch, seq] -> logits [batch, seq, vocab], (h, c). Time-major inside, the
        LSTM's own layout: the activations are never copied from one layout to the other
        (batch-first, each [64, 100, 384] copy took ~1.5 ms of a training step, forward and
        backward); only the logits come back as a batch-first view."""
        # forward_ids: on the CPU's training path the first layer reads x W_ih^T + b from a
        # table per symbol (vocabulary x 4 hidden) rather than projecting all S x B inputs.
        with self._recurrent_weights_dropped():
            out, state = self.lstm.forward_ids(ids.t(), self.embed, state)
        # fastlstm's dropout, here and between the LSTM's layers: torch's draws its CPU masks
        # from one sequential generator (2 x 27 ms of a 190 ms CPU training step at the
        # default size).
        return self.head(ops.dropout(out, self.dropout, self.training)).transpose(0, 1), state

    @contextlib.contextmanager
    def _recurrent_weights_dropped(self):
        """In training with weight_drop > 0, each layer's W_hh seen through a dropout mask
        (DropConnect, as AWD-LSTM): one mask per forward, the same at every step, so the
        recurrence itself is regularised; the parameters stay as they are."""
        if not (self.training and self.weight_drop > 0):
            yield
            return
        params = self.lstm._parameters
        names = [f"weight_hh_l{k}" for k in range(self.lstm.num_layers)]
        kept = {name: params[name] for name in names}
        try:
            for name in names:
                params[name] = ops.dropout(kept[name], self.weight_drop)
            yield
        finally:
            params.update(kept)


def next_ids(logits, temperature: float, top_k: int | None, generator=None,
             top_p: float | None = None):
    """One id per row of logits [batch, vocab]: argmax at temperature 0, else sampled from
    softmax(logits / temperature), restricted to the top_k largest logits when given (ties
    with the k-th kept), then to the nucleus when top_p < 1: in order of falling probability
    (ties by index), each id whose predecessors' probability is still under top_p. The same
    rule as the fused op's (csrc/core/sampling.h)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True, stable=True)
        before = sorted_probs.cumsum(-1) - sorted_probs
        drop = torch.empty_like(before, dtype=torch.bool).scatter_(-1, order, before >= top_p)
        probs = probs.masked_fill(drop, 0.0)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


CHUNK = 64  # characters per call of the fused op: streamed to on_ids a chunk at a time

PRECISIONS = ("auto", "fp32", "bf16")


def fused_generation(model: CharRNN, precision: str = "auto") -> str | None:
    """The precision the fused generation op runs this model in ("fp32" or "bf16"), or
    None where generate runs its per-character loop: parameters not float32 on the CPU,
    proj_size or bidirectional, or a CPU without AVX-512 (or no extension). "auto": bf16
    where the CPU computes in bf16 natively (AVX512-BF16), else fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    lstm = model.lstm
    if (not isinstance(lstm, FastLSTM) or lstm.bidirectional or lstm.proj_size
            or lstm.num_layers > 8 or not _extension.cpu_generate(torch.float32)
            or any(p.device.type != "cpu" or p.dtype != torch.float32
                   for p in model.parameters())):
        return None
    native_bf16 = _extension.cpu_generate(torch.bfloat16)
    if precision == "bf16" and not native_bf16:
        raise ValueError("precision='bf16' needs a CPU with AVX512-BF16 (this one has not)")
    return "bf16" if precision == "bf16" or (precision == "auto" and native_bf16) else "fp32"


def _op_weights(model: CharRNN):
    lstm, L = model.lstm, model.lstm.num_layers
    per_layer = lambda name: [getattr(lstm, f"{name}_l{k}") for k in range(L)]  # noqa: E731
    biases = (per_layer("bias_ih"), per_layer("bias_hh")) if lstm.bias else ([], [])
    return (model.embed.weight, per_layer("weight_ih"), per_layer("weight_hh"), *biases,
            model.head.weight, model.head.bias)


@torch.no_grad()
def generate(model: CharRNN, prime_ids: torch.Tensor, length: int, temperature: float = 0.8,
             top_k: int | None = None, num_samples: int = 1, generator=None, on_ids=None,
             top_p: float | None = None, precision: str = "auto"):
    """Continue `prime_ids` (1-D) by `length` ids for `num_samples` samples at once.
    on_ids(ids [num_samples]) is called for each step drawn. Returns [num_samples, length].

    On the CPU the characters come from the fused op (ops.generate: a chunk of CHUNK
    characters per call, the products in `precision`, see fused_generation); elsewhere one
    step at a time through the model. The draws come from torch's generator (`generator`,
    or the default one), so a seed gives the same text; top_p: nucleus sampling."""
    if temperature < 0 or temperature != temperature:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if prime_ids.dim() != 1 or prime_ids.numel() == 0:
        raise ValueError("prime_ids must be 1-D and not empty, got shape "
                         f"{tuple(prime_ids.shape)}")
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        x = prime_ids.to(device).unsqueeze(0).expand(num_samples, -1)
        mode = fused_generation(model, precision)
        if mode is not None:
            return _generate_fused(model, x, length, temperature, top_k, top_p, generator,
                                   on_ids, mode == "bf16")
        logits, state = model(x)
        logits = logits[:, -1]
        drawn = []
        for _ in range(length):
            ids = next_ids(logits, temperature, top_k, generator, top_p)
            drawn.append(ids)
            if on_ids is not None:
                on_ids(ids)
            logits, state = model(ids.unsqueeze(1), state)
            logits = logits[:, -1]
        return torch.stack(drawn, dim=1) if drawn else x.new_zeros(num_samples, 0)
    finally:
        model.train(was_training)


def _generate_fused(model, prime, length, temperature, top_k, top_p, generator, on_ids,
                    bf16):
    seed = int(torch.randint(2 ** 62, (), generator=generator, dtype=torch.int64))
    weights = _op_weights(model)
    samples, lstm = prime.size(0), model.lstm
    h = torch.zeros(lstm.num_layers, samples, lstm.hidden_size, device=prime.device)
    c = torch.zeros_like(h)
    # The prime through the op too, its ids forced (no draw: the logits in are not read).
    _, logits, h, c = ops.generate(prime.new_zeros((samples, model.head.out_features),
                                                   dtype=torch.float32), h, c,
                                   *weights, prime.size(1), forced=prime.long().contiguous(),
                                   bf16=bf16)
    chunks = []
    for offset in range(0, length, CHUNK):
        ids, logits, h, c = ops.generate(logits, h, c, *weights, min(CHUNK, length - offset),
                                         temperature, top_k, 1.0 if top_p is None else top_p,
                                         seed, offset, bf16=bf16)
        chunks.append(ids)
        if on_ids is not None:
            for column in ids.unbind(1):
                on_ids(column)
    return torch.cat(chunks, dim=1) if chunks else prime.new_zeros(samples, 0)
