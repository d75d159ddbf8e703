# Fit tanh(x) ~ x P(x^2) / Q(x^2) on [0, X] (Lawson-weighted linearized least squares toward
# minimax relative error), then check in float32 over a dense grid.
import numpy as np, sys
np_, nq, X = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
x = np.concatenate([np.linspace(1e-6, 1, 20000), np.linspace(1, X, 40000)])
t = np.tanh(x); s = x * x
A = np.concatenate([x[:, None] * s[:, None] ** np.arange(np_), -(t[:, None]) * s[:, None] ** np.arange(1, nq + 1)], 1)
b = t.copy()  # q0 = 1: x P(s) - t (q1 s + ...) = t
w = np.ones_like(x)
for it in range(200):
    W = w / t
    c, *_ = np.linalg.lstsq(A * W[:, None], b * W, rcond=None)
    p, q = c[:np_], np.concatenate([[1.0], c[np_:]])
    approx = x * np.polyval(p[::-1], s) / np.polyval(q[::-1], s)
    err = np.abs(approx / t - 1)
    w = w * (err / err.max()) ** 0.5 + 1e-12
    w /= w.max()
print("max rel err (float64 eval):", err.max())
print("p =", [float(v) for v in p]); print("q =", [float(v) for v in q])
# float32 evaluation (Horner, fma-free numpy float32) over a dense grid including tails
xs = np.concatenate([np.linspace(-X, X, 2_000_001, dtype=np.float32), np.float32(10.0) ** np.arange(-30, 0, dtype=np.float32)])
xc = np.clip(xs, np.float32(-X), np.float32(X)); s32 = xc * xc
P = np.float32(p[-1])
for v in p[-2::-1]: P = P * s32 + np.float32(v)
Q = np.float32(q[-1])
for v in q[-2::-1]: Q = Q * s32 + np.float32(v)
y = xc * P / Q
ref = np.tanh(xs.astype(np.float64))
rel = np.abs(y.astype(np.float64) - ref) / np.maximum(np.abs(ref), 1e-38)
print("float32 eval: max rel err", rel.max(), " at x =", xs[rel.argmax()], " |y| > 1:", (np.abs(y) > 1).sum())
