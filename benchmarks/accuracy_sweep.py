"""Accuracy of level sets and maps from one training: the experiment behind README "Accuracy".

The flows of different levels share no weights, so one model trained on a superset of levels
answers for every subset of them: each subset is calibrated on the held-out normal images and
evaluated on the test set (class known) with the "position" and "loglik" maps. Backbone
features are computed once; training is the library's own ``train_epoch`` with its defaults.

    python benchmarks/accuracy_sweep.py --data DATA --levels 2@1,3@1,3@0.5,3@0.25 \\
        --subsets "1,2,3;1,2;0,1,2" --epochs 20

Per defect kind (each kind's images against the class's good ones, so the stress kinds of
``hgad-edge make-demo-data --n-stress`` are seen apart) for scoring variants of the "position"
map, on the model trained here or on a trained run (``--run RUN_DIR``: no training, its levels;
calibrated on the held-out images its artifact records):

    python benchmarks/accuracy_sweep.py --data DATA --run RUN_DIR --variants "base;possd;blur2;w2,1,1"

A variant is ``+``-joined tokens: ``base`` (the library's map), ``possd`` (spread per position
instead of per level), ``blurS`` (map blur σ = S px instead of 4), ``wA,B,..`` (level weights),
``zpoolK`` (K×K mean of each level's z-map), ``topQ`` (image score = mean of the top Q % of the map
instead of its maximum).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Dict, List, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _common as C  # noqa: E402

THREADS = C.threads_from_argv(2)

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from hgad_edge import data  # noqa: E402
from hgad_edge.train import loop  # noqa: E402
from hgad_edge.calibrate import fit_normalizer  # noqa: E402
from hgad_edge.cli.commands import _parse_levels, _parse_pool  # noqa: E402
from hgad_edge.config import ModelConfig, TrainConfig  # noqa: E402
from hgad_edge.evaluation.evaluator import class_metrics  # noqa: E402
from hgad_edge.evaluation.metrics import auroc  # noqa: E402
from hgad_edge.gmm import GaussianMixture  # noqa: E402
from hgad_edge.model.hgad import HGAD  # noqa: E402
from hgad_edge.postprocess import BLUR_SIGMA, Normalizer, score_map  # noqa: E402
from hgad_edge.runtime.scorer import FrameRaw, Scorer  # noqa: E402

MAPS = ("position", "loglik")


def raws(model: HGAD, feats, labels) -> list:
    """FrameRaw (known class) of every image, all levels, scored as the Detector scores."""
    gmms = [GaussianMixture(**model.gmm_arrays(l)) for l in range(model.n_levels)]
    with torch.no_grad():
        levels = [(o.z.numpy(), o.logdet.numpy()) for o in model.flow(feats)]
    scorer = Scorer(None, gmms, model.feature_shapes, model.cfg.image_size)  # GMM part only
    return [scorer.score(levels, i, c) for i, c in enumerate(labels)]


def run_raws(det, samples: Sequence[data.Sample], batch: int = 8) -> list:
    """FrameRaw (known class) of every sample, scored by a trained run's Detector."""
    out = []
    for i in range(0, len(samples), batch):
        chunk = samples[i:i + batch]
        levels, _ = det.scorer.forward([data.read_image(s.path) for s in chunk])
        out += [det.scorer.score(levels, j, s.class_index) for j, s in enumerate(chunk)]
    return out


def save_raws(path: str, splits: Dict[str, Sequence[FrameRaw]]) -> None:
    """Per-level maps of every frame (npz, no pickle): a later ``--raws`` run re-scores them."""
    arrays = {}
    for k, rs in splits.items():
        arrays[f"{k}_class"] = np.array([r.class_index for r in rs])
        for l in range(len(rs[0].logp)):
            arrays[f"{k}_logp_{l}"] = np.stack([r.logp[l] for r in rs])
            arrays[f"{k}_entropy_{l}"] = np.stack([r.entropy[l] for r in rs])
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_raws(path: str, split: str) -> List[FrameRaw]:
    with np.load(path, allow_pickle=False) as z:
        cls = z[f"{split}_class"]
        n_levels = sum(1 for k in z.files if k.startswith(f"{split}_logp_"))
        logp = [z[f"{split}_logp_{l}"] for l in range(n_levels)]
        ent = [z[f"{split}_entropy_{l}"] for l in range(n_levels)]
    return [FrameRaw(int(c), 1.0, None, [m[i] for m in logp], [e[i] for e in ent]) for i, c in enumerate(cls)]


