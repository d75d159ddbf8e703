"""Python side of the fastlstm:: ops: fake (meta) implementations for torch.compile and
opcheck, autograd through the backward op, and the functions the modules call.

Op contract (shapes in csrc/torch/layer.h):
  lstm_layer(xproj, h0, c0, w_hh, reverse) -> (hs, cs, gates)
  lstm_layer_backward(grad_hs, grad_cs, h0, c0, w_hh, hs, cs, gates, reverse)
      -> (grad_xproj, grad_h0, grad_c0, grad_w_hh)
  lstm_layer_inference(x, h0, c0, w_ih, w_hh, bias, reverse) -> (hs, c_n)
  lstm_layer_train(x, h0, c0, w_ih, w_hh, bias, reverse) -> (hs, cs, gates, h_n, c_n)
  lstm_layer_train_backward(grad_hs, grad_cs, grad_h_n, grad_c_n, x, h0, c0, w_ih, w_hh, hs,
                            cs, gates, reverse)
      -> (grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_bias)
      (CPU; lstm_layer with the input projection inside: FastLSTM's training path; its
      gates, and lstm_layer_embedded's, in the input's dtype: bf16 for bf16; h_n, c_n the
      final state as outputs of their own, c_n in float, so that a loss on them costs the
      backward no [S, B, H] gradient)
  lstm_layer_embedded(ids, table, h0, c0, w_hh, reverse) -> (hs, cs, gates, h_n, c_n)
  lstm_layer_embedded_backward(grad_hs, grad_cs, grad_h_n, grad_c_n, ids, table, h0, c0, w_hh,
                               hs, cs, gates, reverse) -> (grad_table, grad_h0, grad_c0, grad_w_hh)
      (CPU; the input projection read from a table per id: FastLSTM.forward_ids)
      (CPU; x W_ih^T + bias inside each step or as one GEMM first; nothing saved for backward)
  lstm_layer_packed(x, batch_sizes, h0, c0, w_ih, w_hh, bias, reverse, train)
      -> (hs, h_n, c_n, cs, gates)
  lstm_layer_packed_backward(grad_hs, grad_cs, grad_h_n, grad_c_n, x, batch_sizes, h0, c0,
                             w_ih, w_hh, hs, cs, gates, reverse)
      -> (grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_bias)
      (CPU, the fused layer; a PackedSequence's data x [N, I]: at step t only the first
      batch_sizes[t] sequences; h_n, c_n each sequence's own last state; cs and gates saved
      only with train)
  lstm_step(xproj, h, c, w_hh) -> (h_new, c_new, gates)
  lstm_stack_inference(x, h0, c0, w_ih[], w_hh[], b_ih[], b_hh[], dtype) -> (out, h_n, c_n)
      (CPU, no gradient; a unidirectional stack, every layer of each step in one pass)
  dropout(x, p, seed) -> out   (CPU; the mask a function of seed and element index)
  lstm_stack_persistent(xproj, h0, c0, w_ih[], bias[], w_hh[]) -> (hs, cs, gates), each
      [layers, ...] and layer l's slice what lstm_layer returns for it (csrc/torch/stack.h)
  generate(logits, h, c, embed, w_ih[], w_hh[], b_ih[], b_hh[], head_w, head_b, steps,
           temperature, top_k, top_p, seed, offset, forced, bf16) -> (ids, logits, h, c)
      (CPU; a char-rnn continued by `steps` ids in one call: csrc/torch/generate_cpu.h)
cs, c_new and gates are kept in float32 for half types (float64 for float64).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook

from . import _extension


def cell_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the ops keep the cell state and the saved gates in."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _fake_layer(xproj, h0, c0, w_hh, reverse):
    steps, batch, hidden = xproj.size(0), xproj.size(1), w_hh.size(1)
    return (xproj.new_empty(steps, batch, hidden),
            xproj.new_empty((steps, batch, hidden), dtype=cell_dtype(xproj.dtype)),
            xproj.new_empty((steps, batch, 4 * hidden), dtype=cell_dtype(xproj.dtype)))


def _fake_layer_inference(x, h0, c0, w_ih, w_hh, bias, reverse):
    steps, batch, hidden = x.size(0), x.size(1), w_hh.size(1)
    return (x.new_empty(steps, batch, hidden),
            x.new_empty((batch, hidden), dtype=cell_dtype(x.dtype)))


def _fake_layer_backward(grad_hs, grad_cs, h0, c0, w_hh, hs, cs, gates, reverse):
    return (torch.empty_like(gates, dtype=hs.dtype), torch.empty_like(h0), torch.empty_like(c0),
            torch.empty_like(w_hh))


def _with_final_state(hs, cs, gates):
    """(hs, cs, gates) and the final state h_n, c_n [B, H], as the ops return them."""
    return hs, cs, gates, hs.new_empty(hs.shape[1:]), cs.new_empty(cs.shape[1:])


def _fake_layer_train(x, h0, c0, w_ih, w_hh, bias, reverse):
    hs, cs, gates = _fake_layer(x.new_empty(x.size(0), x.size(1), w_ih.size(0)), h0, c0, w_hh,
                                reverse)
    return _with_final_state(hs, cs, gates.to(x.dtype))  # gates in x's dtype (bf16 for bf16)


def _fake_layer_train_backward(grad_hs, grad_cs, grad_h_n, grad_c_n, x, h0, c0, w_ih, w_hh, hs,
                               cs, gates, reverse):
    # The op's outputs are contiguous whatever its inputs' strides.
    return (x.new_empty(x.shape), h0.new_empty(h0.shape), c0.new_empty(c0.shape),
            w_ih.new_empty(w_ih.shape), w_hh.new_empty(w_hh.shape), w_ih.new_empty(w_ih.size(0)))


def _layer_train_setup_context(ctx, inputs, output):
    x, h0, c0, w_ih, w_hh, bias, reverse = inputs
    hs, cs, gates, _, _ = output
    ctx.save_for_backward(x, h0, c0, w_ih, w_hh, hs, cs, gates)
    ctx.reverse, ctx.has_bias = reverse, bias is not None
    ctx.set_materialize_grads(False)


def _layer_train_backward(ctx, grad_hs, grad_cs, grad_gates, grad_h_n, grad_c_n):
    x, h0, c0, w_ih, w_hh, hs, cs, gates = ctx.saved_tensors
    if _differentiable_backward_needed(grad_gates):
        grad_xproj, grad_h0, grad_c0, grad_w_hh = layer_backward_composite(
            grad_hs, grad_cs, grad_gates, h0, c0, w_hh, hs, cs, gates.to(cs.dtype), ctx.reverse,
            grad_h_n, grad_c_n)
        flat = grad_xproj.flatten(0, 1)
        grad_x = (flat @ w_ih).view(x.shape)
        grad_w_ih = flat.t() @ x.flatten(0, 1)
        grad_bias = flat.sum(0)
    else:
        if grad_hs is None:
            grad_hs = torch.zeros_like(hs)
        grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_bias = (
            torch.ops.fastlstm.lstm_layer_train_backward(grad_hs, grad_cs, grad_h_n, grad_c_n,
                                                         x, h0, c0, w_ih, w_hh, hs, cs, gates,
                                                         ctx.reverse))
    return (grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh,
            grad_bias if ctx.has_bias else None, None)


def _fake_layer_embedded(ids, table, h0, c0, w_hh, reverse):
    hs, cs, gates = _fake_layer(table.new_empty(ids.size(0), ids.size(1), table.size(1)), h0, c0,
                                w_hh, reverse)
    return _with_final_state(hs, cs, gates.to(table.dtype))


def _fake_layer_embedded_backward(grad_hs, grad_cs, grad_h_n, grad_c_n, ids, table, h0, c0,
                                  w_hh, hs, cs, gates, reverse):
    return (table.new_empty(table.shape), h0.new_empty(h0.shape), c0.new_empty(c0.shape),
            w_hh.new_empty(w_hh.shape))


def _layer_embedded_setup_context(ctx, inputs, output):
    ids, table, h0, c0, w_hh, reverse = inputs
    hs, cs, gates, _, _ = output
    ctx.save_for_backward(ids, table, h0, c0, w_hh, hs, cs, gates)
    ctx.reverse = reverse
    ctx.set_materialize_grads(False)


def _layer_embedded_backward(ctx, grad_hs, grad_cs, grad_gates, grad_h_n, grad_c_n):
    ids, table, h0, c0, w_hh, hs, cs, gates = ctx.saved_tensors
    if _differentiable_backward_needed(grad_gates):
        grad_xproj, grad_h0, grad_c0, grad_w_hh = layer_backward_composite(
            grad_hs, grad_cs, grad_gates, h0, c0, w_hh, hs, cs, gates.to(cs.dtype), ctx.reverse,
            grad_h_n, grad_c_n)
        grad_table = torch.zeros(table.shape, dtype=cs.dtype, device=table.device).index_add(
            0, ids.flatten(), grad_xproj.flatten(0, 1).to(cs.dtype)).to(table.dtype)
    else:
        if grad_hs is None:
            grad_hs = torch.zeros_like(hs)
        grad_table, grad_h0, grad_c0, grad_w_hh = (
            torch.ops.fastlstm.lstm_layer_embedded_backward(grad_hs, grad_cs, grad_h_n,
                                                            grad_c_n, ids, table, h0, c0, w_hh,
                                                            hs, cs, gates, ctx.reverse))
    return None, grad_table, grad_h0, grad_c0, grad_w_hh, None


def _fake_layer_packed(x, batch_sizes, h0, c0, w_ih, w_hh, bias, reverse, train):
    rows, batch, hidden = x.size(0), h0.size(0), w_hh.size(1)
    return (x.new_empty(rows, hidden), x.new_empty(batch, hidden),
            x.new_empty((batch, hidden), dtype=torch.float32),
            x.new_empty((rows, hidden) if train else (0,), dtype=torch.float32),
            x.new_empty((rows, 4 * hidden) if train else (0,)))


def _fake_layer_packed_backward(grad_hs, grad_cs, grad_h_n, grad_c_n, x, batch_sizes, h0, c0,
                                w_ih, w_hh, hs, cs, gates, reverse):
    return (x.new_empty(x.shape), h0.new_empty(h0.shape), c0.new_empty(c0.shape),
            w_ih.new_empty(w_ih.shape), w_hh.new_empty(w_hh.shape), w_ih.new_empty(w_ih.size(0)))


def _traced(t):
    """Whether t is a tracing stand-in (torch.compile, opcheck), not data."""
    from torch._subclasses.fake_tensor import FakeTensor
    from torch._subclasses.functional_tensor import FunctionalTensor
    return isinstance(t, (FakeTensor, FunctionalTensor))


def _layer_packed_setup_context(ctx, inputs, output):
    x, batch_sizes, h0, c0, w_ih, w_hh, bias, reverse, train = inputs
    _, _, _, cs, gates = output
    ctx.save_for_backward(x, batch_sizes, h0, c0, w_ih, w_hh, bias, output[0], cs, gates)
    ctx.reverse, ctx.has_bias, ctx.train = reverse, bias is not None, train
    # The gates are what the backward op reads, not a result: the composite backward
    # recomputes them (differentiably) where the backward itself is differentiated.
    ctx.mark_non_differentiable(gates)
    ctx.set_materialize_grads(False)


def _layer_packed_backward(ctx, grad_hs, grad_h_n, grad_c_n, grad_cs, _grad_gates):
    if not ctx.train:
        raise RuntimeError("fastlstm: lstm_layer_packed ran with train=False (nothing saved "
                           "for a backward); call it with train=True where a gradient is wanted")
    x, batch_sizes, h0, c0, w_ih, w_hh, bias, hs, cs, gates = ctx.saved_tensors
    # (The composite splits the steps by batch_sizes' values, which a trace does not have;
    # torch.compile has no double backward.)
    if torch.is_grad_enabled() and not _traced(batch_sizes):
        sizes = batch_sizes.tolist()
        steps = lambda t: None if t is None else t.split(sizes)  # noqa: E731
        acc = cs.dtype
        xproj = F.linear(x.to(acc), w_ih.to(acc), None if bias is None else bias.to(acc))
        xproj, w = xproj.split(sizes), w_hh.to(acc)

        def gates_of(t, h_prev):
            i, f, g, o = (xproj[t] + h_prev @ w.t()).chunk(4, dim=-1)
            return torch.cat([i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()], dim=-1)

        grad_pre, grad_h0, grad_c0, grad_w_hh = _backward_steps(
            steps(grad_hs), steps(grad_cs), None, h0, c0, w_hh, steps(hs), steps(cs),
            gates_of, ctx.reverse, grad_h_n, grad_c_n)
        grad_pre = torch.cat(grad_pre)
        grad_x, grad_w_ih = (grad_pre @ w_ih.to(grad_pre.dtype)).to(x.dtype), grad_pre.t() @ x
        grad_bias = grad_pre.sum(0).to(x.dtype)
        grad_h0, grad_c0 = grad_h0.to(h0.dtype), grad_c0.to(c0.dtype)
        grad_w_ih, grad_w_hh = grad_w_ih.to(w_ih.dtype), grad_w_hh.to(w_hh.dtype)
    else:
        if grad_hs is None:
            grad_hs = torch.zeros_like(hs)
        grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_bias = (
            torch.ops.fastlstm.lstm_layer_packed_backward(
                grad_hs, grad_cs, grad_h_n, grad_c_n, x, batch_sizes, h0, c0, w_ih, w_hh, hs,
                cs, gates, ctx.reverse))
    return (grad_x, None, grad_h0, grad_c0, grad_w_ih, grad_w_hh,
            grad_bias if ctx.has_bias else None, None, None)


def _fake_step(xproj, h, c, w_hh):
    batch, hidden = xproj.size(0), w_hh.size(1)
    return (xproj.new_empty(batch, hidden),
            xproj.new_empty((batch, hidden), dtype=cell_dtype(xproj.dtype)),
            xproj.new_empty((batch, 4 * hidden), dtype=cell_dtype(xproj.dtype)))


def layer_backward_composite(grad_hs, grad_cs, grad_gates, h0, c0, w_hh, hs, cs, gates,
                             reverse, grad_h_n=None, grad_c_n=None):
    """lstm_layer_backward (same arguments, plus the gradient on the saved `gates` output)
    in plain differentiable torch ops. Autograd runs this instead of the fused backward when
    the backward is itself differentiated (create_graph=True: double backward, gradient
    penalties, Hessian-vector products), and when a gradient arrives on `gates`, as it does
    in a double backward. Built from the op's saved inputs and outputs, so differentiating
    it reaches the inputs through the op's own backward again, at any order. grad_h_n,
    grad_c_n: the final state's own gradients (ops that return it), or None."""
    steps = lambda t: None if t is None else t.unbind(0)  # noqa: E731
    grad_pre, grad_h0, grad_c0, grad_w = _backward_steps(
        steps(grad_hs), steps(grad_cs), steps(grad_gates), h0, c0, w_hh, steps(hs), steps(cs),
        steps(gates), reverse, grad_h_n, grad_c_n)
    return (torch.stack(grad_pre).to(hs.dtype), grad_h0.to(h0.dtype), grad_c0.to(c0.dtype),
            grad_w.to(w_hh.dtype))


