"""The fused generation op (fastlstm::generate, CPU) and fastlstm.charrnn.model.generate on it:
teacher-forced logits against the float64 oracle, argmax text against the per-character
loop, the sampling distribution (chi-square), reproducibility, chunking, bad arguments."""
import math
import re

import pytest
import torch

import fastlstm.charrnn.model as charrnn
from fastlstm import _extension, ops
from fastlstm.charrnn.model import CharRNN, generate, next_ids
from helpers import assert_close

pytestmark = pytest.mark.skipif(not _extension.cpu_generate(torch.float32),
                                reason="the fused generation op needs the extension on an "
                                "x86-64 CPU with AVX-512")
BF16 = pytest.mark.skipif(not _extension.cpu_generate(torch.bfloat16),
                          reason="this CPU has no AVX512-BF16")
SPLITS = ("none", "rows", "units")  # FASTLSTM_GENERATE_SPLIT: how the threads share a step


def model(vocab, hidden, layers, embed=16, scale=None, seed=0):
    torch.manual_seed(seed)
    m = CharRNN(vocab, hidden, layers, 0.0, embed).eval()
    if scale is not None:  # larger weights: a livelier argmax text than the default init's
        with torch.no_grad():
            for p in m.parameters():
                p.uniform_(-scale, scale)
    return m


def op_args(m):
    return charrnn._op_weights(m)


def oracle_logits(m, ids):
    """The float64 oracle's logits [N, S, V] for ids [N, S]: the model in float64 through
    fastlstm.reference."""
    ref = CharRNN(**m.config, backend="reference").double().eval()
    ref.load_state_dict(m.state_dict())
    with torch.no_grad():
        return ref(ids)[0]


def prime_state(m, ids):
    """Logits and state after ids[:, :1], from the model's own forward."""
    with torch.no_grad():
        logits, (h, c) = m(ids[:, :1])
    return logits[:, -1].contiguous(), h, c


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("vocab,hidden,layers,samples", [
    (50, 37, 1, 1), (65, 128, 2, 3), (20, 70, 3, 7), (33, 16, 2, 9)])
def test_teacher_forced_logits_match_the_oracle(vocab, hidden, layers, samples, split,
                                                monkeypatch):
    monkeypatch.setenv("FASTLSTM_GENERATE_SPLIT", split)
    m = model(vocab, hidden, layers, scale=0.3)
    ids = torch.randint(vocab, (samples, 24), generator=torch.Generator().manual_seed(1))
    ref = oracle_logits(m, ids)
    logits, h, c = prime_state(m, ids)
    logits.fill_(float("nan"))  # forced ids: the logits in are never read
    # One step a call: every position's logits.
    for s in range(1, ids.size(1)):
        out, logits, h, c = ops.generate(logits, h, c, *op_args(m), 1,
                                         forced=ids[:, s:s + 1].contiguous())
        assert torch.equal(out, ids[:, s:s + 1])
        assert_close(logits, ref[:, s], 1e-5, f"logits after position {s}")
    # All steps in one call: the final logits and state.
    logits0, h0, c0 = prime_state(m, ids)
    out, last, h1, c1 = ops.generate(logits0, h0, c0, *op_args(m), ids.size(1) - 1,
                                     forced=ids[:, 1:].contiguous())
    assert torch.equal(out, ids[:, 1:])
    assert_close(last, ref[:, -1], 1e-5, "logits after one call")
    with torch.no_grad():
        _, (h_ref, c_ref) = m(ids)
    assert_close(h1, h_ref, 1e-5, "h")
    assert_close(c1, c_ref, 1e-5, "c")


def test_without_biases():
    """Empty bias lists and no decoder bias: the same as the model with its biases zeroed."""
    m = model(30, 40, 2, scale=0.3)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "bias" in name:
                p.zero_()
    ids = torch.randint(30, (3, 12), generator=torch.Generator().manual_seed(4))
    ref = oracle_logits(m, ids)
    embed, w_ih, w_hh, _, _, head_w, _ = op_args(m)
    logits, h, c = prime_state(m, ids)
    _, last, _, _ = ops.generate(logits, h, c, embed, w_ih, w_hh, [], [], head_w, None,
                                 ids.size(1) - 1, forced=ids[:, 1:].contiguous())
    assert_close(last, ref[:, -1], 1e-5, "no biases")


@BF16
@pytest.mark.parametrize("split", SPLITS)
def test_teacher_forced_logits_in_bf16(split, monkeypatch):
    monkeypatch.setenv("FASTLSTM_GENERATE_SPLIT", split)
    m = model(65, 96, 2, scale=0.15)
    ids = torch.randint(65, (5, 40), generator=torch.Generator().manual_seed(2))
    ref = oracle_logits(m, ids)
    logits, h, c = prime_state(m, ids)
    _, last, _, _ = ops.generate(logits, h, c, *op_args(m), ids.size(1) - 1,
                                 forced=ids[:, 1:].contiguous(), bf16=True)
    assert_close(last, ref[:, -1], 1e-2, "bf16 logits")