def pick(r: FrameRaw, subset) -> FrameRaw:
    return FrameRaw(r.class_index, 1.0, None, [r.logp[l] for l in subset], [r.entropy[l] for l in subset])


def evaluate(cal, cal_y, test, test_y, anomalous, masks, subset, mode, n_classes, size) -> tuple:
    """Per-class image / pixel AUROC of the levels in ``subset``, normalisers fitted on ``cal``."""
    img, pix = [], []
    for c in range(n_classes):
        norm = fit_normalizer([pick(r, subset) for r, y in zip(cal, cal_y) if y == c], size)
        idx = [i for i, y in enumerate(test_y) if y == c]
        m = class_metrics([pick(test[i], subset) for i in idx], [masks[i] for i in idx], anomalous[idx],
                          lambda _: norm, size, mode)
        img.append(m["image_auroc"])
        pix.append(m["pixel_auroc"])
    return img, pix


# ----------------------------------------------------------------------------- scoring variants


def parse_variant(text: str) -> Dict[str, object]:
    v: Dict[str, object] = {"name": text, "base": False, "possd": False, "blur": BLUR_SIGMA, "w": None,
                            "zpool": 1, "top": 0.0}
    for tok in text.split("+"):
        if tok == "base":
            v["base"] = True
        elif tok == "possd":
            v["possd"] = True
        elif tok.startswith("blur"):
            v["blur"] = float(tok[4:])
        elif tok.startswith("w"):
            v["w"] = [float(x) for x in tok[1:].split(",")]
        elif tok.startswith("zpool"):
            v["zpool"] = int(tok[5:])
        elif tok.startswith("top"):
            v["top"] = float(tok[3:])
        else:
            raise ValueError(f"unknown variant token {tok!r} in {text!r}; use base, possd, blurS, wA,B, zpoolK, topQ")
    if v["base"] and text != "base":
        raise ValueError(f"'base' is the library's map and takes no other token, got {text!r}")
    return v


def variant_maps(test: Sequence[FrameRaw], cal: Sequence[FrameRaw], norm: Normalizer, v, size: int, hw):
    """(maps at ``hw``, image scores) of one class's test frames under variant ``v``."""
    if v["base"]:
        out = [score_map(r, norm, size, "position", hw) for r in test]
        return [m for m, _ in out], np.array([s for _, s in out])
    n_levels = len(test[0].logp)
    stacks = [np.stack([r.logp[l] for r in cal]).astype(np.float64) for l in range(n_levels)]  # (n, h, w)
    mean = [st.mean(axis=0) for st in stacks]
    sd = [np.maximum(st.std(axis=0), 1e-6) if v["possd"] else max(float(st.std()), 1e-6) for st in stacks]
    w = v["w"] or [1.0] * n_levels
    if len(w) != n_levels:
        raise ValueError(f"{v['name']}: {len(w)} level weights for {n_levels} levels")
    maps, scores = [], []
    for r in test:
        total = np.zeros((size, size), np.float32)
        for l in range(n_levels):
            z = ((mean[l] - r.logp[l]) / sd[l]).astype(np.float32)  # (h, w)
            if v["zpool"] > 1:
                z = cv2.blur(z, (v["zpool"], v["zpool"]), borderType=cv2.BORDER_REFLECT)
            total += np.float32(w[l]) * cv2.resize(z, (size, size), interpolation=cv2.INTER_LINEAR)
        if v["blur"] > 0:
            total = cv2.GaussianBlur(total, (0, 0), v["blur"], sigmaY=v["blur"], borderType=cv2.BORDER_REFLECT)
        flat = np.sort(total.ravel())
        scores.append(float(flat[-max(1, int(round(flat.size * v["top"] / 100))):].mean()) if v["top"]
                      else float(flat[-1]))
        maps.append(total if total.shape == tuple(hw) else cv2.resize(total, (hw[1], hw[0])))
    return maps, np.array(scores)


