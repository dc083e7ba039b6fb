"""Benchmark of the fused GMM kernel (hgad_edge._C) against the official formula and BLAS.

Per (N, C, K, D) it times, on the CPU:

* ``fused``      the native kernel as the detector calls it: inter part over the C main centers
                 plus the intra part of the routed class only (C + K centers per position);
* ``fused-all``  the native kernel computing logp of *every* class (C + C·K centers): the
                 apples-to-apples row against the two below;
* ``official``   the official HGAD formula in torch, materialising the (N, K, D) differences of
                 every class, then logsumexp, plus the inter part (C + C·K centers);
* ``blas``       the BLAS expansion in numpy, ||z||² − 2 z μᵀ + ||μ||² for all C + C·K centers,
                 then the log-sum-exps.

GFLOP/s count 2·N·M·D (one multiply-add per position, center and dim: the GEMM convention,
M = the centers that method evaluates), so they compare with the SGEMM peak this script
measures with a large numpy matmul.

    python benchmarks/gmm_kernel.py            # the full grid (several minutes)
    python benchmarks/gmm_kernel.py --quick    # a subset including the target point
    python benchmarks/gmm_kernel.py --threads 1  # every method on one core (a shared, loaded box)
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import time


import _threads  # noqa: E402,F401  (applies --threads before numpy/torch load)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from hgad_edge import gmm as G  # noqa: E402

TARGET = (1344, 15, 10, 112)


def sgemm_peak(n: int = 2048, reps: int = 5) -> float:
    """Best GFLOP/s of an n×n×n float32 numpy matmul on this machine."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b = a.T.copy()
    a @ b
    best = min(_once(lambda: a @ b) for _ in range(reps))
    return 2.0 * n ** 3 / best / 1e9