def _backward_steps(grad_hs, grad_cs, grad_gates, h0, c0, w_hh, hs, cs, gates, reverse,
                    grad_h_n=None, grad_c_n=None):
    """The composite backward over per-step lists (index = time; grad_* lists or None), step
    t holding the first n_t rows of the batch, n_t never growing with t (dense: all B; packed:
    a PackedSequence's batch_sizes). A row absent from the step before starts from h0, c0
    there; grad_h_n, grad_c_n [B, H] (or None) reach each row at its own last step. `gates`:
    the saved activated gates per step, or a function (t, h_prev) -> them (recomputed, where
    the op's gates are not differentiable). Returns (grad_pre per step, grad_h0, grad_c0,
    grad_w_hh) in the cell states' dtype."""
    acc = cs[0].dtype
    w = w_hh.to(acc)
    # The carried gradients of every row of the batch; a row not in this step keeps its own
    # (forward: dL/dh_n, dL/dc_n until its last step; reverse: dL/dh0, dL/dc0 after its first).
    dh_rec = (h0.new_zeros(h0.shape, dtype=acc) if grad_h_n is None else grad_h_n.to(acc))
    dc_carry = (c0.new_zeros(c0.shape, dtype=acc) if grad_c_n is None else grad_c_n.to(acc))
    count = len(hs)
    grad_pre, h_prevs = [None] * count, [None] * count
    for t in (range(count) if reverse else range(count - 1, -1, -1)):
        n = hs[t].size(0)
        prev = t + 1 if reverse else t - 1
        k = min(n, hs[prev].size(0)) if 0 <= prev < count else 0  # rows with a previous step
        h_prevs[t] = torch.cat([hs[prev][:k], h0[k:n]]).to(acc) if k else h0[:n].to(acc)
        c_prev = torch.cat([cs[prev][:k], c0[k:n]]).to(acc) if k else c0[:n].to(acc)
        gates_t = gates(t, h_prevs[t]) if callable(gates) else gates[t].to(acc)
        i, f, g, o = gates_t.chunk(4, dim=-1)
        act_grad = torch.cat([i * (1 - i), f * (1 - f), 1 - g * g, o * (1 - o)], dim=-1)
        tanh_c = torch.tanh(cs[t].to(acc))
        dh = dh_rec[:n] if grad_hs is None else dh_rec[:n] + grad_hs[t].to(acc)
        dc = dc_carry[:n] + dh * o * (1 - tanh_c * tanh_c)
        if grad_cs is not None:
            dc = dc + grad_cs[t].to(acc)
        d_gates = torch.cat([dc * g, dc * c_prev, dc * i, dh * tanh_c], dim=-1)
        if grad_gates is not None:
            d_gates = d_gates + grad_gates[t].to(acc)
        grad_pre[t] = d_gates * act_grad
        dh_rec = torch.cat([grad_pre[t] @ w, dh_rec[n:]])
        dc_carry = torch.cat([dc * f, dc_carry[n:]])
    grad_w = torch.cat(grad_pre).t() @ torch.cat(h_prevs)  # one GEMM
    return grad_pre, dh_rec, dc_carry, grad_w


