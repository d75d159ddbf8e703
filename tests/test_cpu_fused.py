"""The CPU op's fused layer (csrc/core/lstm_cpu_fused.h), through the registered ops: fp32 and
bf16 against the float64 op on the same inputs, outputs and every gradient, at shapes that
take each work split (rows, units with the per-step barrier, one worker) on 1 and 2 threads;
the inference op against the training one; FastLSTM's use of it under no_grad."""
import pytest
import torch

import fastlstm  # noqa: F401  (registers fake impls and autograd)
from fastlstm import FastLSTM, _extension, reference
from helpers import TOLERANCE, assert_close, skip_absent_kernels

pytestmark = pytest.mark.skipif(not _extension.available(), reason="fastlstm._C not built")


def randn(*shape, seed, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def layer_inputs(steps, batch, hidden, dtype, seed):
    """xproj, h0, c0, w_hh representable in `dtype`, as float64 and as `dtype`."""
    args64 = [randn(steps, batch, 4 * hidden, seed=seed), randn(batch, hidden, seed=seed + 1),
              randn(batch, hidden, seed=seed + 2),
              randn(4 * hidden, hidden, seed=seed + 3, scale=hidden ** -0.5)]
    args64 = [a.to(dtype).double() for a in args64]
    return args64, [a.to(dtype) for a in args64]


# (steps, batch, hidden). A step of under 0.5 MFLOP (8 B H^2) runs on one worker; above
# that, at 2 threads, B >= 8 splits the rows and B < 8 the units (each worker at least 2
# groups of 16), meeting at the barrier every step: (5, 2, 192) and (5, 3, 200, a partial
# group) split the units, (4, 9, 96) and (4, 64, 32) the rows. H = 37, 48, 200: a partial
# group of 16 (37: an odd bf16 k too). One step: the per-step loop (so does any sequence
# under 4 steps: kMinSteps in layer_cpu_fused.cpp). On AMX tiles (16 rows,
# 16 k-steps each, the register tile for the rest): 64 and 21 rows take several row
# blocks (21 on one thread: 16 + 5); H = 37 and 48 leave k-steps past the last whole tile.
# Where the k-steps are whole tile blocks (H = 32, 64), 17 to 32 rows go as one pair of row
# blocks whose second has fewer rows: 50 rows are 32 + (16 + 2) on one thread, 16 + 9 a
# worker on two.
SHAPES = [(7, 1, 37), (5, 2, 192), (5, 3, 200), (4, 9, 96), (9, 13, 48), (4, 64, 32), (1, 8, 16),
          (4, 21, 40), (4, 50, 64)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "S%dB%dH%d" % s)
def test_layer_matches_float64(shape, reverse, dtype, threads, kernels):
    skip_absent_kernels(dtype, kernels)
    args64, args = layer_inputs(*shape, dtype, seed=sum(shape))
    args64 = [a.requires_grad_() for a in args64]
    args = [a.requires_grad_() for a in args]
    steps, batch, hidden = shape
    up_h, up_c = randn(steps, batch, hidden, seed=3), randn(steps, batch, hidden, seed=4)

    def run(inputs):
        hs, cs, _ = torch.ops.fastlstm.lstm_layer(*inputs, reverse)
        loss = (hs.double() * up_h.double()).sum() + (cs.double() * up_c.double()).sum()
        return (hs, cs, *torch.autograd.grad(loss, inputs))

    names = ["hs", "cs", "grad_xproj", "grad_h0", "grad_c0", "grad_w_hh"]
    for name, got, want in zip(names, run(args), run(args64)):
        if name != "cs":  # cs is fp32 for both storage dtypes
            assert got.dtype == dtype, name
        assert_close(got, want, TOLERANCE[dtype], f"{dtype} {name}")


@pytest.mark.parametrize("projection", ["step", "gemm"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("inputs", [7, 32], ids=["I7", "I32"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "S%dB%dH%d" % s)
def test_inference_op_matches_float64(shape, inputs, reverse, dtype, projection, threads,
                                      kernels, monkeypatch):
    skip_absent_kernels(dtype, kernels)
    """The inference op (x W_ih^T + bias inside each step from packed W_ih, or as one GEMM
    first: FASTLSTM_INFER_PROJECTION; nothing saved) against the float64 training op fed the
    exact input projection: hs and c_n. I = 7: an odd bf16 row."""
    monkeypatch.setenv("FASTLSTM_INFER_PROJECTION", projection)
    steps, batch, hidden = shape
    args64, args = layer_inputs(*shape, dtype, seed=7 + sum(shape))
    _, h0, c0, w_hh = args
    x = randn(steps, batch, inputs, seed=5).to(dtype)
    w_ih = randn(4 * hidden, inputs, seed=6, scale=inputs ** -0.5).to(dtype)
    bias = randn(4 * hidden, seed=8).to(dtype)
    for b in (bias, None):
        xproj64 = torch.nn.functional.linear(x.double(), w_ih.double(),
                                             None if b is None else b.double())
        hs64, cs64, _ = torch.ops.fastlstm.lstm_layer(xproj64, *args64[1:], reverse)
        hs, c_n = torch.ops.fastlstm.lstm_layer_inference(x, h0, c0, w_ih, w_hh, b, reverse)
        assert hs.dtype == dtype and c_n.dtype == torch.float32
        assert_close(hs, hs64, TOLERANCE[dtype], f"{dtype} hs")
        assert_close(c_n, cs64[0 if reverse else -1], TOLERANCE[dtype], f"{dtype} c_n")


def oracle_layer(x, h0, c0, w_ih, w_hh, bias, reverse):
    """One layer through the float64 oracle's cell, step by step: (hs, cs) stacked in time."""
    h, c, hs, cs = h0, c0, [None] * x.size(0), [None] * x.size(0)
    for t in (reversed(range(x.size(0))) if reverse else range(x.size(0))):
        h, c = reference.lstm_cell_reference(x[t], h, c, w_ih, w_hh, bias,
                                             None if bias is None else torch.zeros_like(bias))
        hs[t], cs[t] = h, c
    return torch.stack(hs), torch.stack(cs)


def with_final_state(hs, cs, reverse):
    """The oracle's (hs, cs) and the final state taken from them, as the ops return it."""
    last = 0 if reverse else -1
    return hs, cs, hs[last], cs[last]


def loss_on_layer(hs, cs, up_h, up_c):
    return (hs.double() * up_h.double()).sum() + (cs.double() * up_c.double()).sum()


def loss_on_final_state(h_n, c_n, up_h, up_c):
    """Weights of their own (up_h's and up_c's first step, reversed), so that the final
    state's gradients differ from what hs's and cs's last step receive."""
    return ((h_n.double() * up_h[0].flip(-1).double()).sum()
            + (c_n.double() * up_c[0].flip(-1).double()).sum())


@pytest.mark.parametrize("projection", ["step", "gemm"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "S%dB%dH%d" % s)
def test_train_op_matches_the_oracle(shape, reverse, dtype, projection, threads, kernels,
                                     monkeypatch):
    """The training op (x W_ih^T + bias inside each step, or one GEMM first:
    FASTLSTM_TRAIN_PROJECTION) against the float64 oracle: hs, cs, the final state h_n, c_n
    (outputs of their own) and the gradients of x, h0, c0, W_ih, W_hh and the bias (summed
    inside the backward kernel) under a loss on all four outputs, with and without a bias.
    I = 7 (an odd bf16 row) at odd batch sizes, else 32."""
    skip_absent_kernels(dtype, kernels)
    monkeypatch.setenv("FASTLSTM_TRAIN_PROJECTION", projection)
    steps, batch, hidden = shape
    inputs = 7 if batch % 2 else 32
    _, (_, h0, c0, w_hh) = layer_inputs(*shape, dtype, seed=13 + sum(shape))
    x = randn(steps, batch, inputs, seed=5).to(dtype)
    w_ih = randn(4 * hidden, inputs, seed=6, scale=inputs ** -0.5).to(dtype)
    bias = randn(4 * hidden, seed=8).to(dtype)
    up_h, up_c = randn(steps, batch, hidden, seed=3), randn(steps, batch, hidden, seed=4)
    names = ["hs", "cs", "h_n", "c_n", "grad_x", "grad_h0", "grad_c0", "grad_w_ih", "grad_w_hh",
             "grad_bias"]
    for b in (bias, None):
        def run(op, cast):
            args = [cast(a).requires_grad_() for a in (x, h0, c0, w_ih, w_hh)]
            bb = None if b is None else cast(b).requires_grad_()
            hs, cs, h_n, c_n = op(*args, bb, reverse)
            loss = (loss_on_layer(hs, cs, up_h, up_c)
                    + loss_on_final_state(h_n, c_n, up_h, up_c))
            return (hs, cs, h_n, c_n,
                    *torch.autograd.grad(loss, args + ([] if bb is None else [bb])))

        def op(*a):
            hs, cs, _, h_n, c_n = torch.ops.fastlstm.lstm_layer_train(*a)
            return hs, cs, h_n, c_n

        got = run(op, lambda t: t.clone())
        want = run(lambda *a: with_final_state(*oracle_layer(*a), a[-1]), lambda t: t.double())
        for name, g, w in zip(names, got, want):
            assert_close(g, w, TOLERANCE[dtype], f"{dtype} {name} bias={b is not None}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("weight_grad", ["tile", "view", "transposed"])
@pytest.mark.parametrize("shape", [(7, 1, 37), (4, 9, 96), (20, 52, 40), (5, 3, 250)],
                         ids=lambda s: "S%dB%dH%d" % s)
def test_train_op_weight_gradients_every_way(shape, weight_grad, dtype, threads, kernels,
                                             monkeypatch):
    """Weight gradients on our register tile (fp32 pairs of rows' k-steps for bf16), as
    ATen's g^T x, and for bf16 as one GEMM on operands our transposes wrote
    (FASTLSTM_WEIGHT_GRAD; tile where the AVX-512 build runs the dtype, else ATen's), on any
    CPU: the training op against the oracle as above, the projection both ways. Rows odd
    and even (7, 36, 1040: where the rule without AMX transposes; 15), 4H not a multiple of
    the tile's 6 rows or 48-row panels (148, 1000), columns not of 16 (7, 37, 250)."""
    for projection in ("step", "gemm"):
        monkeypatch.setenv("FASTLSTM_WEIGHT_GRAD", weight_grad)
        test_train_op_matches_the_oracle(shape, False, dtype, projection, threads, kernels,
                                         monkeypatch)


@pytest.mark.skipif(not _extension.cpu_fused(torch.float32), reason="no fused layer here")
def test_weight_grad_setting_is_checked(monkeypatch):
    monkeypatch.setenv("FASTLSTM_WEIGHT_GRAD", "fast")
    _, (_, h0, c0, w_hh) = layer_inputs(5, 2, 16, torch.float32, seed=1)
    x = randn(5, 2, 16, seed=2).requires_grad_()
    w_ih = randn(64, 16, seed=3).requires_grad_()
    hs, *_ = torch.ops.fastlstm.lstm_layer_train(x, h0, c0, w_ih, w_hh, None, False)
    with pytest.raises(RuntimeError, match="tile, gemm, view or transposed"):
        hs.sum().backward()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "S%dB%dH%d" % s)
def test_embedded_op_matches_the_oracle(shape, reverse, dtype, threads, kernels):
    """The layer whose input projection is a table row per id against the float64 oracle fed
    one-hot inputs (x W_ih^T = table[id] with W_ih = table^T): hs, cs, the final state h_n,
    c_n and, under a loss on all four, the gradients of the table (each row's gradient added
    into its id's row by the backward kernel), h0, c0, W_hh."""
    skip_absent_kernels(dtype, kernels)
    steps, batch, hidden = shape
    rows = 5
    _, (_, h0, c0, w_hh) = layer_inputs(*shape, dtype, seed=17 + sum(shape))
    ids = torch.randint(0, rows, (steps, batch), generator=torch.Generator().manual_seed(3))
    ids[0, 0] = rows - 1  # the last row used at least once
    table = randn(rows, 4 * hidden, seed=9).to(dtype)
    up_h, up_c = randn(steps, batch, hidden, seed=3), randn(steps, batch, hidden, seed=4)

    def loss_of(hs, cs, h_n, c_n):
        return loss_on_layer(hs, cs, up_h, up_c) + loss_on_final_state(h_n, c_n, up_h, up_c)

    args = [t.clone().requires_grad_() for t in (table, h0, c0, w_hh)]
    hs, cs, _, h_n, c_n = torch.ops.fastlstm.lstm_layer_embedded(ids, args[0], *args[1:], reverse)
    got = (hs, cs, h_n, c_n, *torch.autograd.grad(loss_of(hs, cs, h_n, c_n), args))
    ref = [t.double().requires_grad_() for t in (table, h0, c0, w_hh)]
    one_hot = torch.nn.functional.one_hot(ids, rows).double()
    out64 = with_final_state(*oracle_layer(one_hot, ref[1], ref[2], ref[0].t(), ref[3], None,
                                           reverse), reverse)
    want = (*out64, *torch.autograd.grad(loss_of(*out64), ref))
    for name, g, w in zip(["hs", "cs", "h_n", "c_n", "grad_table", "grad_h0", "grad_c0",
                           "grad_w_hh"], got, want):
        assert_close(g, w, TOLERANCE[dtype], f"{dtype} {name}")


def test_embedded_op_rejects_bad_ids():
    _, (_, h0, c0, w_hh) = layer_inputs(5, 3, 20, torch.float32, seed=1)
    table = randn(4, 80, seed=2)
    for ids, what in ((torch.full((5, 3), 4), "lie in"), (torch.full((5, 3), -1), "lie in"),
                      (torch.zeros(5, 3, dtype=torch.int32), "int64"),
                      (torch.zeros(5, 4, dtype=torch.int64), "h0 must be")):
        with pytest.raises(RuntimeError, match=what):
            torch.ops.fastlstm.lstm_layer_embedded(ids, table, h0, c0, w_hh, False)


def test_embedded_opcheck():
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        _, (_, h0, c0, w_hh) = layer_inputs(5, 3, 20, dtype, seed=11)
        ids = torch.randint(0, 7, (5, 3))
        for reverse in (False, True):
            args = [t.clone().requires_grad_() for t in (randn(7, 80, seed=1).to(dtype), h0, c0,
                                                         w_hh)]
            torch.library.opcheck(torch.ops.fastlstm.lstm_layer_embedded.default,
                                  (ids, *args, reverse))
            hs, cs, gates, h_n, c_n = torch.ops.fastlstm.lstm_layer_embedded(ids, *args, reverse)
            for final in ((None, None), (torch.randn_like(h_n), torch.randn_like(c_n))):
                torch.library.opcheck(
                    torch.ops.fastlstm.lstm_layer_embedded_backward.default,
                    (torch.randn_like(hs), torch.randn_like(cs), *final, ids,
                     *[a.detach() for a in args], hs.detach(), cs.detach(), gates.detach(),
                     reverse))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("layout", ["time-major", "batch_first", "bidirectional"])
def test_forward_ids_is_the_module_on_embedded_input(dtype, layout, monkeypatch):
    """FastLSTM.forward_ids(ids, embedding) against FastLSTM(embedding(ids)): outputs, states
    and the gradients of the embedding and of every parameter; training on the CPU takes the
    table op for the first layer (per direction), given states too."""
    torch.manual_seed(0)
    lstm = FastLSTM(13, 37, 2, backend="cpu", batch_first=layout == "batch_first",
                    bidirectional=layout == "bidirectional")
    emb = torch.nn.Embedding(11, 13)
    ids = torch.randint(0, 11, (9, 5))
    dirs = 2 if layout == "bidirectional" else 1
    state = (torch.randn(2 * dirs, 9 if layout == "batch_first" else 5, 37),) * 2
    calls = []
    op = torch.ops.fastlstm.lstm_layer_embedded
    monkeypatch.setattr(torch.ops.fastlstm, "lstm_layer_embedded",
                        lambda *a: calls.append(1) or op(*a))

    def run(fold):
        lstm.zero_grad()
        emb.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out, (h, c) = lstm.forward_ids(ids, emb, state) if fold else lstm(emb(ids), state)
        (out.float().square().sum() + h.float().sum() + c.float().square().sum()).backward()
        return [out, h, c, emb.weight.grad.clone(), *(p.grad.clone() for p in lstm.parameters())]

    for got, want in zip(run(True), run(False)):
        assert_close(got, want, TOLERANCE[dtype], f"{dtype} {layout}")
    assert len(calls) == dirs


def test_forward_ids_runs_the_module_where_the_table_does_not_apply():
    """Inference, unbatched ids and an Embedding with padding_idx take embedding(ids) and the
    module's usual path: exactly its result."""
    torch.manual_seed(0)
    lstm = FastLSTM(6, 10, 1, backend="cpu")
    padded = torch.nn.Embedding(7, 6, padding_idx=0)
    ids = torch.randint(0, 7, (8, 3))
    out, _ = lstm.forward_ids(ids, padded)
    assert torch.equal(out, lstm(padded(ids))[0])
    with torch.no_grad():
        assert torch.equal(lstm.forward_ids(ids, padded.weight)[0], lstm(padded(ids))[0])
    assert torch.equal(lstm.forward_ids(ids[:, 0], padded.weight)[0], lstm(padded(ids[:, 0]))[0])


def test_forward_ids_rejects_ids_out_of_range_as_embedding_does():
    lstm, emb = FastLSTM(6, 10, 1, backend="cpu"), torch.nn.Embedding(7, 6)
    for bad in (7, -1):
        ids = torch.zeros(8, 3, dtype=torch.int64)
        ids[2, 1] = bad
        with pytest.raises(IndexError, match="index out of range"):
            emb(ids)
        with pytest.raises(IndexError, match="index out of range"):
            lstm.forward_ids(ids, emb)


def test_train_opcheck():
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        _, (_, h0, c0, w_hh) = layer_inputs(5, 3, 20, dtype, seed=11)
        x, w_ih = randn(5, 3, 9, seed=1).to(dtype), randn(80, 9, seed=2).to(dtype)
        for bias in (randn(80, seed=3).to(dtype), None):
            for reverse in (False, True):
                args = [t.clone().requires_grad_() for t in (x, h0, c0, w_ih, w_hh)]
                b = None if bias is None else bias.clone().requires_grad_()
                torch.library.opcheck(torch.ops.fastlstm.lstm_layer_train.default,
                                      (*args, b, reverse))
                hs, cs, gates, h_n, c_n = torch.ops.fastlstm.lstm_layer_train(*args, b, reverse)
                for final in ((None, None), (torch.randn_like(h_n), torch.randn_like(c_n))):
                    torch.library.opcheck(
                        torch.ops.fastlstm.lstm_layer_train_backward.default,
                        (torch.randn_like(hs), torch.randn_like(cs), *final,
                         *[a.detach() for a in args], hs.detach(), cs.detach(), gates.detach(),
                         reverse))


def test_inference_opcheck():
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        _, (_, h0, c0, w_hh) = layer_inputs(4, 3, 20, dtype, seed=11)
        x, w_ih = randn(4, 3, 9, seed=1).to(dtype), randn(80, 9, seed=2).to(dtype)
        for bias in (randn(80, seed=3).to(dtype), None):
            for reverse in (False, True):
                torch.library.opcheck(torch.ops.fastlstm.lstm_layer_inference.default,
                                      (x, h0, c0, w_ih, w_hh, bias, reverse))


def test_bf16_opcheck():
    _, args = layer_inputs(4, 3, 20, torch.bfloat16, seed=12)
    args = [a.requires_grad_() for a in args]
    torch.library.opcheck(torch.ops.fastlstm.lstm_layer.default, (*args, False))
    hs, cs, gates = torch.ops.fastlstm.lstm_layer(*args, False)
    back = (torch.randn_like(hs), torch.randn_like(cs), *[a.detach() for a in args[1:]],
            hs.detach(), cs.detach(), gates.detach(), False)
    torch.library.opcheck(torch.ops.fastlstm.lstm_layer_backward.default, back)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_module_under_no_grad_runs_the_inference_op(dtype, monkeypatch):
    """FastLSTM without autograd takes lstm_layer_inference (nothing saved), with the outputs
    it gives with autograd (within the dtype's tolerance: the input projection is summed in
    fp32 inside the step, not rounded to the storage dtype first); with autograd it takes
    lstm_layer_train."""
    torch.manual_seed(0)
    lstm = FastLSTM(12, 40, 2, backend="cpu").to(dtype)
    x = randn(6, 5, 12, seed=13).to(dtype)
    calls = []
    for name in ("lstm_layer_train", "lstm_layer_inference"):
        op = getattr(torch.ops.fastlstm, name)
        monkeypatch.setattr(torch.ops.fastlstm, name,
                            lambda *a, _op=op, _n=name: calls.append(_n) or _op(*a))
    with torch.no_grad():
        out, (h, c) = lstm(x)
    assert calls == ["lstm_layer_inference"] * 2
    calls.clear()
    out_g, (h_g, c_g) = lstm(x)
    assert calls == ["lstm_layer_train"] * 2
    for got, want in ((out, out_g), (h, h_g), (c, c_g)):
        assert_close(got, want, TOLERANCE[dtype], f"{dtype} no_grad vs grad")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_inference_keeps_packed_weights_only_while_they_are_unchanged(dtype):
    """The inference op keeps what it packed for the tensor it was given: a second call
    reuses it, an in-place change of the weight (its version bumps) repacks, and a tensor
    with the same storage address but other values (a new tensor after the old one died)
    is never mistaken for the old one."""
    steps, batch, hidden, inputs = 6, 3, 48, 10
    _, (_, h0, c0, w_hh) = layer_inputs(steps, batch, hidden, dtype, seed=21)
    x = randn(steps, batch, inputs, seed=22).to(dtype)
    w_ih = randn(4 * hidden, inputs, seed=23, scale=inputs ** -0.5).to(dtype)

    def run(w_ih, w_hh):
        return torch.ops.fastlstm.lstm_layer_inference(x, h0, c0, w_ih, w_hh, None, False)[0]

    first = run(w_ih, w_hh)
    assert torch.equal(run(w_ih, w_hh), first)
    with torch.no_grad():
        w_hh.mul_(-1.0)
        w_ih.mul_(0.5)
    changed = run(w_ih, w_hh)
    assert torch.equal(changed, run(w_ih.clone(), w_hh.clone())), "repacked after the change"
    assert not torch.equal(changed, first)
    for _ in range(3):  # fresh tensors, freed each time: their addresses get reused
        w_new = randn(4 * hidden, hidden, seed=24 + _, scale=hidden ** -0.5).to(dtype)
        assert torch.equal(run(w_ih, w_new), run(w_ih, w_new.clone()))


def test_module_inference_after_an_optimizer_step_under_autocast():
    """FastLSTM keeps its autocast casts (and so the op its packs) across no_grad calls
    only until a parameter changes: after a training step the next no_grad forward equals a
    fresh copy's."""
    torch.manual_seed(3)
    lstm = FastLSTM(16, 64, 2, backend="cpu")
    x = randn(8, 4, 16, seed=25)
    opt = torch.optim.SGD(lstm.parameters(), lr=0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            before = lstm(x)[0]
            assert torch.equal(lstm(x)[0], before)
        out, _ = lstm(x)
        out.float().square().sum().backward()
        opt.step()
        with torch.no_grad():
            after = lstm(x)[0]
        fresh = FastLSTM(16, 64, 2, backend="cpu")
        fresh.load_state_dict(lstm.state_dict())
        with torch.no_grad():
            assert torch.equal(after, fresh(x)[0])
    assert not torch.equal(after, before)


def test_large_outputs_are_never_shared_while_alive():
    """Outputs of 1 MiB and more come from buffers kept across calls (layer.cpp): two live
    outputs never share one, and a buffer freed and handed out again holds the new result."""
    _, first = layer_inputs(50, 64, 128, torch.float32, seed=21)  # gates: 6.5 MB
    _, second = layer_inputs(50, 64, 128, torch.float32, seed=22)
    a = torch.ops.fastlstm.lstm_layer(*first, False)
    a_copy = [t.clone() for t in a]
    b = torch.ops.fastlstm.lstm_layer(*second, False)
    for x, y, z in zip(a, a_copy, b):
        assert torch.equal(x, y) and not torch.equal(x, z)
        assert x.data_ptr() != z.data_ptr()
    del a
    again = torch.ops.fastlstm.lstm_layer(*first, False)
    for x, y in zip(again, a_copy):
        assert torch.equal(x, y)


@pytest.mark.skipif(not _extension.cpu_fused(torch.float32), reason="no fused layer here")
def test_unknown_cpu_isa_is_an_error(monkeypatch):
    """FASTLSTM_CPU_ISA takes avx2 or avx512 (or nothing); a typo is an error, not a silent
    default."""
    monkeypatch.setenv("FASTLSTM_CPU_ISA", "avx3")
    _, args = layer_inputs(5, 2, 16, torch.float32, seed=1)
    with pytest.raises(RuntimeError, match="FASTLSTM_CPU_ISA must be avx2, avx512 or unset"):
        torch.ops.fastlstm.lstm_layer(*args, False)
