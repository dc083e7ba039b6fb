"""A small multi-class MVTec-layout demo dataset made offline from photographs in scikit-image.

Every class is one real photograph (brick wall, grass, gravel, stained tissue, a retina, an
espresso cup, ...). A *normal* image is a crop of that photograph with a little jitter (shift,
rotation, scale, brightness/contrast; some textures are also mirrored) resized to
``image_size``; train and test crops come from the same distribution. An *anomalous* test image
is a normal one with one synthetic defect, small like real MVTec defects (0.3–4 % of the pixels),
drawn with an exact mask by :mod:`hgad_edge.data.defects` (scratch, stain, foreign material, hole,
blur). On request (``n_test_stress``) each class also gets the stress kinds: a large patch (5–25 %),
a look-alike (a region of another class's normal image) and, on the fine textures only, faint
thin cracks. Everything is drawn from ``np.random.default_rng`` streams keyed by (seed, class, split,
index), so a seed gives byte-identical files and adding a class leaves the others unchanged. The dataset is written into a temporary folder and renamed into place.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from hgad_edge import data, fileio
from hgad_edge.config import MAX_IMAGE_SIZE
from hgad_edge.data._photos import _scaled_photo, _warp
from hgad_edge.data.defects import (DEFECT_TYPES, MASK_THRESHOLD, MASK_THRESHOLDS, MAX_DEFECT_AREA,  # noqa: F401
                                    MIN_CONTRAST, MIN_DEFECT_AREA, STRESS_TYPES, synthesize_defect)

log = logging.getLogger(__name__)

INFO_FILE = "demo_data.json"
_GENERATOR = "hgad_edge.data.demo"  # the signature in INFO_FILE: only such a folder is ever overwritten
_CLASS_FOLDERS = {"train", "test", "ground_truth"}
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class _ClassSpec:
    """How normal images of one class are cut from its photograph.

    ``side`` is the crop side in source pixels. Textures take the crop centre anywhere it fits
    (inside ``disc`` = (cx, cy, r) when given); objects keep ``center`` with a small ``shift``.
    """

    source: str
    kind: str  # "texture" or "object"
    side: float
    rotation: float  # max |angle| in degrees
    flips: bool = False  # random mirror images (textures without a handedness)
    center: Optional[Tuple[float, float]] = None
    shift: float = 0.0  # object jitter, fraction of the crop side
    disc: Optional[Tuple[float, float, float]] = None
    defect_region: float = 0.38  # objects: defects within this radius (fraction of size) of the centre
    thin_cracks: bool = False  # a fine texture that gets the ``thin_crack`` stress kind


CLASSES: Dict[str, _ClassSpec] = {
    "brick": _ClassSpec("brick", "texture", side=300, rotation=3.0),
    "grass": _ClassSpec("grass", "texture", side=280, rotation=5.0, flips=True, thin_cracks=True),
    "gravel": _ClassSpec("gravel", "texture", side=280, rotation=5.0, flips=True, thin_cracks=True),
    "tissue": _ClassSpec("immunohistochemistry", "texture", side=300, rotation=5.0, flips=True, thin_cracks=True),
    "retina": _ClassSpec("retina", "texture", side=420, rotation=8.0, disc=(705.0, 702.0, 300.0)),
    "coffee": _ClassSpec("coffee", "object", side=350, rotation=3.0, center=(300.0, 200.0), shift=0.02),
    "hubble": _ClassSpec("hubble_deep_field", "texture", side=360, rotation=5.0, flips=True),
    "cat": _ClassSpec("chelsea", "object", side=270, rotation=3.0, center=(200.0, 150.0), shift=0.02,
                      defect_region=0.3),
}
DEFAULT_CLASSES = ("brick", "grass", "gravel", "tissue", "retina", "coffee")
# Photographs that foreign material is cut from (never the class's own).


def _rng(seed: int, *keys: Union[int, str]) -> np.random.Generator:
    """An independent random stream per (seed, keys...)."""
    ints = [int(seed) & 0xFFFFFFFF] + [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in keys]
    return np.random.default_rng(ints)


def normal_image(class_name: str, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """One defect-free image of a demo class: a jittered crop of its photograph.

    Args:
        class_name: a key of :data:`CLASSES`.
        image_size: output side in pixels.
        rng: random generator (consumed).

    Returns:
        BGR uint8 (image_size, image_size, 3).
    """
    import cv2

    spec = _spec(class_name)
    factor = image_size / spec.side
    src = _scaled_photo(spec.source, round(factor, 6))
    h, w = src.shape[:2]
    angle = float(rng.uniform(-spec.rotation, spec.rotation))
    scale = float(rng.uniform(0.97, 1.03))
    flip = bool(spec.flips and rng.random() < 0.5)
    if spec.kind == "object":
        assert spec.center is not None
        jitter = rng.uniform(-spec.shift, spec.shift, size=2) * image_size
        center = (spec.center[0] * factor + jitter[0], spec.center[1] * factor + jitter[1])
    elif spec.disc is not None:
        r = spec.disc[2] * factor * np.sqrt(rng.random())
        t = rng.uniform(0, 2 * np.pi)
        center = (spec.disc[0] * factor + r * np.cos(t), spec.disc[1] * factor + r * np.sin(t))
    else:
        a = np.deg2rad(angle)
        reach = image_size / 2 * scale * (abs(np.cos(a)) + abs(np.sin(a)))
        lo_x, hi_x = (reach, w - reach) if w > 2 * reach else (w / 2, w / 2)
        lo_y, hi_y = (reach, h - reach) if h > 2 * reach else (h / 2, h / 2)
        center = (rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y))
    img = _warp(src, image_size, center, angle, scale)
    if flip:
        img = cv2.flip(img, 1)
    gain, bias = rng.uniform(0.94, 1.06), rng.uniform(-6.0, 6.0)
    return np.clip(img.astype(np.float32) * gain + bias, 0, 255).round().astype(np.uint8)


# ----------------------------------------------------------------------------- dataset


def _spec(name: str) -> _ClassSpec:
    if name not in CLASSES:
        raise ValueError(f"unknown demo class {name!r}; available: {', '.join(CLASSES)}")
    return CLASSES[name]


def _resolve(classes: Optional[Union[str, Sequence[str]]]) -> List[str]:
    if classes is None:
        return list(DEFAULT_CLASSES)
    names = [c.strip() for c in classes.split(",")] if isinstance(classes, str) else [str(c) for c in classes]
    names = [n for n in names if n]
    if not names:
        raise ValueError(f"no demo classes given; available: {', '.join(CLASSES)}")
    for n in names:
        _spec(n)
    if len(set(names)) != len(names):
        raise ValueError(f"demo classes given more than once: {names}")
    return names


def _write_png(path: str, img: np.ndarray) -> None:
    import cv2

    if not cv2.imwrite(path, img, [cv2.IMWRITE_PNG_COMPRESSION, 3]):
        raise OSError(f"could not write {path!r}")


def stress_types(class_name: str) -> Tuple[str, ...]:
    """The stress defect kinds a demo class gets: all of :data:`STRESS_TYPES` but ``thin_crack``
    on the fine textures only (grass, gravel, tissue)."""
    return tuple(k for k in STRESS_TYPES if k != "thin_crack" or _spec(class_name).thin_cracks)


def lookalike_donor(class_name: str, rng: np.random.Generator) -> str:
    """The class a ``lookalike`` region is cut from: one of :data:`DEFAULT_CLASSES` other than
    ``class_name`` (a fixed list, so the draw does not depend on which classes are written)."""
    pool = [n for n in DEFAULT_CLASSES if n != class_name]
    return pool[int(rng.integers(len(pool)))]


def _write_class(root: str, name: str, n_train: int, n_test_good: int, n_test_defect: int, size: int,
                 seed: int, n_test_stress: int = 0) -> Dict[str, List[str]]:
    spec = _spec(name)
    cls_dir = os.path.join(root, name)
    for sub in ("train/good", "test/good"):
        os.makedirs(os.path.join(cls_dir, sub))
    for i in range(n_train):
        _write_png(os.path.join(cls_dir, "train", "good", f"{i:03d}.png"),
                   normal_image(name, size, _rng(seed, name, "train", i)))
    for i in range(n_test_good):
        _write_png(os.path.join(cls_dir, "test", "good", f"{i:03d}.png"),
                   normal_image(name, size, _rng(seed, name, "test_good", i)))
    region = (0.5, 0.5, spec.defect_region) if spec.kind == "object" else None
    counts = {k: 0 for k in DEFECT_TYPES}
    for i in range(n_test_defect):
        kind = DEFECT_TYPES[i % len(DEFECT_TYPES)]
        rng = _rng(seed, name, "test_defect", i)
        img, mask = synthesize_defect(normal_image(name, size, rng), kind, rng, region, spec.source)
        j = counts[kind]
        counts[kind] += 1
        if j == 0:
            os.makedirs(os.path.join(cls_dir, "test", kind))
            os.makedirs(os.path.join(cls_dir, "ground_truth", kind))
        _write_png(os.path.join(cls_dir, "test", kind, f"{j:03d}.png"), img)
        _write_png(os.path.join(cls_dir, "ground_truth", kind, f"{j:03d}_mask.png"), mask.astype(np.uint8) * 255)
    # stress kinds: streams of their own, so the kinds above keep their draws
    donors: List[str] = []
    for kind in stress_types(name) if n_test_stress else ():
        os.makedirs(os.path.join(cls_dir, "test", kind))
        os.makedirs(os.path.join(cls_dir, "ground_truth", kind))
        for j in range(n_test_stress):
            rng = _rng(seed, name, "test_" + kind, j)
            base = normal_image(name, size, rng)
            donor = None
            if kind == "lookalike":
                donors.append(lookalike_donor(name, rng))
                donor = normal_image(donors[-1], size, rng)
            img, mask = synthesize_defect(base, kind, rng, region, spec.source, donor=donor)
            _write_png(os.path.join(cls_dir, "test", kind, f"{j:03d}.png"), img)
            _write_png(os.path.join(cls_dir, "ground_truth", kind, f"{j:03d}_mask.png"),
                       mask.astype(np.uint8) * 255)
    return {"lookalike": donors} if donors else {}


def _not_ours(root: str) -> str:
    """Why ``root`` is not a folder :func:`make_demo_data` wrote ('' when it is one): it must hold
    our ``demo_data.json`` (generator signature) and nothing but the classes that file lists, each
    with only the MVTec folders we write — a model trained into it or a user's file is never
    deleted by ``overwrite``."""
    try:
        with open(os.path.join(root, INFO_FILE), encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError):
        return f"no readable {INFO_FILE}"
    if not isinstance(info, dict) or info.get("generator") != _GENERATOR or not isinstance(info.get("classes"), list):
        return f"its {INFO_FILE} was not written by {_GENERATOR}"
    extra = sorted(set(os.listdir(root)) - {INFO_FILE, *map(str, info["classes"])})
    for name in info["classes"]:
        folder = os.path.join(root, str(name))
        if os.path.isdir(folder):
            extra += [os.path.join(str(name), n) for n in sorted(set(os.listdir(folder)) - _CLASS_FOLDERS)]
    return f"it also holds {', '.join(extra[:3])}" + (" …" if len(extra) > 3 else "") if extra else ""


def make_demo_data(out_dir: str, classes: Optional[Union[str, Sequence[str]]] = None, n_train: int = 60,
                   n_test_good: int = 20, n_test_defect: int = 20, image_size: int = 256, seed: int = 0,
                   overwrite: bool = False, n_test_stress: int = 0) -> List[str]:
    """Write a multi-class MVTec-layout dataset made from scikit-image photographs.

    Defect types go round-robin over :data:`DEFECT_TYPES`, so the default ``n_test_defect=20``
    gives four of each per class (20 + 20 test images keep an AUROC from hanging on one image).
    ``n_test_stress`` adds that many images of each stress kind (:func:`stress_types`) per class
    in folders of their own, drawn from streams of their own: the other files do not change.
    The folder is built beside ``out_dir`` and renamed into place, so a crash never leaves half
    a dataset. A JSON file (``demo_data.json``) records the arguments.

    Args:
        out_dir: dataset root to create.
        classes: demo class names (list or ``"a,b"``); default :data:`DEFAULT_CLASSES`. All
            choices: the keys of :data:`CLASSES`.
        n_train: normal training images per class.
        n_test_good: normal test images per class.
        n_test_defect: anomalous test images per class.
        image_size: side of the square images in pixels.
        seed: random seed; the same seed gives byte-identical files.
        overwrite: replace an existing non-empty ``out_dir`` — only one this function wrote (its
            ``demo_data.json`` and nothing else but its classes); any other folder is refused.
        n_test_stress: anomalous test images per stress kind and class (``large``, ``lookalike``,
            ``thin_crack``); 0 writes none. The donor class of every ``lookalike`` image is
            recorded in ``demo_data.json`` (``lookalike_donors``).

    Returns:
        The class names written, in order.

    Raises:
        ValueError: unknown class or bad counts/size.
        FileExistsError: ``out_dir`` exists, is not empty and ``overwrite`` is False, or it is
            not a demo dataset (then even with ``overwrite``).
    """
    names = _resolve(classes)
    if n_train < 1 or n_test_good < 0 or n_test_defect < 0 or n_test_stress < 0:
        raise ValueError(f"need n_train >= 1, n_test_good >= 0, n_test_defect >= 0, n_test_stress >= 0; got "
                         f"{n_train}, {n_test_good}, {n_test_defect}, {n_test_stress}")
    if n_test_good + n_test_defect < 1:
        raise ValueError("need at least one test image per class (n_test_good + n_test_defect >= 1)")
    if not 32 <= image_size <= MAX_IMAGE_SIZE:
        raise ValueError(f"image_size must be in [32, {MAX_IMAGE_SIZE}], got {image_size}")
    if not out_dir or not str(out_dir).strip():
        raise ValueError("no output folder given for the demo dataset")
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            raise FileExistsError(f"{out_dir!r} exists and is not a folder")
        if os.listdir(out_dir) and not overwrite:
            raise FileExistsError(f"{out_dir!r} exists and is not empty; pass --overwrite (overwrite=True) to "
                                  "replace a demo dataset this command made there")
        if os.listdir(out_dir):
            foreign = _not_ours(out_dir)
            if foreign:
                raise FileExistsError(f"refusing to overwrite {out_dir!r}: it is not a demo dataset made by "
                                      f"make-demo-data ({foreign}); only such a folder is ever replaced")
    parent = os.path.dirname(out_dir)
    up = parent
    while not os.path.exists(up):
        up = os.path.dirname(up)
    if not os.path.isdir(up):
        raise FileExistsError(f"{out_dir!r} is below the file {up!r}, not a folder")
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(out_dir) + ".tmp-", dir=parent)
    try:
        donors = {}
        for name in names:
            donors[name] = _write_class(tmp, name, n_train, n_test_good, n_test_defect, image_size, seed,
                                        n_test_stress).get("lookalike", [])
            log.info("demo class %s written", name)
        info = {"generator": _GENERATOR, "format_version": _FORMAT_VERSION, "seed": seed,
                "classes": names, "image_size": image_size, "n_train": n_train, "n_test_good": n_test_good,
                "n_test_defect": n_test_defect, "defect_types": list(DEFECT_TYPES),
                "mask_threshold": MASK_THRESHOLD, "sources": {n: CLASSES[n].source for n in names}}
        if n_test_stress:  # only then: without stress kinds the file is what it always was
            info.update(n_test_stress=n_test_stress, stress_types={n: list(stress_types(n)) for n in names},
                        mask_thresholds={k: MASK_THRESHOLDS[k] for k in STRESS_TYPES}, lookalike_donors=donors)
        with open(os.path.join(tmp, INFO_FILE), "w") as f:
            f.write(fileio.dumps(info, indent=2, sort_keys=True) + "\n")
        os.chmod(tmp, 0o755)
        if os.path.isdir(out_dir):
            old = tempfile.mkdtemp(prefix="." + os.path.basename(out_dir) + ".old-", dir=parent)
            os.rename(out_dir, os.path.join(old, "d"))
            os.rename(tmp, out_dir)
            shutil.rmtree(old)
        else:
            os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("demo dataset with %d classes written to %s", len(names), out_dir)
    return names


def summarize(root: str) -> Dict[str, object]:
    """Counts and defect areas of an MVTec-layout dataset (any, not only the demo one).

    Args:
        root: dataset root.

    Returns:
        ``{"classes": {name: {"train": n, "test": {defect: n}, "defect_area_pct": {...}}},
        "defect_area_pct": {"min", "median", "max"}, "n_images": n}``; areas are the mask's
        share of the image in percent.
    """
    names = data.list_classes(root)
    out: Dict[str, object] = {}
    all_areas: List[float] = []
    total = 0
    per: Dict[str, object] = {}
    for name in names:
        train = data.train_samples(root, [name])
        test = data.test_samples(root, [name])
        counts: Dict[str, int] = {}
        areas: List[float] = []
        for s in test:
            counts[s.defect] = counts.get(s.defect, 0) + 1
            if s.is_anomaly and s.mask_path and os.path.isfile(s.mask_path):
                import cv2

                m = cv2.imread(s.mask_path, cv2.IMREAD_GRAYSCALE)
                if m is not None:
                    areas.append(100.0 * float((m > 127).mean()))
        all_areas += areas
        total += len(train) + len(test)
        per[name] = {"train": len(train), "test": counts, "defect_area_pct": _stats(areas)}
    out["classes"] = per
    out["defect_area_pct"] = _stats(all_areas)
    out["n_images"] = total
    return out


def _stats(v: List[float]) -> Dict[str, float]:
    if not v:
        return {"min": float("nan"), "median": float("nan"), "max": float("nan")}
    return {"min": round(float(np.min(v)), 3), "median": round(float(np.median(v)), 3),
            "max": round(float(np.max(v)), 3)}


def format_summary(summary: Dict[str, object]) -> str:
    """A few readable lines from :func:`summarize`, for logs and the CLI."""
    lines = []
    for name, row in summary["classes"].items():  # type: ignore[union-attr]
        test = ", ".join(f"{k} {v}" for k, v in row["test"].items())
        a = row["defect_area_pct"]
        lines.append(f"{name}: train {row['train']}; test {test}; defect area {a['min']:.2f}–{a['max']:.2f} % "
                     f"(median {a['median']:.2f})")
    a = summary["defect_area_pct"]  # type: ignore[assignment]
    lines.append(f"{len(summary['classes'])} classes, {summary['n_images']} images; defect area "  # type: ignore
                 f"{a['min']:.2f}–{a['max']:.2f} % (median {a['median']:.2f})")
    return "\n".join(lines)
