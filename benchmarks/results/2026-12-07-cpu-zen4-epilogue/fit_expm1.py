"""Degree-4 and -5 polynomials q with e^r - 1 = r q(r) on |r| <= ln2 / 2, relative error minimax
(Lawson reweighting of least squares); the float32 coefficients tanh_expm1.patch uses (degree 5)."""
import numpy as np
a = np.log(2)/2 * 1.0001
r = np.concatenate([np.cos(np.linspace(0, np.pi, 6001)) * a, np.linspace(-a, a, 6001)])
r = r[np.abs(r) > 1e-9]
f = np.expm1(r) / r
for deg in (4, 5):
    A = np.stack([r**k for k in range(0, deg+1)], 1)
    w = np.ones_like(r)
    for _ in range(100):
        W = w / f
        c, *_ = np.linalg.lstsq(A * W[:, None], f * W, rcond=None)
        err = np.abs(A @ c - f) / f
        w = w * (err / err.max()) ** 0.5 + 1e-15; w /= w.sum()
    print(deg, err.max(), repr([float(np.float32(x)) for x in c]))
