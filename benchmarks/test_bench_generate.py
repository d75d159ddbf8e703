"""Char-rnn generation side by side (pytest-benchmark): characters a second of
fastlstm.charrnn.model.generate against a plain nn.Embedding -> nn.LSTM -> nn.Linear loop with the
same weights, one character a call (backend "aten", the baseline compare.py divides by).

  pytest benchmarks/test_bench_generate.py --bench-device=cpu --benchmark-json=gen.json
  python benchmarks/compare.py gen.json        # times, ratios and chars/s

Backends: "fused_fp32" / "fused_bf16": generate on the fused CPU op (ops.generate) with its
products in fp32 / bf16; "fused_cuda": the op on CUDA (not yet run on a GPU; generate does
not use it yet); "loop": generate one step at a time through the model (what it did before
the op, and what it still does on CUDA); "aten": the plain loop.
"""
import pytest
import torch
from torch import nn

import fastlstm.charrnn.model as charrnn
from fastlstm import _extension
from fastlstm.charrnn.model import CharRNN, generate

# name: (layers, hidden, samples, characters per sample in one timed call)
SHAPES = {"2x128_b1": (2, 128, 1, 512), "2x512_b1": (2, 512, 1, 128),
          "2x256_n64": (2, 256, 64, 64)}
VOCAB, EMBED, TEMPERATURE = 65, 64, 0.8


def plain_loop(m: CharRNN):
    """nn.Embedding -> nn.LSTM -> nn.Linear with m's weights, sampled a character a call."""
    device = m.head.weight.device
    embed = nn.Embedding(VOCAB, EMBED, device=device)
    lstm = nn.LSTM(EMBED, m.lstm.hidden_size, m.lstm.num_layers, batch_first=True,
                   device=device)
    head = nn.Linear(m.lstm.hidden_size, VOCAB, device=device)
    embed.load_state_dict(m.embed.state_dict())
    lstm.load_state_dict(m.lstm.state_dict())
    head.load_state_dict(m.head.state_dict())

    @torch.no_grad()
    def run(prime, length, samples, gen):
        logits, state = None, None
        ids = prime.expand(samples, -1)
        out, state = lstm(embed(ids), state)
        logits = head(out[:, -1])
        drawn = []
        for _ in range(length):
            probs = torch.softmax(logits / TEMPERATURE, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=gen)
            drawn.append(nxt)
            out, state = lstm(embed(nxt), state)
            logits = head(out[:, -1])
        return torch.cat(drawn, 1)
    return run


@pytest.mark.parametrize("gen_backend", ["aten", "loop", "fused_fp32", "fused_bf16",
                                         "fused_cuda"])
@pytest.mark.parametrize("gen_shape", list(SHAPES))
def test_generate(benchmark, device, gen_shape, gen_backend, monkeypatch):
    backend = gen_backend
    layers, hidden, samples, length = SHAPES[gen_shape]
    if (backend == "fused_cuda") != (device == "cuda") and backend.startswith("fused"):
        pytest.skip(f"{backend} on {device}: not this device's op")
    if backend == "fused_cuda" and not _extension.cuda_compiled():
        pytest.skip("fused_cuda: built without CUDA")
    if backend in ("fused_fp32", "fused_bf16") and not _extension.cpu_fused(
            torch.bfloat16 if backend == "fused_bf16" else torch.float32):
        pytest.skip(f"{backend}: this CPU or build cannot run it")
    torch.manual_seed(0)
    m = CharRNN(VOCAB, hidden, layers, 0.0, EMBED).eval().to(device)
    prime = torch.tensor([[0]], device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    if backend == "aten":
        run = plain_loop(m)
        fn = lambda: run(prime, length, samples, gen)  # noqa: E731
    elif backend == "fused_cuda":
        fn = lambda: charrnn._generate_fused(  # noqa: E731
            m, prime.expand(samples, -1), length, TEMPERATURE, None, None, gen, None, False)
    else:
        if backend == "loop":
            monkeypatch.setattr(charrnn, "fused_generation", lambda *a, **k: None)
        precision = "bf16" if backend == "fused_bf16" else "fp32"
        fn = lambda: generate(m, prime[0], length, TEMPERATURE, num_samples=samples,  # noqa: E731
                              generator=gen, precision=precision)
    fn()  # warm: packed weights, oneDNN's primitives, the CUDA graph
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    timed = fn
    fn = lambda: (timed(), sync())[0]  # noqa: E731
    benchmark.group = f"generate {gen_shape}"
    benchmark.extra_info.update(backend=backend, chars=samples * length)
    out = benchmark(fn)
    assert out.shape == (samples, length)
