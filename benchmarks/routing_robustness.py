"""Routing under anomaly: which image-level statistic picks the class when defects pull (README
"Routing under anomaly", issue 18), and how far apart known and unknown frames are (issue 17).

Routing is a scoring-time rule, so no training: ``dump`` scores images once with a trained model
(per level the inter-class log-posterior of every position, and the routed class's familiarity),
``table`` compares the candidate rules on the dumps.

    python benchmarks/routing_robustness.py dump RUN --data ROOT --out test.npz            # the test split
    python benchmarks/routing_robustness.py dump RUN --data ROOT --paste 0.05 0.25 --out paste.npz
    python benchmarks/routing_robustness.py dump RUN --data ROOT --kinds large,lookalike --out stress.npz
    python benchmarks/routing_robustness.py dump RUN --photos --out photos.npz            # skimage photos
    python benchmarks/routing_robustness.py table test.npz paste.npz stress.npz photos.npz

``--paste A B``: every test image with a rectangle of A–B of its area cut from a normal training
image of another class (``--foreign``: from a skimage photograph instead). ``table`` prints the
routing accuracy per image set and rule, and the familiarity range per set
(``hgad_edge.postprocess.familiarity``: unknown below ``UNKNOWN_Z``).
"""
from __future__ import annotations

import argparse
import glob
import os
from typing import Callable, Dict, List, Tuple

import numpy as np

from hgad_edge import data
from hgad_edge.detector import Detector
from hgad_edge.gmm import _logsumexp, route
from hgad_edge.postprocess import UNKNOWN_Z, FrameRaw, familiarity

PHOTOS = ("astronaut", "chelsea", "rocket", "camera", "coins", "moon", "hubble_deep_field", "colorwheel", "cat")
FOREIGN = ("astronaut", "chelsea", "rocket")


def _photo(name: str) -> np.ndarray:
    import skimage.data

    im = getattr(skimage.data, name)()
    if im.ndim == 2:
        im = np.stack([im] * 3, -1)
    return np.ascontiguousarray(im[..., :3][..., ::-1])  # RGB → BGR


def _paste(img: np.ndarray, src: np.ndarray, share: float, rng) -> np.ndarray:
    out = img.copy()
    h, w = img.shape[:2]
    ar = rng.uniform(0.6, 1.6)
    ph = int(round(np.sqrt(share * h * w / ar)))
    pw = int(round(share * h * w / max(ph, 1)))
    ph, pw = min(ph, h, src.shape[0]), min(pw, w, src.shape[1])
    y, x = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
    sy, sx = rng.integers(0, src.shape[0] - ph + 1), rng.integers(0, src.shape[1] - pw + 1)
    out[y:y + ph, x:x + pw] = src[sy:sy + ph, sx:sx + pw]
    return out


def _items(a, names: List[str]) -> List[Tuple[str, int, np.ndarray]]:
    rng = np.random.default_rng(a.seed)
    if a.photos:
        return [("unknown photo", -1, _photo(n)) for n in PHOTOS]
    samples = data.test_samples(a.data, names)
    if a.kinds:
        kinds = a.kinds.split(",")
        return [(s.defect, s.class_index, data.read_image(s.path)) for s in samples if s.defect in kinds]
    if a.paste is None:
        return [("defective" if s.is_anomaly else "normal", s.class_index, data.read_image(s.path)) for s in samples]
    lo, hi = a.paste
    donors = {c: [data.read_image(p) for p in sorted(glob.glob(os.path.join(a.data, n, "train", "good", "*")))[-5:]]
              for c, n in enumerate(names)}
    foreign = [_photo(n) for n in FOREIGN]
    out = []
    for s in samples:
        if a.foreign:
            src, tag = foreign[int(rng.integers(len(foreign)))], "photo"
        else:
            other = int(rng.choice([c for c in range(len(names)) if c != s.class_index]))
            src, tag = donors[other][int(rng.integers(len(donors[other])))], "class"
        kind = f"{'defective' if s.is_anomaly else 'normal'} + {tag} patch {lo:.0%}-{hi:.0%}"
        out.append((kind, s.class_index, _paste(data.read_image(s.path), src, rng.uniform(lo, hi), rng)))
    return out