@pytest.fixture(scope="module")
def trained():
    """A small char-rnn trained for a moment on a patterned text: its argmax text is varied
    but not chaotic (random weights large enough to vary amplify rounding within a few
    hundred characters, and the two paths round differently)."""
    text = "".join(f"{i} the quick brown fox jumps over the lazy dog; {i * 7 % 13} times.\n"
                   for i in range(400))
    symbols = sorted(set(text))
    data = torch.tensor([symbols.index(ch) for ch in text])
    torch.manual_seed(0)
    m = CharRNN(len(symbols), 96, 3, 0.0, 16)
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    for step in range(120):
        starts = torch.randint(len(data) - 65, (16,))
        batch = torch.stack([data[k:k + 65] for k in starts])
        logits, _ = m(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval(), data


@pytest.mark.parametrize("samples", [1, 4])
def test_argmax_text_equals_the_loop(trained, samples, monkeypatch):
    m, data = trained
    prime = data[:7]
    fused = generate(m, prime, 400, temperature=0, num_samples=samples, precision="fp32")
    monkeypatch.setattr(charrnn, "fused_generation", lambda *a, **k: None)
    loop = generate(m, prime, 400, temperature=0, num_samples=samples)
    assert len(set(loop[0].tolist())) > 10, "a livelier model: this text proves little"
    assert torch.equal(fused, loop)


def chi_square_limit(df, z=3.719):
    """The chi-square statistic exceeded with probability ~1e-4 (Wilson-Hilferty)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def expected_probs(logits, temperature, top_k=None, top_p=None):
    """softmax(logits / T) restricted by top_k then top_p, in float64, written out plainly."""
    z = logits.double() / temperature
    if top_k is not None:
        kth = z.sort(descending=True).values[top_k - 1]
        z = z.masked_fill(z < kth, -math.inf)
    p = torch.softmax(z, 0)
    if top_p is not None:
        order = sorted(range(len(p)), key=lambda v: (-p[v].item(), v))
        before, keep = 0.0, []
        for v in order:
            if keep and before >= top_p:
                break
            keep.append(v)
            before += p[v].item()
        mask = torch.zeros_like(p, dtype=torch.bool)
        mask[keep] = True
        p = torch.where(mask, p, 0.0)
    return p / p.sum()


def chi_square(counts, probs):
    """(statistic, df) over the ids with probability > 0; inf if any other id was drawn."""
    if counts[probs == 0].sum() > 0:
        return math.inf, 1
    kept = probs > 0
    expected = probs[kept] * counts.sum()
    return float(((counts[kept] - expected) ** 2 / expected).sum()), int(kept.sum()) - 1


def op_draws(logits, temperature, top_k, top_p, draws=20000, seed=7):
    """`draws` ids drawn from the same logits: one sample a draw (each its own counter)."""
    V, H = logits.numel(), 8
    m = model(V, H, 1)
    rows = logits.expand(draws, V).contiguous()
    h = torch.zeros(1, draws, H)
    ids, *_ = ops.generate(rows, h, h.clone(), *op_args(m), 1, temperature, top_k,
                           1.0 if top_p is None else top_p, seed)
    return torch.bincount(ids[:, 0], minlength=V).double()


SAMPLING = [(1.0, None, None), (0.7, None, None), (1.3, 5, None), (1.0, None, 0.8),
            (0.8, 8, 0.6)]


@pytest.mark.parametrize("temperature,top_k,top_p", SAMPLING)
def test_draws_follow_the_distribution(temperature, top_k, top_p):
    logits = torch.randn(12, generator=torch.Generator().manual_seed(3)) * 1.5
    counts = op_draws(logits, temperature, top_k, top_p)
    stat, df = chi_square(counts, expected_probs(logits, temperature, top_k, top_p))
    assert stat < chi_square_limit(df), f"chi-square {stat:.1f} with {df} degrees of freedom"
    # The Python loop's sampler (CUDA generation) follows the same rule.
    gen = torch.Generator().manual_seed(11)
    loop = next_ids(logits.expand(20000, -1), temperature, top_k, gen, top_p)
    stat, df = chi_square(torch.bincount(loop, minlength=12).double(),
                          expected_probs(logits, temperature, top_k, top_p))
    assert stat < chi_square_limit(df), f"loop: chi-square {stat:.1f}, {df} dof"


@pytest.mark.parametrize("wrong", ["temperature", "top_k", "top_p"])
def test_the_chi_square_test_catches_a_wrong_distribution(wrong):
    """The same check, fed draws made with another temperature, top_k or top_p than the
    expected distribution's, rejects them: the test above can fail."""
    logits = torch.randn(12, generator=torch.Generator().manual_seed(3)) * 1.5
    right = dict(temperature=1.0, top_k=6, top_p=0.9)
    drawn = dict(right)
    drawn[wrong] = {"temperature": 1.15, "top_k": 7, "top_p": 0.8}[wrong]
    counts = op_draws(logits, drawn["temperature"], drawn["top_k"], drawn["top_p"])
    stat, df = chi_square(counts, expected_probs(logits, **right))
    assert stat > chi_square_limit(df)


def test_same_seed_same_text_and_chunks_do_not_matter(monkeypatch):
    m = model(30, 48, 2, scale=0.3)
    prime = torch.tensor([1, 2])

    def text(seed, chunk=64, precision="fp32"):
        monkeypatch.setattr(charrnn, "CHUNK", chunk)
        return generate(m, prime, 150, 0.9, top_k=10, top_p=0.95, num_samples=3,
                        generator=torch.Generator().manual_seed(seed), precision=precision)

    a = text(1)
    assert torch.equal(a, text(1)) and torch.equal(a, text(1, chunk=7))
    assert torch.equal(a, text(1, chunk=1)) and torch.equal(a, text(1, chunk=150))
    assert not torch.equal(a, text(2))
    assert not torch.equal(a[0], a[1]), "each sample draws its own"
    # torch.manual_seed makes the default generator's draws reproducible too.
    torch.manual_seed(5)
    b = generate(m, prime, 50, 1.0, precision="fp32")
    torch.manual_seed(5)
    assert torch.equal(b, generate(m, prime, 50, 1.0, precision="fp32"))


def test_on_ids_streams_every_step():
    m = model(20, 16, 2)
    seen = []
    out = generate(m, torch.tensor([0]), 100, 0.8, num_samples=2, on_ids=seen.append,
                   generator=torch.Generator().manual_seed(0))
    assert len(seen) == 100 and torch.equal(torch.stack(seen, 1), out)
    assert generate(m, torch.tensor([0]), 0).shape == (1, 0)


def test_bad_arguments_say_what_is_wrong():
    m = model(20, 16, 2)
    logits, h, c = prime_state(m, torch.zeros(2, 1, dtype=torch.long))

    def call(steps=3, **kw):
        return ops.generate(logits, h, c, *op_args(m), steps, **kw)
    for kw, message in [({"temperature": -1.0}, "temperature must be finite and >= 0"),
                        ({"temperature": math.nan}, "temperature must be finite"),
                        ({"top_p": 0.0}, "top_p must be in (0, 1]"),
                        ({"top_p": 1.5}, "top_p must be in (0, 1]"),
                        ({"top_k": 0}, "top_k must be >= 1"),
                        ({"steps": -1}, "steps must be >= 0"),
                        ({"forced": torch.full((2, 3), 20)}, "forced ids must be in [0, 20)"),
                        ({"forced": torch.zeros(2, 4, dtype=torch.long)},
                         "forced must be int64 [2, 3]")]:
        with pytest.raises(RuntimeError, match=re.escape(message)):
            call(**kw)
    with pytest.raises(RuntimeError, match=r"h and c must be \[layers, samples, hidden\]"):
        ops.generate(logits, h[:1], c[:1], *op_args(m), 3)
    with pytest.raises(RuntimeError, match="float32 tensors on one device only"):
        ops.generate(logits.double(), h, c, *op_args(m), 3)
    with pytest.raises(ValueError, match="prime_ids must be 1-D and not empty"):
        generate(m, torch.tensor([], dtype=torch.long), 5)
    for kw, message in [({"temperature": -0.5}, "temperature must be >= 0"),
                        ({"top_k": 0}, "top_k must be >= 1"),
                        ({"top_p": 1.2}, r"top_p must be in \(0, 1\]"),
                        ({"precision": "fp16"}, "precision must be one of")]:
        with pytest.raises(ValueError, match=message):
            generate(m, torch.tensor([0]), 5, **kw)


def test_the_loop_runs_where_the_op_does_not():
    """float64 parameters: the per-character loop (and top_p there too)."""
    m = model(20, 16, 2).double()
    assert charrnn.fused_generation(m) is None
    out = generate(m, torch.tensor([0]), 20, 0.8, top_p=0.5,
                   generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 20)


def test_opcheck():
    m = model(11, 20, 2)
    logits, h, c = prime_state(m, torch.zeros(3, 1, dtype=torch.long))
    w = op_args(m)
    torch.library.opcheck(torch.ops.fastlstm.generate.default,
                          (logits, h, c, w[0], w[1], w[2], w[3], w[4], w[5], w[6], 5, 0.8, 4,
                           0.9, 123, 0, None, False),
                          test_utils=("test_schema", "test_faketensor"))