def _differentiable_backward_needed(grad_gates):
    return grad_gates is not None or torch.is_grad_enabled()


def layer_autograd(op_name: str, backward_op) -> None:
    """Autograd for a layer op with the lstm_layer contract, through `backward_op` (same
    arguments as lstm_layer_backward), or layer_backward_composite where the backward must
    be differentiable. Shared by the C++/CUDA and the Triton ops."""
    def backward(ctx, grad_hs, grad_cs, grad_gates):
        h0, c0, w_hh, hs, cs, gates = ctx.saved_tensors
        if _differentiable_backward_needed(grad_gates):
            return (*layer_backward_composite(grad_hs, grad_cs, grad_gates, h0, c0, w_hh, hs,
                                              cs, gates, ctx.reverse), None)
        if grad_hs is None:
            grad_hs = torch.zeros_like(hs)
        return (*backward_op(grad_hs, grad_cs, h0, c0, w_hh, hs, cs, gates, ctx.reverse), None)

    torch.library.register_autograd(op_name, backward, setup_context=_layer_setup_context)


def _layer_setup_context(ctx, inputs, output):
    _, h0, c0, w_hh, reverse = inputs
    hs, cs, gates = output
    ctx.save_for_backward(h0, c0, w_hh, hs, cs, gates)
    ctx.reverse = reverse
    # Usually only c_n of cs is used (or none), and gates never outside a double backward:
    # let an unused gradient arrive as None rather than as a zero tensor the backward reads.
    ctx.set_materialize_grads(False)