def dump(a) -> None:
    det = Detector(a.run, backend="torch", device="cpu")
    items = _items(a, det.class_names)
    rec: Dict[str, list] = {"kind": [], "cls": [], "familiarity": []}
    for i in range(0, len(items), 8):
        chunk = items[i:i + 8]
        levels, _ = det.scorer.forward([it[2] for it in chunk])
        for j, (kind, c, _) in enumerate(chunk):
            raw = det.scorer.score(levels, j, None)
            rec["kind"].append(kind)
            rec["cls"].append(c)
            rec["familiarity"].append(familiarity(raw, det.normalizers[raw.class_index]))
            for l, (g, (z, _)) in enumerate(zip(det.scorer.gmms, levels)):
                zz = np.asarray(z[j], np.float64)  # (N, D)
                logits = zz @ g.mu.T.astype(np.float64) - 0.5 * np.sum(g.mu.astype(np.float64) ** 2, 1) \
                    + g.log_pi_inter  # (N, C)
                rec.setdefault(f"logq{l}", []).append((logits - _logsumexp(logits, 1)[:, None]).astype(np.float32))
    det.close()
    np.savez_compressed(a.out, **{k: np.array(v) if k in ("kind", "cls", "familiarity") else np.stack(v)
                                  for k, v in rec.items()})


# ----------------------------------------------------------------------------- the candidate rules
def _votes(lq: np.ndarray) -> np.ndarray:
    return np.bincount(np.argmax(lq, 1), minlength=lq.shape[1]) / len(lq)  # (C,)


STATS: Dict[str, Callable[[np.ndarray], np.ndarray]] = {  # per level: (N, C) log-posterior → (C,)
    "mean posterior": lambda lq: np.exp(lq).mean(0),
    "vote": _votes,
    "median log-posterior": lambda lq: np.median(lq, 0),
    "mean log-posterior": lambda lq: lq.mean(0),
    "clipped log-posterior (≥ −2)": lambda lq: np.maximum(lq, -2.0).mean(0),
}
LEVELS = {"all levels": None, "finest level": [0]}


def _route(stat: Callable, levels, lqs: List[np.ndarray]) -> int:
    use = range(len(lqs)) if levels is None else levels
    return int(np.argmax(np.mean([stat(lqs[l]) for l in use], axis=0)))


def table(a) -> None:
    rows: Dict[str, Dict[str, float]] = {}
    fam: Dict[str, np.ndarray] = {}
    kinds: List[str] = []
    for path in a.dumps:
        d = np.load(path)
        n_levels = sum(1 for k in d.files if k.startswith("logq"))
        kind, cls = d["kind"], d["cls"]
        for k in dict.fromkeys(kind):
            sel = np.flatnonzero(kind == k)
            kinds.append(k)
            fam[k] = d["familiarity"][sel]
            if cls[sel[0]] < 0:
                continue
            lqs = [[d[f"logq{l}"][i].astype(np.float64) for l in range(n_levels)] for i in sel]
            ok = [route([_votes(q) for q in lq], [np.exp(q).mean(0) for q in lq]) == cls[i] for lq, i in zip(lqs, sel)]
            rows.setdefault("**hgad_edge.gmm.route** (vote, all levels; ties: mean posterior)", {})[k] = float(np.mean(ok))
            for sname, stat in STATS.items():
                for lname, lv in LEVELS.items():
                    ok = [_route(stat, lv, lq) == cls[i] for lq, i in zip(lqs, sel)]
                    rows.setdefault(f"{sname}, {lname}", {})[k] = float(np.mean(ok))
    known = [k for k in kinds if k in next(iter(rows.values()))]
    print("| rule | " + " | ".join(f"{k} ({len(fam[k])})" for k in known) + " |")
    print("|---|" + "---:|" * len(known))
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{r[k]:.3f}" for k in known) + " |")
    print(f"\nfamiliarity (median z of the finest level; unknown below {UNKNOWN_Z}):")
    print("| images | n | min | median | max | unknown |")
    print("|---|---:|---:|---:|---:|---:|")
    for k in kinds:
        f = fam[k]
        print(f"| {k} | {len(f)} | {f.min():.2f} | {np.median(f):.2f} | {f.max():.2f} | {np.mean(f < UNKNOWN_Z):.3f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("dump")
    s.add_argument("run")
    s.add_argument("--data", help="MVTec-layout root (not needed with --photos)")
    s.add_argument("--out", required=True)
    s.add_argument("--kinds", help="comma-separated test defect kinds to take (e.g. large,lookalike)")
    s.add_argument("--paste", type=float, nargs=2, metavar=("MIN", "MAX"), help="paste this share of the area")
    s.add_argument("--foreign", action="store_true", help="--paste from skimage photographs, not other classes")
    s.add_argument("--photos", action="store_true", help="skimage photographs of no trained class")
    s.add_argument("--seed", type=int, default=123)
    s.set_defaults(func=dump)
    t = sub.add_parser("table")
    t.add_argument("dumps", nargs="+")
    t.set_defaults(func=table)
    a = p.parse_args()
    a.func(a)


if __name__ == "__main__":
    main()
