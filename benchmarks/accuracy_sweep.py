"""Accuracy of level sets and maps from one training: the experiment behind README "Accuracy".

The flows of different levels share no weights, so one model trained on a superset of levels
answers for every subset of them: each subset is calibrated on the held-out normal images and
evaluated on the test set (class known) with the "position" and "loglik" maps. Backbone
features are computed once; training is the library's own ``train_epoch`` with its defaults.

    python benchmarks/accuracy_sweep.py --data DATA --levels 2@1,3@1,3@0.5,3@0.25 \\
        --subsets "1,2,3;1,2;0,1,2" --epochs 20
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _common as C  # noqa: E402

THREADS = C.threads_from_argv(2)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from hgad_edge import data  # noqa: E402
from hgad_edge.train import loop  # noqa: E402
from hgad_edge.calibrate import fit_normalizer  # noqa: E402
from hgad_edge.cli.commands import _parse_levels, _parse_pool  # noqa: E402
from hgad_edge.config import ModelConfig, TrainConfig  # noqa: E402
from hgad_edge.evaluation.evaluator import class_metrics  # noqa: E402
from hgad_edge.gmm import GaussianMixture  # noqa: E402
from hgad_edge.model.hgad import HGAD  # noqa: E402
from hgad_edge.runtime.scorer import FrameRaw, Scorer  # noqa: E402

MAPS = ("position", "loglik")


def raws(model: HGAD, feats, labels) -> list:
    """FrameRaw (known class) of every image, all levels, scored as the Detector scores."""
    gmms = [GaussianMixture(**model.gmm_arrays(l)) for l in range(model.n_levels)]
    with torch.no_grad():
        levels = [(o.z.numpy(), o.logdet.numpy()) for o in model.flow(feats)]
    scorer = Scorer(None, gmms, model.feature_shapes, model.cfg.image_size)  # GMM part only
    return [scorer.score(levels, i, c) for i, c in enumerate(labels)]


def evaluate(cal, cal_y, test, test_y, anomalous, masks, subset, mode, n_classes, size) -> tuple:
    """Per-class image / pixel AUROC of the levels in ``subset``, normalisers fitted on ``cal``."""
    def pick(r):
        return FrameRaw(r.class_index, 1.0, None, [r.logp[l] for l in subset], [r.entropy[l] for l in subset])

    img, pix = [], []
    for c in range(n_classes):
        norm = fit_normalizer([pick(r) for r, y in zip(cal, cal_y) if y == c], size)
        idx = [i for i, y in enumerate(test_y) if y == c]
        m = class_metrics([pick(test[i]) for i in idx], [masks[i] for i in idx], anomalous[idx],
                          lambda _: norm, size, mode)
        img.append(m["image_auroc"])
        pix.append(m["pixel_auroc"])
    return img, pix


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="MVTec-layout dataset (hgad-edge make-demo-data)")
    ap.add_argument("--levels", type=_parse_levels, default=ModelConfig(class_names=("x",)).levels,
                    help="the superset of levels to train, stage@scale,... (default: the default levels)")
    ap.add_argument("--subsets", default=None, help="level index sets to evaluate, '0,1;1,2' (default: all)")
    ap.add_argument("--epochs", type=int, default=TrainConfig().epochs)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--n-intra", type=int, default=10)
    ap.add_argument("--pool", type=_parse_pool, default=(), help="feature averaging window per level, '3,3,1' "
                    "(default: 3 at the full-scale levels, 1 elsewhere)")
    ap.add_argument("--pos-dim", type=int, default=128, help="channels of the positional condition")
    ap.add_argument("--no-condition", action="store_true", help="zero the positional condition of the flows")
    ap.add_argument("--threads", type=int, default=THREADS)
    a = ap.parse_args(argv)
    classes = data.resolve_classes(a.data, None)
    loop.seed_everything(0)
    model = HGAD(ModelConfig(class_names=classes, levels=a.levels, image_size=a.image_size, n_intra=a.n_intra,
                              pool=a.pool, pos_dim=a.pos_dim))
    fit, cal = data.split_calibration(data.train_samples(a.data, classes), 0.2, 0)
    test = data.test_samples(a.data, classes)
    feats = {k: loop.cache_features(model, loop.load_images(s, True, k), 16, True)
             for k, s in (("fit", fit), ("cal", cal), ("test", test))}
    model.set_feature_stats(feats["fit"])
    if a.no_condition:
        for l in range(model.n_levels):
            model.position_condition(l).zero_()
    cfg = TrainConfig(epochs=a.epochs)
    opt = loop.make_optimizer(model, cfg)
    sched = loop.make_scheduler(opt, cfg, math.ceil(len(fit) / cfg.batch_size))
    fit_y = torch.tensor([s.class_index for s in fit])
    t0 = time.time()
    for ep in range(cfg.epochs):
        losses = loop.train_epoch(model, feats["fit"], fit_y, opt, sched, cfg, ep, False)
        print(f"epoch {ep + 1}: " + " ".join(f"{k}={v:.3f}" for k, v in losses.items()), flush=True)
    model.eval()
    cal_y, test_y = [s.class_index for s in cal], [s.class_index for s in test]
    r_cal, r_test = raws(model, feats["cal"], cal_y), raws(model, feats["test"], test_y)
    anomalous = np.array([s.is_anomaly for s in test])
    hw = data.read_image(test[0].path).shape[:2]  # masks at the dataset's image size
    masks = np.stack([data.read_mask(s.mask_path, hw) if s.is_anomaly else np.zeros(hw, bool) for s in test])
    subsets = ([tuple(int(i) for i in s.split(",")) for s in a.subsets.split(";")] if a.subsets
               else [tuple(range(model.n_levels))])
    print(f"\n{a.data}: {len(classes)} classes, {a.image_size}², K={a.n_intra}, {a.epochs} epochs "
          f"({time.time() - t0:.0f} s), class known; mean image / pixel AUROC\n")
    print("| levels | " + " | ".join(MAPS) + " |\n|---|" + "---|" * len(MAPS))
    per_class = []
    for sub in subsets:
        cells = [evaluate(r_cal, cal_y, r_test, test_y, anomalous, masks, sub, m, len(classes), a.image_size)
                 for m in MAPS]
        name = ", ".join(f"{a.levels[l][0]}@{a.levels[l][1]:g}" for l in sub)
        print(f"| {name} | " + " | ".join(f"{np.mean(i):.3f} / {np.mean(p):.3f}" for i, p in cells) + " |", flush=True)
        per_class.append((name, cells[0]))
    print(f"\nper class, {MAPS[0]} map, image / pixel AUROC:")
    for name, (img, pix) in per_class:
        print(f"  {name}: " + ", ".join(f"{c} {i:.3f}/{p:.3f}" for c, i, p in zip(classes, img, pix)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