def _step_setup_context(ctx, inputs, output):
    _, h, c, w_hh = inputs
    h_new, c_new, gates = output
    ctx.save_for_backward(h, c, w_hh, h_new, c_new, gates)
    ctx.set_materialize_grads(False)


def _step_backward(ctx, grad_h, grad_c, grad_gates):
    # A step is a layer of length 1: one backward (fused or composite) serves both.
    h, c, w_hh, h_new, c_new, gates = ctx.saved_tensors
    one_step = lambda t: None if t is None else t.unsqueeze(0)  # noqa: E731
    if _differentiable_backward_needed(grad_gates):
        grad_x, grad_h0, grad_c0, grad_w = layer_backward_composite(
            one_step(grad_h), one_step(grad_c), one_step(grad_gates), h, c, w_hh,
            one_step(h_new), one_step(c_new), one_step(gates), False)
        return grad_x.squeeze(0), grad_h0, grad_c0, grad_w
    grad_h = torch.zeros_like(h_new) if grad_h is None else grad_h
    grad_x, grad_h0, grad_c0, grad_w = torch.ops.fastlstm.lstm_layer_backward(
        grad_h.unsqueeze(0), one_step(grad_c), h, c, w_hh, h_new.unsqueeze(0),
        c_new.unsqueeze(0), gates.unsqueeze(0), False)
    return grad_x.squeeze(0), grad_h0, grad_c0, grad_w


