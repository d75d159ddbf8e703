"""fastlstm's CPU dropout (csrc/core/dropout.h, ops.dropout): what F.dropout computes, with a
mask that is a function of (seed, element index): the right fraction kept, exactly x / (1 - p)
where kept and 0 elsewhere, the same mask for the same seed on any number of threads,
independent masks for other seeds, its gradient the same mask."""
import math

import pytest
import torch

from fastlstm import _extension, ops

pytestmark = pytest.mark.skipif(not _extension.available(), reason="fastlstm._C not built")


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.9])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_kept_fraction_and_values(p, dtype):
    x = torch.randn(1000, 1000).to(dtype) + 3.0  # no zeros: a zero output means dropped
    y = torch.ops.fastlstm.dropout(x, p, 12345)
    kept = y != 0
    n = x.numel()
    # Binomial(n, 1 - p): 6 standard deviations.
    assert abs(kept.sum().item() - n * (1 - p)) < 6 * math.sqrt(n * p * (1 - p))
    acc = torch.float64 if dtype == torch.float64 else torch.float32  # as F.dropout: x * scale
    want = (x.to(acc) * torch.tensor(1 / (1 - p), dtype=acc)).to(dtype)
    assert torch.equal(y[kept], want[kept])
    assert y.dtype == dtype and y.shape == x.shape


def test_same_seed_same_mask_on_any_threads_other_seeds_independent():
    x = torch.ones(300, 1001)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.fastlstm.dropout(x, 0.5, 7)
        torch.set_num_threads(2)
        two = torch.ops.fastlstm.dropout(x, 0.5, 7)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one, two)
    a = (torch.ops.fastlstm.dropout(x, 0.5, 8) != 0).double().flatten()
    b = (one != 0).double().flatten()
    corr = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
    assert abs(corr) < 0.01, "masks of neighbouring seeds are independent"
    # Neighbouring elements too (a weak counter hash would correlate them).
    adjacent = torch.corrcoef(torch.stack([b[:-1], b[1:]]))[0, 1].item()
    assert abs(adjacent) < 0.01


@pytest.mark.parametrize("numel", [1, 15, 17, 1000, 65536 * 3 + 5])
def test_every_dtype_draws_the_same_mask(numel, threads):
    """float64 runs the portable loop; float32 and bfloat16 the AVX-512 one where the CPU
    has it (16 elements a step, the rest by the portable loop): one mask for all."""
    x = torch.ones(numel, dtype=torch.float64)
    for seed in (0, 7, 2 ** 61 + 12345):
        want = torch.ops.fastlstm.dropout(x, 0.3, seed) != 0
        for dtype in (torch.float32, torch.bfloat16):
            got = torch.ops.fastlstm.dropout(x.to(dtype), 0.3, seed) != 0
            assert torch.equal(got, want), (dtype, seed)


def test_ops_dropout_follows_torch_seed_and_training_flag():
    x = torch.randn(64, 100)
    torch.manual_seed(3)
    first = ops.dropout(x, 0.2)
    torch.manual_seed(3)
    assert torch.equal(ops.dropout(x, 0.2), first)
    assert not torch.equal(ops.dropout(x, 0.2), first), "the next call draws a new mask"
    assert ops.dropout(x, 0.2, training=False) is x
    assert ops.dropout(x, 0.0) is x
    assert torch.equal(ops.dropout(x, 1.0), torch.zeros_like(x))


def test_gradient_is_the_same_mask():
    x = torch.randn(20, 30, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: torch.ops.fastlstm.dropout(t, 0.4, 99), (x,))
    y = torch.ops.fastlstm.dropout(x, 0.4, 99)
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(g, (y != 0).double() / 0.6)
    torch.library.opcheck(torch.ops.fastlstm.dropout.default, (x, 0.4, 99))


def test_rejects_p_outside_0_1():
    with pytest.raises(RuntimeError, match=r"p must be in \[0, 1\)"):
        torch.ops.fastlstm.dropout(torch.ones(3), 1.0, 0)


def test_fastlstm_counter_masks_between_layers():
    """dropout_masks="counter": the between-layer dropout through ops.dropout (reproducible
    under torch.manual_seed, other masks than "torch"'s); without dropout or in eval mode
    the two are the same module."""
    from fastlstm import FastLSTM
    torch.manual_seed(0)
    a = FastLSTM(8, 32, 3, dropout=0.5, backend="cpu")
    b = FastLSTM(8, 32, 3, dropout=0.5, backend="cpu", dropout_masks="counter")
    b.load_state_dict(a.state_dict())
    x = torch.randn(6, 4, 8)
    torch.manual_seed(1)
    out_b = b(x)[0]
    torch.manual_seed(1)
    assert torch.equal(b(x)[0], out_b)
    torch.manual_seed(1)
    assert not torch.equal(a(x)[0], out_b)
    a.eval(), b.eval()
    assert torch.equal(a(x)[0], b(x)[0])
    assert "dropout_masks='counter'" in repr(b)
    with pytest.raises(ValueError, match="dropout_masks"):
        FastLSTM(8, 32, 2, dropout_masks="fast")


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_counter_masks_are_the_same_on_torchs_path(monkeypatch, bidirectional, batch_first):
    """dropout_masks="counter" where auto hands a shape to torch's LSTM: layer by layer with
    the same counter masks as our op's path, so outputs, states and gradients agree."""
    from fastlstm import FastLSTM, module
    monkeypatch.setattr(module, "_cpu_auto_fused", lambda *args: False)  # auto: torch's LSTM
    torch.manual_seed(0)
    kw = dict(dropout=0.5, dropout_masks="counter", bidirectional=bidirectional,
              batch_first=batch_first)
    ours, torchs = FastLSTM(8, 32, 3, backend="cpu", **kw), FastLSTM(8, 32, 3, backend="auto", **kw)
    torchs.load_state_dict(ours.state_dict())
    x = torch.randn(6, 4, 8, requires_grad=True)
    results = []
    for m in (ours, torchs):
        torch.manual_seed(1)
        out, (h, c) = m(x)
        grads = torch.autograd.grad(out.sum() + h.sum() + c.sum(), [x, *m.parameters()])
        results.append((out, h, c, *grads))
    for a, b in zip(*results):
        assert (a - b).norm() <= 1e-5 * b.norm()
    torch.manual_seed(1)  # backend="aten" stays torch's LSTM, its own masks included
    plain = FastLSTM(8, 32, 3, backend="aten", **kw)
    plain.load_state_dict(ours.state_dict())
    assert not torch.allclose(plain(x)[0], results[1][0])
