"""Where a bf16 LSTM's gradient error comes from: a CPU emulation (no GPU needed).

    python benchmarks/bf16_emulation.py [--seeds 6] [--bound 0.6] [--hidden 260]

Runs our layer algorithm (forward loop, reverse-time backward, grad_x through W_ih) in fp32
with a bf16 rounding switchable at each point where a bf16 kernel could round, and compares
grad_x with the float64 algorithm on the same bf16-rounded inputs. Rounding points:
  rec    h_{t-1} W_hh^T, the recurrent GEMM's product     (fp32 since 1ed3b1f)
  gates  the saved activated gates                         (fp32 since 1ed3b1f)
  dhr    grad_pre_{t+1} W_hh, the recurrent gradient       (fp32 since 1ed3b1f)
  gpre   grad_pre, the op's grad_xproj output              (bf16: the op's boundary)
  h      h_t, the layer output                             (bf16: the op's boundary)
  xp     x W_ih^T + b, the op's input                      (bf16: the op's boundary)
  gx     grad_x, the module's output gradient              (bf16: the module's boundary)
The shape is the test case wide_small_batch (2 layers, hidden 260, batch 2, seq 3, 11 inputs).
"""
import argparse

import torch

POINTS = ("rec", "gates", "dhr", "gpre", "h", "xp", "gx")


def rounded(x, on):
    return x.to(torch.bfloat16).to(x.dtype) if on else x


def layer_forward(xproj, h, c, w_hh, rnd):
    hs, cs, gates = [], [], []
    for t in range(xproj.shape[0]):
        pre = xproj[t] + rounded(h @ w_hh.t(), rnd["rec"])
        i, f, g, o = pre.chunk(4, 1)
        i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
        c = f * c + i * g
        h = rounded(o * c.tanh(), rnd["h"])
        gates.append(rounded(torch.cat([i, f, g, o], 1), rnd["gates"]))
        cs.append(c)
        hs.append(h)
    return torch.stack(hs), torch.stack(cs), torch.stack(gates)


def layer_backward(grad_hs, grad_cn, grad_hn, c0, w_hh, cs, gates, rnd):
    grad_h_rec, grad_c = grad_hn.clone(), grad_cn.clone()
    grad_pre = torch.zeros(*gates.shape, dtype=gates.dtype)
    for t in reversed(range(gates.shape[0])):
        i, f, g, o = gates[t].chunk(4, 1)
        c_prev = c0 if t == 0 else cs[t - 1]
        tanh_c = cs[t].tanh()
        dh = grad_hs[t] + grad_h_rec
        dc = grad_c + dh * o * (1 - tanh_c * tanh_c)
        grad_c = dc * f
        d = torch.cat([dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dc * i * (1 - g * g),
                       dh * tanh_c * o * (1 - o)], 1)
        grad_pre[t] = rounded(d, rnd["gpre"])
        grad_h_rec = rounded(grad_pre[t] @ w_hh, rnd["dhr"])
    return grad_pre


def grad_x(x, h0, c0, params, upstream, rnd):
    inp, saved = x, []
    for layer, (w_ih, w_hh, b) in enumerate(params):
        xproj = rounded(inp @ w_ih.t() + b, rnd["xp"])
        hs, cs, gates = layer_forward(xproj, h0[layer], c0[layer], w_hh, rnd)
        saved.append((inp, cs, gates))
        inp = hs
    grad_out, grad_hn, grad_cn = upstream
    grad = grad_out
    for layer in reversed(range(len(params))):
        w_ih, w_hh, _ = params[layer]
        inp, cs, gates = saved[layer]
        grad_pre = layer_backward(grad, grad_cn[layer], grad_hn[layer], c0[layer], w_hh, cs,
                                  gates, rnd)
        grad = rounded(grad_pre.reshape(-1, grad_pre.shape[-1]) @ w_ih, rnd["gx"])
        grad = grad.reshape(inp.shape)
    return grad


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--bound", type=float, default=0.6, help="weights uniform in +-bound")
    ap.add_argument("--hidden", type=int, default=260)
    args = ap.parse_args()
    layers, hidden, batch, seq, inputs = 2, args.hidden, 2, 3, 11
    settings = {"all (before 1ed3b1f)": set(POINTS),
                "boundaries only (now)": {"gpre", "h", "xp", "gx"},
                "h, xp, gx only": {"h", "xp", "gx"}}
    settings.update({f"{p} alone": {p} for p in POINTS})
    errors = {name: [] for name in settings}
    for seed in range(args.seeds):
        gen = torch.Generator().manual_seed(seed)

        def rand(*shape, uniform=False):
            t = torch.rand(*shape, generator=gen, dtype=torch.float64)
            t = (2 * t - 1) * args.bound if uniform else torch.randn(
                *shape, generator=gen, dtype=torch.float64)
            return t.to(torch.bfloat16).double()  # bf16 inputs, as the tests give them

        params = [tuple(rand(*s, uniform=True) for s in
                        ((4 * hidden, inputs if layer == 0 else hidden), (4 * hidden, hidden),
                         (4 * hidden,))) for layer in range(layers)]
        x, h0, c0 = rand(seq, batch, inputs), rand(layers, batch, hidden), rand(layers, batch,
                                                                                  hidden)
        upstream = (rand(seq, batch, hidden), rand(layers, batch, hidden),
                    rand(layers, batch, hidden))
        want = grad_x(x, h0, c0, params, upstream, dict.fromkeys(POINTS, False))
        fp32 = lambda t: t.float()  # noqa: E731
        for name, points in settings.items():
            got = grad_x(fp32(x), fp32(h0), fp32(c0), [tuple(map(fp32, p)) for p in params],
                         tuple(map(fp32, upstream)), {p: p in points for p in POINTS})
            errors[name].append(((got.double() - want).norm() / want.norm()).item())
    print(f"grad_x relative error, hidden {hidden}, weights +-{args.bound}, seeds 0-"
          f"{args.seeds - 1}; rounded to bf16 at:")
    for name, errs in errors.items():
        print(f"  {name:<24} " + " ".join(f"{e:.2e}" for e in errs))


if __name__ == "__main__":
    main()