def _fake_stack(xproj, h0, c0, w_ih, bias, w_hh):
    layers, hidden, cell = len(w_hh), w_hh[0].size(1), cell_dtype(xproj.dtype)
    steps, batch = xproj.size(0), xproj.size(1)
    return (xproj.new_empty(layers, steps, batch, hidden),
            xproj.new_empty((layers, steps, batch, hidden), dtype=cell),
            xproj.new_empty((layers, steps, batch, 4 * hidden), dtype=cell))


def _stack_setup_context(ctx, inputs, output):
    _, h0, c0, w_ih, bias, w_hh = inputs
    hs, cs, gates = output
    ctx.save_for_backward(h0, c0, hs, cs, gates, *w_ih, *w_hh)
    ctx.layers, ctx.has_bias = len(w_hh), len(bias) > 0
    ctx.mark_non_differentiable(gates)
    ctx.set_materialize_grads(False)


def _stack_backward(ctx, grad_hs, grad_cs, _grad_gates):
    """From the top layer down, each through lstm_layer_backward (the one-layer ops' own
    backward): a layer's gradient on its input projection gives W_ih's and the bias's
    gradients and, through W_ih, the layer below's share of its output gradient."""
    layers = ctx.layers
    h0, c0, hs, cs, gates, *weights = ctx.saved_tensors
    w_ih, w_hh = weights[:layers - 1], weights[layers - 1:]
    grad_h0, grad_c0, grad_w_hh = [None] * layers, [None] * layers, [None] * layers
    grad_w_ih, grad_bias = [None] * (layers - 1), [None] * (layers - 1)
    from_above = None
    for layer in reversed(range(layers)):
        grad_out = torch.zeros_like(hs[layer]) if grad_hs is None else grad_hs[layer]
        if from_above is not None:
            grad_out = grad_out + from_above
        grad_xproj, grad_h0[layer], grad_c0[layer], grad_w_hh[layer] = (
            torch.ops.fastlstm.lstm_layer_backward(
                grad_out, None if grad_cs is None else grad_cs[layer], h0[layer], c0[layer],
                w_hh[layer], hs[layer], cs[layer], gates[layer], False))
        if layer > 0:
            flat = grad_xproj.flatten(0, 1)
            grad_w_ih[layer - 1] = flat.t() @ hs[layer - 1].flatten(0, 1)
            grad_bias[layer - 1] = flat.sum(0)
            from_above = grad_xproj @ w_ih[layer - 1]
    return (grad_xproj, torch.stack(grad_h0), torch.stack(grad_c0), grad_w_ih,
            grad_bias if ctx.has_bias else [], grad_w_hh)


def _no_double_backward(ctx, *grads):
    # Reached only through the persistent stack op (CUDA, opt-in): the layer and step ops
    # differentiate their backward through layer_backward_composite instead.
    raise RuntimeError("fastlstm: double backward (gradients of gradients) through the "
                       "persistent stack op is not supported; fastlstm.set_persistent(False) "
                       "runs layer by layer, which supports it")


def _no_setup(ctx, inputs, output):
    pass


def _dropout_setup_context(ctx, inputs, output):
    _, ctx.p, ctx.seed = inputs