def per_kind(cal, cal_y, test, samples, masks, subset, variant, classes, size) -> Dict[str, Dict[str, tuple]]:
    """{class: {kind | "all" | "old": (image AUROC, pixel AUROC)}}; "old" pools the five kinds of
    the demo test set, "all" every kind; a kind is its images against all the class's good ones."""
    from hgad_edge.data.defects import DEFECT_TYPES

    out: Dict[str, Dict[str, tuple]] = {}
    hw = masks[0].shape
    for c, name in enumerate(classes):
        idx = [i for i, s in enumerate(samples) if s.class_index == c]
        cal_c = [pick(r, subset) for r, y in zip(cal, cal_y) if y == c]
        norm = fit_normalizer(cal_c, size)
        maps, scores = variant_maps([pick(test[i], subset) for i in idx], cal_c, norm, variant, size, hw)
        kinds = np.array([samples[i].defect for i in idx])
        bad = kinds != data.GOOD
        row = {}
        groups = [(k, kinds == k) for k in sorted(set(kinds[bad]))]
        groups += [("old", np.isin(kinds, DEFECT_TYPES)), ("all", bad)]
        for k, sel in groups:
            keep = np.flatnonzero(~bad | sel)
            row[k] = (auroc(bad[keep], scores[keep]),
                      auroc(np.stack([masks[idx[i]] for i in keep]), np.stack([maps[i] for i in keep])))
        out[name] = row
    return out