def _once(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def timeit(fn, budget_s: float, min_reps: int = 5, max_reps: int = 300):
    """(median, p99) seconds over repetitions filling about ``budget_s``."""
    fn()  # warm-up
    first = _once(fn)
    reps = int(min(max_reps, max(min_reps, budget_s / max(first, 1e-7))))
    ts = np.array([first] + [_once(fn) for _ in range(reps - 1)])
    return float(np.median(ts)), float(np.percentile(ts, 99))


def make(n, c, k, d, seed=0):
    rng = np.random.default_rng(seed)
    mu = (rng.standard_normal((c, d)) * 3).astype(np.float32)  # (C, D)
    mu_intra = (mu[:, None] + rng.standard_normal((c, k, d))).astype(np.float32)  # (C, K, D)
    mu_intra[:, 0] = mu
    a, b = rng.standard_normal(c), rng.standard_normal((c, k))
    lpi = (a - np.log(np.exp(a).sum())).astype(np.float32)  # (C,)
    lpk = (b - np.log(np.exp(b).sum(1, keepdims=True))).astype(np.float32)  # (C, K)
    z = (mu[rng.integers(0, c, n)] + rng.standard_normal((n, d))).astype(np.float32)  # (N, D)
    logdet = rng.standard_normal(n).astype(np.float32)  # (N,)
    return dict(mu=mu, log_pi_inter=lpi, mu_intra=mu_intra, log_pi_intra=lpk), z, logdet


def official_torch(p, z, logdet):
    """The official formula: (N, K, D) differences for every class, logsumexp; inter likewise."""
    z_t = torch.from_numpy(z)  # (N, D)
    mu, lpi = torch.from_numpy(p["mu"]), torch.from_numpy(p["log_pi_inter"])
    mi, lpk = torch.from_numpy(p["mu_intra"]), torch.from_numpy(p["log_pi_intra"])
    ld = torch.from_numpy(logdet)
    dim = z.shape[1]
    with torch.no_grad():
        logits = -0.5 * ((z_t[:, None, :] - mu[None]) ** 2).sum(-1) + lpi  # (N, C)
        logq = torch.log_softmax(logits, dim=1)  # (N, C)
        entropy = -(logq.exp() * logq).sum(1)  # (N,)
        mean = logq.exp().mean(0)  # (C,)
        logp = []
        for c in range(mu.shape[0]):
            d = ((z_t[:, None, :] - mi[c][None]) ** 2).sum(-1)  # (N, K)
            lse = torch.logsumexp(-0.5 * d + lpk[c], dim=1)  # (N,)
            logp.append((-0.5 * G.LOG_2PI * dim + lse + ld) / dim)
        return torch.stack(logp, 1), entropy, mean  # (N, C), (N,), (C,)


class BlasExpansion:
    """||z||² − 2 z μᵀ + ||μ||² over all C + C·K centers in one SGEMM, then log-sum-exps."""

    def __init__(self, p):
        c, k, d = p["mu_intra"].shape
        self.c, self.k = c, k
        self.centers = np.concatenate([p["mu"], p["mu_intra"].reshape(c * k, d)])  # (C + C·K, D)
        self.centers_t = np.ascontiguousarray(self.centers.T)  # (D, M)
        self.sq = np.einsum("md,md->m", self.centers, self.centers)  # (M,)
        self.log_w = np.concatenate([p["log_pi_inter"], p["log_pi_intra"].reshape(-1)])  # (M,)
        self.const = -0.5 * G.LOG_2PI * d

    def __call__(self, z, logdet):
        n, d = z.shape
        zsq = np.einsum("nd,nd->n", z, z)  # (N,)
        x = z @ self.centers_t  # (N, M)
        x *= -2.0
        x += zsq[:, None]
        x += self.sq[None]
        x *= -0.5
        x += self.log_w[None]  # (N, M) logits
        inter = x[:, :self.c]  # (N, C)
        m = inter.max(1, keepdims=True)
        e = np.exp(inter - m)  # (N, C)
        s = e.sum(1, keepdims=True)
        p = e / s  # (N, C)
        entropy = np.log(s[:, 0]) - np.einsum("nc,nc->n", p, inter - m)  # (N,)
        mean = p.mean(0)  # (C,)
        intra = x[:, self.c:].reshape(n, self.c, self.k)  # (N, C, K)
        mk = intra.max(2, keepdims=True)
        lse = np.log(np.exp(intra - mk).sum(2)) + mk[..., 0]  # (N, C)
        return (self.const + lse + logdet[:, None]) / d, entropy, mean


def run_point(n, c, k, d, budget):
    p, z, ld = make(n, c, k, d)
    g = G.GaussianMixture(**p, backend="native" if G.has_native() else "numpy")
    blas = BlasExpansion(p)
    routed = g.fused(z, ld).class_index
    res = {
        "fused": timeit(lambda: g.fused(z, ld, routed), budget),
        "fused-all": timeit(lambda: g.fused_all(z, ld), budget),
        "official": timeit(lambda: official_torch(p, z, ld), budget, min_reps=3),
        "blas": timeit(lambda: blas(z, ld), budget),
    }
    # the three all-class variants agree (a benchmark of wrong numbers is worthless)
    ref_logp, ref_ent, _ = official_torch(p, z, ld)
    np.testing.assert_allclose(g.intra_all(z, ld), ref_logp.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(blas(z, ld)[0], ref_logp.numpy(), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(g.fused(z, ld, routed).entropy, ref_ent.numpy(), rtol=1e-3, atol=1e-4)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a subset of the grid (includes the target point)")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for every method (OpenMP, OpenBLAS, torch); default: each library's own")
    ap.add_argument("--budget", type=float, default=0.3, help="seconds of repetitions per method and point")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.quick:
        grid = [(256, 6, 10, 112), TARGET, (1344, 40, 10, 112), (1344, 15, 1, 272), (4096, 15, 10, 272)]
    else:
        grid = list(itertools.product((256, 1344, 4096, 16384), (1, 6, 15, 40), (1, 10), (112, 272)))
    peak = sgemm_peak()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"hgad_edge GMM kernel benchmark — backend {'native' if G.has_native() else 'numpy (no _C!)'}, "
          f"OpenMP threads {G._C.cpu_threads() if G.has_native() else '-'}, torch threads "
          f"{torch.get_num_threads()}, OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '-')}, "
          f"load average {load:.1f}")
    print(f"measured SGEMM peak (numpy 2048³ float32): {peak:.1f} GFLOP/s")
    print("times: median / p99 in µs. 'fused' evaluates only the routed class (C + K centers per position);")
    print("'fused-all', 'official' and 'blas' evaluate every class (C + C·K centers): 'fused-all' is the")
    print("apples-to-apples row. GFLOP/s = 2·N·M·D / median with M = centers that method evaluates.")
    head = (f"{'N':>6} {'C':>3} {'K':>3} {'D':>4} | {'fused':>15} {'fused-all':>15} {'official':>17} "
            f"{'blas':>15} | {'off/fused':>9} {'blas/fused':>10} {'blas/all':>8} {'off/all':>8} | "
            f"{'GF/s fused':>10} {'all':>6} {'blas':>6} | {'%peak fused':>11} {'all':>5} {'blas':>5}")
    print(head)
    print("-" * len(head))
    for n, c, k, d in grid:
        r = run_point(n, c, k, d, args.budget)
        m_routed, m_all = c + k, c + c * k
        fl = lambda m, t: 2.0 * n * m * d / t / 1e9  # noqa: E731
        us = lambda key: f"{r[key][0] * 1e6:7.0f}/{r[key][1] * 1e6:<7.0f}"  # noqa: E731
        gf, gfa, gfb = fl(m_routed, r["fused"][0]), fl(m_all, r["fused-all"][0]), fl(m_all, r["blas"][0])
        print(f"{n:>6} {c:>3} {k:>3} {d:>4} | {us('fused'):>15} {us('fused-all'):>15} {us('official'):>17} "
              f"{us('blas'):>15} | {r['official'][0] / r['fused'][0]:>8.1f}x {r['blas'][0] / r['fused'][0]:>9.1f}x "
              f"{r['blas'][0] / r['fused-all'][0]:>7.2f}x {r['official'][0] / r['fused-all'][0]:>7.1f}x | "
              f"{gf:>10.1f} {gfa:>6.1f} {gfb:>6.1f} | {100 * gf / peak:>10.1f}% {100 * gfa / peak:>4.0f}% "
              f"{100 * gfb / peak:>4.0f}%", flush=True)


if __name__ == "__main__":
    main()