def _dropout_backward(ctx, grad):
    # The same mask on the gradient: dropout is linear in x.
    return torch.ops.fastlstm.dropout(grad, ctx.p, ctx.seed), None, None


_weights_generation = 0  # without the extension: optimizer steps only


def _weights_changed(optimizer, args, kwargs):
    """A post-step hook of every torch optimizer: what was cast or packed from weights is
    stale (fused optimizers update them in place without bumping their version counters)."""
    global _weights_generation
    _weights_generation += 1
    if _extension.available():
        _extension._C.weights_changed()


register_optimizer_step_post_hook(_weights_changed)


def weight_fingerprint(p) -> int:
    """What changes when p's values do, beyond its version counter: the generation (bumped
    by every optimizer step) mixed with a hash of 16 of p's elements on the CPU
    (csrc/torch/weight_cache.h). The caches of casts and packed weights compare it."""
    if _extension.available():
        return _extension._C.weight_fingerprint(p)
    return _weights_generation


def dropout(x, p: float, training: bool = True, generator=None):
    """F.dropout(x, p, training), on CPU tensors with a counter-based mask (core/dropout.h):
    no mask stored, every thread draws, 15-20x faster than torch's CPU dropout here. The
    seed comes from torch's generator (`generator`, or the default one), so torch.manual_seed
    makes it reproducible. Other devices, p == 1, and torch.compile: F.dropout."""
    if not training or p == 0:
        return x
    if (x.device.type != "cpu" or p >= 1 or not _extension.available()
            or x.dtype not in (torch.float32, torch.float64, torch.bfloat16)
            or torch.compiler.is_compiling()):
        return F.dropout(x, p, training=True)
    seed = int(torch.randint(2 ** 62, (), generator=generator, dtype=torch.int64))
    return torch.ops.fastlstm.dropout(x, float(p), seed)


def _fake_stack_inference(x, h0, c0, w_ih, w_hh, b_ih, b_hh, dtype):
    return (x.new_empty((x.size(0), x.size(1), h0.size(2)), dtype=dtype),
            h0.new_empty(h0.shape, dtype=dtype), c0.new_empty(c0.shape, dtype=dtype))


def stack_inference(x, h0, c0, w_ih, w_hh, b_ih, b_hh, dtype):
    """A unidirectional stack's forward without gradient (CPU): x [S, B, I], h0, c0
    [L, B, H]; w_ih, w_hh, b_ih, b_hh lists, one per layer (b_ih, b_hh empty without bias),
    in any float dtype, computed in `dtype` (the cell state in float). Every layer of each
    step in one pass over weights packed once and kept until one of them changes (in place
    or replaced), with no per-layer op or allocation: what a streaming call (a step or a few
    at a time) needs. Returns (out [S, B, H], h_n, c_n [L, B, H]) in `dtype`."""
    return _stack_inference_op(x, h0, c0, w_ih, w_hh, b_ih, b_hh, dtype)


def _fake_generate(logits, h, c, embed, w_ih, w_hh, b_ih, b_hh, head_w, head_b, steps,
                   temperature, top_k, top_p, seed, offset, forced, bf16):
    return (logits.new_empty((logits.size(0), steps), dtype=torch.int64),
            torch.empty_like(logits), torch.empty_like(h), torch.empty_like(c))


def generate(logits, h, c, embed, w_ih, w_hh, b_ih, b_hh, head_w, head_b, steps: int,
             temperature: float = 1.0, top_k: int | None = None, top_p: float = 1.0,
             seed: int = 0, offset: int = 0, forced=None, bf16: bool = False):
    """Continue N samples of a char-rnn by `steps` ids in one call (CPU, float32 tensors):
    per step, draw an id from `logits` [N, V] (argmax at temperature 0, else
    softmax(logits / temperature) restricted to the top_k largest logits, then to the
    nucleus of mass top_p; the draw a function of (seed, sample, offset + step) only), feed
    it through the embedding [V, E], every layer (w_ih, w_hh, b_ih, b_hh: lists, the biases
    both empty without bias; h, c [L, N, H]) and the decoder (head_w [V, H], head_b [V] or
    None). `forced` [N, steps] int64: feed these ids instead (teacher forcing). bf16: the
    products in bfloat16 (fp32 cell state and accumulation). Returns (ids [N, steps],
    logits, h, c) after the last id: pass them back, with offset + steps, to continue."""
    return torch.ops.fastlstm.generate(
        logits, h, c, embed, list(w_ih), list(w_hh), list(b_ih), list(b_hh), head_w, head_b,
        int(steps), float(temperature), top_k, float(top_p), int(seed), int(offset), forced,
        bool(bf16))