def print_kinds(results: List[tuple], classes: Sequence[str]) -> None:
    kinds = sorted({k for _, r in results for row in r.values() for k in row if k not in ("old", "all")})
    cols = kinds + ["old", "all"]
    print("\nper defect kind, class known, mean over the classes that have it; image / pixel AUROC "
          "(old: the five kinds of the demo test set pooled, all: every kind pooled)\n")
    print("| levels / variant | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols))
    for name, r in results:
        cells = []
        for k in cols:
            vals = [row[k] for row in r.values() if k in row]
            cells.append(f"{np.nanmean([v[0] for v in vals]):.3f} / {np.nanmean([v[1] for v in vals]):.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    for k in ("thin_crack", "large", "lookalike"):
        if k in kinds:
            print(f"\n{k}, per class (image / pixel AUROC):")
            for name, r in results:
                print(f"  {name}: " + ", ".join(f"{c} {r[c][k][0]:.3f}/{r[c][k][1]:.3f}" for c in classes if k in r[c]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="MVTec-layout dataset (hgad-edge make-demo-data)")
    ap.add_argument("--run", default=None, help="score this trained run (hgad-edge train) instead of training")
    ap.add_argument("--levels", type=_parse_levels, default=ModelConfig(class_names=("x",)).levels,
                    help="the superset of levels to train, stage@scale,... (default: the default levels)")
    ap.add_argument("--subsets", default=None, help="level index sets to evaluate, '0,1;1,2' (default: all)")
    ap.add_argument("--variants", default=None, help="scoring variants for the per-kind table, 'base;possd' "
                    "(see the module docstring; default: none, no per-kind table)")
    ap.add_argument("--save-raws", default=None, help="write every frame's per-level maps here (npz)")
    ap.add_argument("--raws", default=None, help="re-score the maps of an earlier --save-raws (with the same "
                    "--data and --run or --levels) instead of computing them")
    ap.add_argument("--epochs", type=int, default=TrainConfig().epochs)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--n-intra", type=int, default=10)
    ap.add_argument("--pool", type=_parse_pool, default=(), help="feature averaging window per level, '3,3,1' "
                    "(default: 3 at the full-scale levels, 1 elsewhere)")
    ap.add_argument("--pos-dim", type=int, default=128, help="channels of the positional condition")
    ap.add_argument("--no-condition", action="store_true", help="zero the positional condition of the flows")
    ap.add_argument("--threads", type=int, default=THREADS)
    a = ap.parse_args(argv)
    variants = [parse_variant(t) for t in a.variants.split(";")] if a.variants else []
    t0 = time.time()
    if a.run:
        from hgad_edge.detector import Detector

        det = Detector(a.run, backend="torch", threads=a.threads)
        classes = det.class_names
        mc = det.artifact.model_config
        levels, size = [tuple(lv) for lv in mc.levels], det.image_size
        # the run's own held-out calibration images (recorded in the artifact)
        cal = [data.Sample(p, c, classes.index(c), data.GOOD, None, False)
               for p, c in det.artifact.calibration_samples()]
        test = data.test_samples(a.data, classes)
        r_cal, r_test = (load_raws(a.raws, "cal"), load_raws(a.raws, "test")) if a.raws else \
            (run_raws(det, cal), run_raws(det, test))
        desc = f"run {a.run} (pool {tuple(mc.pool)})"
    elif a.raws:
        classes = data.resolve_classes(a.data, None)
        levels, size = a.levels, a.image_size
        test = data.test_samples(a.data, classes)
        r_cal, r_test = load_raws(a.raws, "cal"), load_raws(a.raws, "test")
        cal = [data.Sample("", classes[r.class_index], r.class_index, data.GOOD, None, False) for r in r_cal]
        desc = f"maps of {a.raws}"
    else:
        classes = data.resolve_classes(a.data, None)
        loop.seed_everything(0)
        model = HGAD(ModelConfig(class_names=classes, levels=a.levels, image_size=a.image_size, n_intra=a.n_intra,
                                  pool=a.pool, pos_dim=a.pos_dim))
        levels, size = a.levels, a.image_size
        fit, cal = data.split_calibration(data.train_samples(a.data, classes), 0.2, 0)
        test = data.test_samples(a.data, classes)
        feats = {k: loop.cache_features(model, loop.load_images(s, True, k), 16, True)
                 for k, s in (("fit", fit), ("cal", cal), ("test", test))}
        model.set_feature_stats(feats["fit"])
        if a.no_condition:
            for l in range(model.n_levels):
                model.position_condition(l).zero_()
        tcfg = TrainConfig(epochs=a.epochs)
        opt = loop.make_optimizer(model, tcfg)
        sched = loop.make_scheduler(opt, tcfg, math.ceil(len(fit) / tcfg.batch_size))
        fit_y = torch.tensor([s.class_index for s in fit])
        for ep in range(tcfg.epochs):
            losses = loop.train_epoch(model, feats["fit"], fit_y, opt, sched, tcfg, ep, False)
            print(f"epoch {ep + 1}: " + " ".join(f"{k}={v:.3f}" for k, v in losses.items()), flush=True)
        model.eval()
        r_cal = raws(model, feats["cal"], [s.class_index for s in cal])
        r_test = raws(model, feats["test"], [s.class_index for s in test])
        desc = f"{a.image_size}², K={a.n_intra}, {a.epochs} epochs, pool {model.cfg.pool}"
    if len(r_test) != len(test):
        raise ValueError(f"{len(r_test)} test maps for {len(test)} test images of {a.data}")
    if a.save_raws:
        save_raws(a.save_raws, {"cal": r_cal, "test": r_test})
    cal_y, test_y = [s.class_index for s in cal], [s.class_index for s in test]
    anomalous = np.array([s.is_anomaly for s in test])
    hw = data.read_image(test[0].path).shape[:2]  # masks at the dataset's image size
    masks = np.stack([data.read_mask(s.mask_path, hw) if s.is_anomaly else np.zeros(hw, bool) for s in test])
    n_levels = len(r_test[0].logp)
    subsets = ([tuple(int(i) for i in s.split(",")) for s in a.subsets.split(";")] if a.subsets
               else [tuple(range(n_levels))])
    print(f"\n{a.data}: {len(classes)} classes, {desc} ({time.time() - t0:.0f} s), class known; "
          f"mean image / pixel AUROC\n")
    print("| levels | " + " | ".join(MAPS) + " |\n|---|" + "---|" * len(MAPS))
    per_class, kind_rows = [], []
    for sub in subsets:
        cells = [evaluate(r_cal, cal_y, r_test, test_y, anomalous, masks, sub, m, len(classes), size)
                 for m in MAPS]
        name = ", ".join(f"{levels[l][0]}@{levels[l][1]:g}" for l in sub)
        print(f"| {name} | " + " | ".join(f"{np.mean(i):.3f} / {np.mean(p):.3f}" for i, p in cells) + " |", flush=True)
        per_class.append((name, cells[0]))
        for v in variants:
            if v["w"] is not None and len(v["w"]) != len(sub):
                continue  # level weights are for level sets of their length
            kind_rows.append((f"{name} / {v['name']}",
                              per_kind(r_cal, cal_y, r_test, test, masks, sub, v, classes, size)))
    print(f"\nper class, {MAPS[0]} map, image / pixel AUROC:")
    for name, (img, pix) in per_class:
        print(f"  {name}: " + ", ".join(f"{c} {i:.3f}/{p:.3f}" for c, i, p in zip(classes, img, pix)))
    if kind_rows:
        print_kinds(kind_rows, classes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
