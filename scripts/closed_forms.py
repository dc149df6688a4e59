"""The homework's closed-form numbers, recomputed (issue 13): python scripts/closed_forms.py

HW6 Q1(a) SVD, the final's Q10(a) losses and Q10(c) lambda range, the instance-noise recurrence (Problem 1) and
HW6 Q3(a)'s two backprop steps by hand. The trainer's side of each check is in tests/test_linear.py.
"""
from __future__ import annotations

import argparse
import math

import torch

from zoo.data import create_data
from zoo.errors import script_main
from zoo.models.linear import LinearPurifier, pca, purifier_optimum


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # no options: --help, or a usage error
    x = create_data("homework", problem="hw6_q1a").tensors("train")[0]
    p, c = pca(x, 2, center=False), pca(x, 1, center=True)
    print("HW6 Q1(a) A = [[5, 1, 1], [1, 5, -1]]")
    print(f"  singular values {p.singular_values.tolist()} (6 and 3 sqrt 2 = {3 * math.sqrt(2):.6f})")
    print(f"  right singular vectors {p.components.tolist()}  ((1, 1, 0)/sqrt 2 and (2, -2, 1)/3, up to sign)")
    print(f"  centred: singular values {c.singular_values.tolist()}, component {c.components[0].tolist()}")

    x = create_data("homework", problem="final_q10a").tensors("train")[0]
    alpha, beta = LinearPurifier((2,), init="identity"), LinearPurifier((2,), init="zeros")
    with torch.no_grad():
        beta.weight[0, 0] = 1.0
    la, lb = alpha.losses(x), beta.losses(x)
    print("Q10(a) reconstruction / regularization loss")
    print(f"  alpha = I:           {la['reconstruction']:.6f} / {la['regularization']:.6f}")
    print(f"  beta = diag(1, 0):   {lb['reconstruction']:.6f} / {lb['regularization']:.6f}")
    lam = (lb["reconstruction"] - la["reconstruction"]) / (la["regularization"] - lb["regularization"])
    print(f"  beta wins for lambda > {lam:.6f}")

    x = create_data("spectrum").tensors("train")[0]
    grid = [i / 100 for i in range(601)]
    gains = {lam: purifier_optimum(x, lam)[2] for lam in grid}
    ok = [lam for lam, g in gains.items() if g[:3].min() >= 0.8 - 1e-6 and g[3:].max() <= 0.5 + 1e-6]
    print(f"Q10(c) s = {torch.linalg.svdvals(x).tolist()}")
    print(f"  gains >= 0.8 on directions 1-3 and <= 0.5 after: lambda in [{min(ok)}, {max(ok)}] (grid step 0.01)")

    xs, ys, sigma, eta = 1.0, 3.0, 0.5, 0.5
    w, ws = 0.0, []
    for _ in range(8):
        w = w * (1 - eta * (xs ** 2 + sigma ** 2)) + eta * ys * xs
        ws.append(round(w, 4))
    print(f"Instance noise, x = {xs}, y = {ys}, sigma = {sigma}, eta = {eta}: E[w_t] = {ws} ...")
    print(f"  converges for 0 < eta < 2/(x^2 + sigma^2) = {2 / (xs ** 2 + sigma ** 2)} to yx/(x^2 + sigma^2) = "
          f"{ys * xs / (xs ** 2 + sigma ** 2)} (no noise: y/x = {ys / xs})")

    print("HW6 Q3(a): z = w0 + w1 x1 + w2 x2, y_hat = h0 + h1 relu(z), L = (y_hat - y)^2, lr 0.05")
    w, h = [1.0, 1.0, 1.0], [1.0, 1.0]
    for step, (x1, x2, y) in enumerate([(0.0, 1.0, 1.0), (1.0, 0.0, 0.0)], 1):
        z = w[0] + w[1] * x1 + w[2] * x2
        a = max(z, 0.0)
        y_hat = h[0] + h[1] * a
        dy = 2 * (y_hat - y)
        dz = dy * h[1] * (z > 0)
        gw, gh = [dz, dz * x1, dz * x2], [dy, dy * a]
        w = [wi - 0.05 * g for wi, g in zip(w, gw)]
        h = [hi - 0.05 * g for hi, g in zip(h, gh)]
        print(f"  step {step}: loss {(y_hat - y) ** 2:.4f}, grad w {[round(g, 4) for g in gw]}, "
              f"grad h {[round(g, 4) for g in gh]} -> w {[round(v, 4) for v in w]}, h {[round(v, 4) for v in h]}")


if __name__ == "__main__":
    script_main(main)
