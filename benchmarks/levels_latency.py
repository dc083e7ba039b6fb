"""Latency of feature-level sets before training one (README "Stress kinds", thin cracks).

Latency does not depend on the weights, so untrained 6-class models of each level set are
timed end to end on one 256² frame (torch eager backbone + flows, then the GMM of every level
with the class routed), interleaved, median of ``--frames`` each; ratios to the first set.
A measurement, not a test: it asserts nothing.

    python benchmarks/levels_latency.py --levels 2@1,3@1,3@0.5 1@1,2@1,3@1,3@0.5
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from hgad_edge.config import ModelConfig
from hgad_edge.gmm import GaussianMixture
from hgad_edge.model.hgad import HGAD


def parse(text: str):
    return tuple((int(s), float(r)) for s, r in (p.split("@") for p in text.split(",")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", nargs="+", default=["2@1,3@1,3@0.5", "1@1,2@1,3@1,3@0.5"],
                    help="level sets stage@scale,... (the first is the baseline)")
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    x = torch.randn(1, 3, a.image_size, a.image_size)
    models = {t: HGAD(ModelConfig(class_names=tuple("abcdef"), levels=parse(t), image_size=a.image_size)).eval()
              for t in a.levels}
    gmms = {t: [GaussianMixture(**m.gmm_arrays(l)) for l in range(len(m.flows))] for t, m in models.items()}
    times = {t: [] for t in models}
    with torch.no_grad():
        for m in models.values():
            for _ in range(3):
                m(x)
        for _ in range(a.frames):
            for t, m in models.items():
                t0 = time.perf_counter()
                for g, o in zip(gmms[t], m(x)):
                    g.fused(o.z[0].numpy(), o.logdet[0].numpy(), -1)
                times[t].append((time.perf_counter() - t0) * 1e3)
    base = statistics.median(times[a.levels[0]])
    for t, v in times.items():
        shapes = [tuple(f.shape[2:]) for f in models[t].extract_features(x)]
        print(f"{t:24s} maps {shapes}: median {statistics.median(v):.1f} ms  ×{statistics.median(v) / base:.2f}")


if __name__ == "__main__":
    main()
