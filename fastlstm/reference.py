"""The oracle: a plain-PyTorch LSTM that loops over time, nothing clever.

It computes in the dtype of the parameters it is given (tests give it float64 copies) and
supports what ``nn.LSTM`` does: num_layers, bias, batch_first, dropout between layers,
bidirectional, proj_size, unbatched input, PackedSequence input, given or zero states.
Gate order and weight layout are nn.LSTM's: ``weight_ih_l{k}`` stacks i, f, g, o on dim 0.
Every backend is tested against this file, so it must stay obvious.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import PackedSequence


def lstm_cell_reference(x, h, c, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None):
    """One step: x [B, F], h [B, P or H], c [B, H] -> (h_new, c_new)."""
    pre = x @ w_ih.T + h @ w_hh.T
    if b_ih is not None:
        pre = pre + b_ih + b_hh
    i, f, g, o = pre.chunk(4, dim=-1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c_new = f * c + i * g
    h_new = o * torch.tanh(c_new)
    if w_hr is not None:
        h_new = h_new @ w_hr.T
    return h_new, c_new


def _run_direction(steps, batch_sizes, h0, c0, weights, reverse):
    """One layer, one direction. steps[t] is [batch_sizes[t], F]; batch sizes never grow
    with t (PackedSequence's rule), so a sequence that has ended keeps its last state.
    Returns per-step outputs in time order and the final (h, c) of every sequence."""
    h, c = h0, c0
    outputs = [None] * len(steps)
    order = range(len(steps) - 1, -1, -1) if reverse else range(len(steps))
    for t in order:
        n = batch_sizes[t]
        h_new, c_new = lstm_cell_reference(steps[t], h[:n], c[:n], *weights)
        h = torch.cat([h_new, h[n:]])
        c = torch.cat([c_new, c[n:]])
        outputs[t] = h_new
    return outputs, h, c


def _layer_weights(params, layer, suffix, bias, proj_size):
    get = lambda name: params[f"{name}_l{layer}{suffix}"]  # noqa: E731
    return (get("weight_ih"), get("weight_hh"),
            get("bias_ih") if bias else None, get("bias_hh") if bias else None,
            get("weight_hr") if proj_size > 0 else None)


def reference_lstm(input, hx, params, *, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                   training=False, bidirectional=False, proj_size=0):
    """Same contract as ``nn.LSTM.forward(input, hx)``; ``params`` maps nn.LSTM's
    parameter names (``weight_ih_l0``, ``bias_hh_l1_reverse``, ...) to tensors."""
    packed = isinstance(input, PackedSequence)
    unbatched = False
    if packed:
        data, batch_sizes_t, sorted_idx, unsorted_idx = input
        batch_sizes = batch_sizes_t.tolist()
        offsets = [0]
        for n in batch_sizes:
            offsets.append(offsets[-1] + n)
        steps = [data[offsets[t]:offsets[t + 1]] for t in range(len(batch_sizes))]
    else:
        unbatched = input.dim() == 2
        x = input.unsqueeze(0 if batch_first else 1) if unbatched else input
        if batch_first:
            x = x.transpose(0, 1)
        steps = list(x.unbind(0))
        batch_sizes = [x.size(1)] * x.size(0)
        sorted_idx = unsorted_idx = None

    hidden = params["weight_hh_l0"].size(0) // 4
    out_size = proj_size if proj_size > 0 else hidden
    dirs = 2 if bidirectional else 1
    batch = batch_sizes[0]
    ref = steps[0]
    if hx is None:
        h0 = ref.new_zeros(num_layers * dirs, batch, out_size)
        c0 = ref.new_zeros(num_layers * dirs, batch, hidden)
    else:
        h0, c0 = hx
        if unbatched:
            h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
        if sorted_idx is not None:  # states are given in the caller's batch order
            h0, c0 = h0.index_select(1, sorted_idx), c0.index_select(1, sorted_idx)

    h_n, c_n = [], []
    for layer in range(num_layers):
        per_dir = []
        for d, suffix in enumerate(["", "_reverse"][:dirs]):
            k = layer * dirs + d
            weights = _layer_weights(params, layer, suffix, bias, proj_size)
            outs, h, c = _run_direction(steps, batch_sizes, h0[k], c0[k], weights, reverse=d == 1)
            per_dir.append(outs)
            h_n.append(h)
            c_n.append(c)
        steps = [torch.cat([o[t] for o in per_dir], dim=-1) for t in range(len(steps))]
        if dropout > 0 and training and layer < num_layers - 1:
            # One mask over the whole [steps, batch, features] output, drawn in memory order,
            # so a backend that drops out its stacked layer output draws the same mask.
            steps = list(F.dropout(torch.cat(steps), dropout, training=True).split(batch_sizes))
    h_n, c_n = torch.stack(h_n), torch.stack(c_n)

    if packed:
        if unsorted_idx is not None:
            h_n, c_n = h_n.index_select(1, unsorted_idx), c_n.index_select(1, unsorted_idx)
        return PackedSequence(torch.cat(steps), batch_sizes_t, sorted_idx, unsorted_idx), (h_n, c_n)
    out = torch.stack(steps)
    if batch_first:
        out = out.transpose(0, 1)
    if unbatched:
        out = out.squeeze(0 if batch_first else 1)
        h_n, c_n = h_n.squeeze(1), c_n.squeeze(1)
    return out, (h_n, c_n)