if _extension.available():
    # The overload itself: a streaming call is a few microseconds, resolving it is one.
    _stack_inference_op = torch.ops.fastlstm.lstm_stack_inference.default
    torch.library.register_fake("fastlstm::generate")(_fake_generate)
    torch.library.register_fake("fastlstm::lstm_layer")(_fake_layer)
    torch.library.register_fake("fastlstm::lstm_layer_backward")(_fake_layer_backward)
    torch.library.register_fake("fastlstm::lstm_layer_inference")(_fake_layer_inference)
    torch.library.register_fake("fastlstm::lstm_layer_train")(_fake_layer_train)
    torch.library.register_fake("fastlstm::lstm_layer_train_backward")(
        _fake_layer_train_backward)
    torch.library.register_autograd("fastlstm::lstm_layer_train", _layer_train_backward,
                                    setup_context=_layer_train_setup_context)
    torch.library.register_autograd("fastlstm::lstm_layer_train_backward", _no_double_backward,
                                    setup_context=_no_setup)
    torch.library.register_fake("fastlstm::lstm_layer_embedded")(_fake_layer_embedded)
    torch.library.register_fake("fastlstm::lstm_layer_embedded_backward")(
        _fake_layer_embedded_backward)
    torch.library.register_autograd("fastlstm::lstm_layer_embedded", _layer_embedded_backward,
                                    setup_context=_layer_embedded_setup_context)
    torch.library.register_autograd("fastlstm::lstm_layer_embedded_backward",
                                    _no_double_backward, setup_context=_no_setup)
    torch.library.register_fake("fastlstm::lstm_layer_packed")(_fake_layer_packed)
    torch.library.register_fake("fastlstm::lstm_layer_packed_backward")(
        _fake_layer_packed_backward)
    torch.library.register_autograd("fastlstm::lstm_layer_packed", _layer_packed_backward,
                                    setup_context=_layer_packed_setup_context)
    torch.library.register_autograd("fastlstm::lstm_layer_packed_backward", _no_double_backward,
                                    setup_context=_no_setup)
    torch.library.register_fake("fastlstm::lstm_step")(_fake_step)
    torch.library.register_fake("fastlstm::lstm_stack_inference")(_fake_stack_inference)
    torch.library.register_fake("fastlstm::lstm_layer_persistent")(_fake_layer)
    layer_autograd("fastlstm::lstm_layer_persistent",
                   lambda *args: torch.ops.fastlstm.lstm_layer_backward(*args))
    layer_autograd("fastlstm::lstm_layer",
                   lambda *args: torch.ops.fastlstm.lstm_layer_backward(*args))
    torch.library.register_fake("fastlstm::lstm_stack_persistent")(_fake_stack)
    torch.library.register_autograd("fastlstm::lstm_stack_persistent", _stack_backward,
                                    setup_context=_stack_setup_context)
    torch.library.register_autograd("fastlstm::lstm_step", _step_backward,
                                    setup_context=_step_setup_context)
    torch.library.register_fake("fastlstm::dropout")(lambda x, p, seed: torch.empty_like(x))
    torch.library.register_autograd("fastlstm::dropout", _dropout_backward,
                                    setup_context=_dropout_setup_context)
    # Registered so that autograd says so plainly instead of silently returning nothing.
    torch.library.register_autograd("fastlstm::lstm_layer_backward", _no_double_backward,
                                    setup_context=_no_setup)


def set_cuda_graphs(enabled: bool) -> None:
    """CUDA backend: replay each layer's time loop (forward and backward) as a CUDA graph,
    captured once per shape, instead of launching two kernels per time step from the host.
    On by default (FASTLSTM_CUDA_GRAPHS=0 turns the default off). Each call then copies its
    inputs and outputs once; up to 8 shapes are kept, each with its own buffers."""
    _extension.require("cuda")
    _extension._C.set_cuda_graphs(bool(enabled))


def cuda_graphs_enabled() -> bool:
    return _extension.available() and bool(_extension._C.cuda_graphs_enabled())


_persistent = {"on": os.environ.get("FASTLSTM_PERSISTENT") == "1"}


def set_persistent(enabled: bool) -> None:
    """CUDA backend: run each layer's forward as the persistent kernel (one launch for the
    whole sequence, W_hh on chip; the step loop where it does not fit). Off by default
    (FASTLSTM_PERSISTENT=1 turns the default on): correct on an H200 (run 7) but slower than
    the step loop with CUDA graphs at hidden 512 (benchmarks/NOTES.md)."""
    _persistent["on"] = bool(enabled)


def persistent_enabled() -> bool:
    return _persistent["on"]


def persistent_version() -> int:
    """Which persistent kernel set_persistent(True) runs: FASTLSTM_PERSISTENT_VERSION, 1 (the
    default, p1: layer by layer, CUDA cores) or 4 (p4: a unidirectional stack without dropout
    in one launch, the layers as a wavefront, products on tensor cores: bf16/fp16, and fp32 as
    TF32 where torch.backends.cuda.matmul.allow_tf32 is on; the step loop elsewhere). The C++
    op reads the same variable and rejects other values (2 and 3 were removed after commit
    5f6c790; benchmarks/NOTES.md)."""
    value = os.environ.get("FASTLSTM_PERSISTENT_VERSION", "").strip()
    return int(value) if value in ("1", "4") else 1


def input_projection(x, w_ih, b_ih, b_hh):
    """x W_ih^T + b_ih + b_hh for all steps at once: one GEMM outside the time loop."""
    return F.linear(x, w_ih, None if b_ih is None else b_ih + b_hh)


def lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse=False, layer_op=None):
    """One layer, one direction: x [S, B, F] -> (hs [S, B, H], h_n [B, H], c_n [B, H]).
    layer_op: an op with lstm_layer's contract (default the C++/CUDA one)."""
    last = 0 if reverse else -1
    if layer_op is None and x.device.type == "cpu" and \
            not _grad_wanted(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        # Inference on the CPU: the input projection inside the steps (or one GEMM first, as
        # the op finds faster), and no gates or cell states written for a backward never run.
        bias = None if b_ih is None else b_ih + b_hh
        hs, c_n = torch.ops.fastlstm.lstm_layer_inference(x, h0, c0, w_ih, w_hh, bias, reverse)
        return hs, hs[last], c_n.to(x.dtype)
    if layer_op is None and x.device.type == "cpu" and _train_op_enabled():
        # Training on the CPU: the input projection in the op too, so its backward returns
        # the gradients of x, W_ih and the bias (that one summed inside the kernel).
        # x contiguous here (the op reads it so anyway): its gradient is then laid out as x,
        # which torch.compile assumes of an input's gradient.
        bias = None if b_ih is None else b_ih + b_hh
        hs, _, _, h_n, c_n = torch.ops.fastlstm.lstm_layer_train(x.contiguous(), h0, c0, w_ih,
                                                                 w_hh, bias, reverse)
        return hs, h_n, c_n.to(x.dtype)
    xproj = input_projection(x, w_ih, b_ih, b_hh)
    layer_op = layer_op or torch.ops.fastlstm.lstm_layer
    hs, cs, _ = layer_op(xproj, h0, c0, w_hh, reverse)
    return hs, hs[last], cs[last].to(x.dtype)


def lstm_layer_embedded(ids, table, h0, c0, w_hh, reverse=False):
    """One layer whose input is an embedding (CPU): ids [S, B] int64, table [V, 4H] = the
    embedding's weight W_ih^T + b_ih + b_hh (so step t's row b adds table[ids[t, b]] where
    the layer would add x W_ih^T + b) -> (hs [S, B, H], h_n, c_n). Its backward adds each
    row's gradient into its id's table row; the table's own graph (a [V, E] x [E, 4H]
    product) carries it to the embedding, W_ih and the biases."""
    hs, _, _, h_n, c_n = torch.ops.fastlstm.lstm_layer_embedded(ids.contiguous(), table, h0, c0,
                                                                w_hh, reverse)
    return hs, h_n, c_n.to(table.dtype)


def lstm_layer_packed(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse=False):
    """One layer, one direction, over packed sequences (CPU, the fused layer): x [N, F] a
    PackedSequence's data, batch_sizes [S] its batch sizes, h0, c0 [B, H] in its (sorted)
    order -> (hs [N, H] packed alike, h_n, c_n [B, H]: each sequence's own last state). What
    a backward needs is saved only where a gradient is wanted."""
    bias = None if b_ih is None else b_ih + b_hh
    train = _grad_wanted(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    hs, h_n, c_n, _, _ = torch.ops.fastlstm.lstm_layer_packed(x.contiguous(), batch_sizes, h0,
                                                             c0, w_ih, w_hh, bias, reverse, train)
    return hs, h_n, c_n.to(x.dtype)


def _train_op_enabled():
    # FASTLSTM_TRAIN_OP=0: the input projection as F.linear outside the layer op (to compare).
    return os.environ.get("FASTLSTM_TRAIN_OP", "1") != "0"


def _grad_wanted(*tensors):
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def lstm_stack(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    """A unidirectional stack of len(w_hh) layers in one persistent launch, the layers as a
    wavefront (p4): x [S, B, F], h0, c0 [L, B, H]; w_ih, w_hh, b_ih, b_hh: lists, one entry
    per layer (b_ih, b_hh entries None without bias) -> (out [S, B, H], h_n, c_n [L, B, H])."""
    xproj = input_projection(x, w_ih[0], b_ih[0], b_hh[0])
    bias = [] if b_ih[0] is None else [bi + bh for bi, bh in zip(b_ih[1:], b_hh[1:])]
    hs, cs, _ = torch.ops.fastlstm.lstm_stack_persistent(xproj, h0, c0, list(w_ih[1:]), bias,
                                                         list(w_hh))
    return hs[-1], hs[:, -1], cs[:, -1].to(x.dtype)


def lstm_step(x, h, c, w_ih, w_hh, b_ih, b_hh):
    """One fused step: x [B, F], h, c [B, H] -> (h_new, c_new), both in x's dtype."""
    h_new, c_new, _ = torch.ops.fastlstm.lstm_step(input_projection(x, w_ih, b_ih, b_hh), h, c,
                                                   w_hh)
    return h_new, c_new.to(x.dtype)
