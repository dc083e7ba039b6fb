"""A small multi-class MVTec-layout demo dataset made offline from photographs in scikit-image.

Every class is one real photograph (brick wall, grass, gravel, stained tissue, a retina, an
espresso cup, ...). A *normal* image is a crop of that photograph with a little jitter (shift,
rotation, scale, brightness/contrast; some textures are also mirrored) resized to
``image_size``; train and test crops come from the same distribution. An *anomalous* test image
is a normal one with one synthetic defect, small like real MVTec defects (0.3–4 % of the pixels):

* ``scratch``       thin curved tapered line, brighter or darker than the surface
* ``stain``         soft-edged blob of dirt, rust, residue or bleach
* ``contamination`` irregular piece of another photograph (foreign material) or a fibre
* ``hole``          dark irregular pit with shading inside and a lit rim
* ``blur``          a locally blurred, hazy smudge

Masks are exact: a pixel is in the mask iff the defect changed one of its channels by at least
:data:`MASK_THRESHOLD` grey levels; fainter changes (soft edges) are left out because they are
invisible. Draws that are too faint on average (:data:`MIN_CONTRAST`) or too small or large are
redrawn. Everything is drawn from ``np.random.default_rng`` streams keyed by (seed, class,
split, index), so a seed gives byte-identical files and adding a class leaves the others
unchanged. The dataset is written into a temporary folder and renamed into place.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import data

log = logging.getLogger(__name__)

DEFECT_TYPES = ("scratch", "stain", "contamination", "hole", "blur")
MASK_THRESHOLD = 10  # grey levels; smaller changes are invisible and stay out of the mask
MIN_DEFECT_AREA = 0.003  # fraction of the image
MAX_DEFECT_AREA = 0.04
# Least mean change (grey levels) inside the mask, per defect type: a defect must be plainly
# visible (a blur changes only what has detail, so it gets a lower bar).
MIN_CONTRAST = {"scratch": 35.0, "stain": 35.0, "contamination": 35.0, "hole": 35.0, "blur": 25.0}
INFO_FILE = "demo_data.json"
_FORMAT_VERSION = 1
_SS = 4  # supersampling of rasterised shapes (anti-aliased edges)


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


CLASSES: Dict[str, _ClassSpec] = {
    "brick": _ClassSpec("brick", "texture", side=300, rotation=3.0),
    "grass": _ClassSpec("grass", "texture", side=280, rotation=5.0, flips=True),
    "gravel": _ClassSpec("gravel", "texture", side=280, rotation=5.0, flips=True),
    "tissue": _ClassSpec("immunohistochemistry", "texture", side=300, rotation=5.0, flips=True),
    "retina": _ClassSpec("retina", "texture", side=420, rotation=8.0, disc=(705.0, 702.0, 300.0)),
    "coffee": _ClassSpec("coffee", "object", side=350, rotation=3.0, center=(300.0, 200.0), shift=0.02),
    "hubble": _ClassSpec("hubble_deep_field", "texture", side=360, rotation=5.0, flips=True),
    "cat": _ClassSpec("chelsea", "object", side=270, rotation=3.0, center=(200.0, 150.0), shift=0.02,
                      defect_region=0.3),
}
DEFAULT_CLASSES = ("brick", "grass", "gravel", "tissue", "retina", "coffee")
# Photographs that foreign material is cut from (never the class's own).
_FOREIGN = ("coffee", "chelsea", "rocket", "astronaut", "colorwheel", "coins", "moon", "camera",
            "hubble_deep_field", "immunohistochemistry", "brick", "grass", "gravel")


@functools.lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    """A scikit-image photograph as BGR uint8 (H, W, 3) (read-only, cached)."""
    import cv2
    import skimage.data

    img = getattr(skimage.data, name)()
    img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if img.ndim == 2 else np.ascontiguousarray(img[:, :, 2::-1])
    img.setflags(write=False)
    return img


@functools.lru_cache(maxsize=None)
def _scaled_photo(name: str, factor: float) -> np.ndarray:
    import cv2

    src = _photo(name)
    h, w = src.shape[:2]
    out = cv2.resize(src, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=cv2.INTER_AREA)
    out.setflags(write=False)
    return out


def _rng(seed: int, *keys: Union[int, str]) -> np.random.Generator:
    """An independent random stream per (seed, keys...)."""
    ints = [int(seed) & 0xFFFFFFFF] + [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in keys]
    return np.random.default_rng(ints)


def _warp(src: np.ndarray, size: int, center: Tuple[float, float], angle_deg: float, scale: float) -> np.ndarray:
    """Sample a ``size``² view of ``src`` centred at ``center``, turned by ``angle_deg``, zoomed by 1/scale."""
    import cv2

    a = np.deg2rad(angle_deg)
    c, s = np.cos(a) * scale, np.sin(a) * scale
    half = (size - 1) / 2.0
    # output pixel p -> source pixel: center + scale * R(a) (p - half)
    m = np.array([[c, -s, center[0] - c * half + s * half],
                  [s, c, center[1] - s * half - c * half]], dtype=np.float64)
    return cv2.warpAffine(src, m, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REFLECT_101)


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


# ----------------------------------------------------------------------------- shapes


def _blob(center: np.ndarray, radius: float, rng: np.random.Generator, irregularity: float,
          n: int = 96) -> np.ndarray:
    """Closed irregular outline (n, 2): a circle with random low harmonics, squashed and turned."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = np.ones_like(t)
    for k in range(2, 7):
        r += irregularity * rng.uniform(0, 1) / k * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    r = np.maximum(r, 0.25)
    squash, turn = rng.uniform(0.55, 1.0), rng.uniform(0, np.pi)
    x, y = r * np.cos(t), r * np.sin(t) * squash
    ct, st = np.cos(turn), np.sin(turn)
    pts = np.stack([x * ct - y * st, x * st + y * ct], axis=1) * radius
    return pts + center


def _fill(points: np.ndarray, size: int) -> np.ndarray:
    """Anti-aliased coverage (size, size) float32 in [0, 1] of a filled polygon."""
    import cv2

    canvas = np.zeros((size * _SS, size * _SS), np.uint8)
    cv2.fillPoly(canvas, [np.round(points * _SS * 16).astype(np.int32)], 255, cv2.LINE_8, shift=4)
    return cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def _stroke(points: np.ndarray, size: int, widths: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage of a polyline whose width varies along it (tapered ends)."""
    import cv2

    canvas = np.zeros((size * _SS, size * _SS), np.uint8)
    p = np.round(points * _SS).astype(np.int32)
    for i in range(len(p) - 1):
        thick = max(1, int(round(widths[i] * _SS)))
        cv2.line(canvas, tuple(map(int, p[i])), tuple(map(int, p[i + 1])), 255, thick, cv2.LINE_AA)
    return cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def _curve(rng: np.random.Generator, center: np.ndarray, length: float, bend: float, wiggle: float = 0.0,
           n: int = 120) -> np.ndarray:
    """A smooth open curve of about ``length`` through ``center``: quadratic Bézier plus an
    irregular sideways meander of at most ``wiggle`` × length."""
    a = rng.uniform(0, np.pi)
    d = np.array([np.cos(a), np.sin(a)])
    perp = np.array([-d[1], d[0]])
    p0, p2 = center - d * length / 2, center + d * length / 2
    p1 = center + perp * rng.uniform(-bend, bend) * length
    t = np.linspace(0, 1, n)[:, None]
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2
    if wiggle:
        k = np.exp(-0.5 * (np.arange(-n // 4, n // 4 + 1) / (n / rng.uniform(12, 30))) ** 2)
        walk = np.convolve(rng.normal(size=n + len(k)), k, mode="same")[len(k) // 2:len(k) // 2 + n]
        walk -= np.linspace(walk[0], walk[-1], n)  # keep the ends on the Bézier curve
        pts = pts + perp * (wiggle * length * walk / max(float(np.abs(walk).max()), 1e-6))[:, None]
    return pts


def _lowfreq(rng: np.random.Generator, size: int, cells: int = 8) -> np.ndarray:
    """Smooth noise (size, size) in [0, 1]."""
    import cv2

    g = rng.random((cells, cells)).astype(np.float32)
    n = cv2.resize(g, (size, size), interpolation=cv2.INTER_CUBIC)
    n -= n.min()
    return n / max(float(n.max()), 1e-6)


def _soft(x: np.ndarray, sigma: float) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(x, (0, 0), max(sigma, 0.3)) if sigma > 0 else x


# ----------------------------------------------------------------------------- defects
# Each takes the normal image as float32 (H, W, 3), a centre, the scale unit u = size / 256 and
# the rng, and returns the defective image as float32 (not yet rounded or clipped).


def _scratch(img: np.ndarray, c: np.ndarray, u: float, rng: np.random.Generator) -> np.ndarray:
    size = img.shape[0]
    length = rng.uniform(0.2, 0.5) * size
    pts = _curve(rng, c, length, bend=0.3, wiggle=rng.uniform(0.0, 0.008))
    t = np.linspace(0, 1, len(pts))
    width = max(1.2, rng.uniform(2.0, 3.5) * u)
    alpha = _stroke(pts, size, width * (0.3 + 0.7 * np.sin(np.pi * t) ** 0.5))
    alpha *= rng.uniform(0.7, 1.0) * (0.7 + 0.3 * _lowfreq(rng, size, 6))
    # mostly the tone that stands out from the surface around it (a lit or a dark groove)
    local = float(img[alpha > 0.3].mean()) if (alpha > 0.3).any() else float(img.mean())
    bright = rng.random() < (0.8 if local < 128 else 0.2)
    target = rng.uniform(215, 250) if bright else rng.uniform(10, 45)
    return img + alpha[..., None] * (target - img)


def _stain(img: np.ndarray, c: np.ndarray, u: float, rng: np.random.Generator) -> np.ndarray:
    size = img.shape[0]
    radius = rng.uniform(8, 24) * u
    cover = _soft(_fill(_blob(c, radius, rng, 0.6), size), radius * rng.uniform(0.15, 0.35))
    alpha = cover * rng.uniform(0.7, 0.95) * (0.75 + 0.25 * _lowfreq(rng, size, 12))
    local = float(img[cover > 0.5].mean()) if (cover > 0.5).any() else float(img.mean())
    kind = rng.random() * (0.8 if local > 200 else 1.0)  # no bleach on an already white surface
    if kind < 0.4:  # dirt / oil: darker
        target = img * rng.uniform(0.15, 0.45)
    elif kind < 0.8:  # rust, yellowed residue, chemical: tinted (BGR multipliers)
        tints = ((0.35, 0.6, 1.0), (0.3, 0.85, 1.0), (0.75, 0.95, 0.5), (0.55, 0.5, 0.8))
        target = img * np.array(tints[int(rng.integers(len(tints)))], np.float32)
    else:  # bleached / dried residue: lighter
        target = img + (255 - img) * rng.uniform(0.45, 0.7)
    return img + alpha[..., None] * (target - img)


def _foreign_view(size: int, exclude: str, rng: np.random.Generator) -> np.ndarray:
    pool = [p for p in _FOREIGN if p != exclude]
    src = _photo(pool[int(rng.integers(len(pool)))])
    h, w = src.shape[:2]
    scale = rng.uniform(0.6, 1.6) * min(h, w) / 256.0 * 256.0 / size
    center = (rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h)
    return _warp(src, size, center, rng.uniform(0, 360), scale).astype(np.float32)


def _contamination(img: np.ndarray, c: np.ndarray, u: float, rng: np.random.Generator,
                   own_source: str = "") -> np.ndarray:
    import cv2

    size = img.shape[0]
    if rng.random() < 0.3:  # a fibre / hair
        pts = _curve(rng, c, rng.uniform(0.15, 0.35) * size, bend=0.4, wiggle=rng.uniform(0.03, 0.08))
        alpha = _stroke(pts, size, np.full(len(pts), max(1.2, rng.uniform(1.2, 2.2) * u)))
        color = rng.uniform(0, 80, size=3) if rng.random() < 0.6 else rng.uniform(60, 255, size=3)
        return img + alpha[..., None] * (color.astype(np.float32) - img)
    radius = rng.uniform(7, 18) * u
    cover = _soft(_fill(_blob(c, radius, rng, 1.0), size), 0.5 * u)
    piece = _foreign_view(size, own_source, rng)
    # a faint cast shadow next to the piece
    a = rng.uniform(0, 2 * np.pi)
    d = rng.uniform(0.8, 2.0) * u * np.array([np.cos(a), np.sin(a)])
    shadow = cv2.warpAffine(cover, np.float32([[1, 0, d[0]], [0, 1, d[1]]]), (size, size))
    shadow = _soft(np.clip(shadow - cover, 0, 1), u) * rng.uniform(0.2, 0.45)
    out = img * (1 - shadow[..., None])
    return out + cover[..., None] * (piece - out)


def _hole(img: np.ndarray, c: np.ndarray, u: float, rng: np.random.Generator) -> np.ndarray:
    import cv2

    size = img.shape[0]
    radius = rng.uniform(7, 16) * u
    cover = _fill(_blob(c, radius, rng, 0.4), size)
    inside = (cover > 0.5).astype(np.uint8)
    depth = cv2.distanceTransform(inside, cv2.DIST_L2, 3) / max(radius, 1.0)  # 0 at the edge
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    light = rng.uniform(0, 2 * np.pi)
    g = ((xx - c[0]) * np.cos(light) + (yy - c[1]) * np.sin(light)) / radius  # +1 away from the light
    dark = rng.uniform(12, 45)
    tint = img[inside > 0].mean(axis=0) if inside.any() else img.reshape(-1, 3).mean(axis=0)
    tint = tint / max(float(tint.mean()), 1.0)
    wall = np.clip(1 - depth / 0.4, 0, 1) * np.clip(g, 0, 1) * rng.uniform(40, 90)  # lit far wall
    interior = (dark * (1 + 0.6 * np.clip(-g, -1, 1)) * (0.8 + 0.4 * _lowfreq(rng, size, 16)) + wall)[..., None] * tint
    k = max(3, int(round(2 * max(1.5, 2.2 * u))) | 1)
    ring = cv2.dilate(inside, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))) - inside
    ring = _soft(ring.astype(np.float32), 0.6) * (1 - cover)
    rim = ring * (np.clip(-g, 0, 1) * rng.uniform(50, 100) - np.clip(g, 0, 1) * rng.uniform(20, 50))
    out = img + rim[..., None]
    return out + cover[..., None] * (interior - out)


def _blur(img: np.ndarray, c: np.ndarray, u: float, rng: np.random.Generator) -> np.ndarray:
    import cv2

    size = img.shape[0]
    radius = rng.uniform(11, 24) * u
    cover = _soft(_fill(_blob(c, radius, rng, 0.5), size), radius * 0.25)
    blurred = cv2.GaussianBlur(img, (0, 0), rng.uniform(2.5, 4.5) * u)
    haze = rng.uniform(0.15, 0.3)  # a greasy smudge also whitens a little
    blurred = blurred * (1 - haze) + haze * 255.0
    return img + cover[..., None] * (blurred - img)


def _texture_energy(img: np.ndarray, u: float) -> np.ndarray:
    """Local high-frequency energy (H, W): where a blur would visibly change the image."""
    import cv2

    gray = img.mean(axis=2).astype(np.float32)
    detail = np.abs(gray - cv2.GaussianBlur(gray, (0, 0), 3.0 * u))
    return cv2.GaussianBlur(detail, (0, 0), 8.0 * u)


_DEFECTS: Dict[str, Callable[..., np.ndarray]] = {
    "scratch": _scratch, "stain": _stain, "contamination": _contamination, "hole": _hole, "blur": _blur}


def _exact_mask(base: np.ndarray, out: np.ndarray, min_pixels: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Round ``out``; mask = changed by ≥ MASK_THRESHOLD; specks smaller than ``min_pixels`` are
    put back to ``base`` so the mask stays exactly the set of visibly changed pixels."""
    import cv2

    res = np.clip(out, 0, 255).round().astype(np.uint8)
    diff = np.abs(res.astype(np.int16) - base.astype(np.int16)).max(axis=2)
    mask = diff >= MASK_THRESHOLD
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    small = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] < min_pixels]
    if small:
        speck = np.isin(labels, small)
        res[speck] = base[speck]
        mask &= ~speck
        diff[speck] = 0
    return res, mask, diff


def synthesize_defect(image: np.ndarray, kind: str, rng: np.random.Generator,
                      region: Optional[Tuple[float, float, float]] = None, own_source: str = "",
                      area: Tuple[float, float] = (MIN_DEFECT_AREA, MAX_DEFECT_AREA),
                      min_contrast: Optional[float] = None, max_tries: int = 80) -> Tuple[np.ndarray, np.ndarray]:
    """Draw one synthetic defect on a copy of ``image`` and return it with its exact mask.

    Args:
        image: BGR uint8 (S, S, 3) normal image.
        kind: one of :data:`DEFECT_TYPES`.
        rng: random generator (consumed).
        region: ``(cx, cy, r)`` as fractions of S: the defect centre is drawn inside this disc;
            default anywhere at least 12 % of S from the border.
        own_source: photograph the image comes from; foreign material never comes from it.
        area: accepted mask area as a fraction of the image; draws outside are redrawn.
        min_contrast: least mean change (grey levels, largest channel) inside the mask;
            fainter draws are redrawn. Default :data:`MIN_CONTRAST` of ``kind``. When no draw
            reaches it, the most visible draw within ``area`` is used.
        max_tries: redraws before giving up.

    Returns:
        ``(defective uint8 image, bool mask)``: the mask is True exactly where some channel
        changed by at least :data:`MASK_THRESHOLD`; every other pixel changed by less.

    Raises:
        ValueError: unknown ``kind`` or a non-square / non-BGR image.
        RuntimeError: no draw fell within ``area`` after ``max_tries``.
    """
    if kind not in _DEFECTS:
        raise ValueError(f"unknown defect type {kind!r}; choose from {', '.join(DEFECT_TYPES)}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] != image.shape[1] or image.dtype != np.uint8:
        raise ValueError(f"expected a square BGR uint8 image, got {image.shape} {image.dtype}")
    size = image.shape[0]
    u = size / 256.0
    base = image.astype(np.float32)
    min_pixels = max(3, int(round(size * size * 0.0002)))
    energy = _texture_energy(base, u) if kind == "blur" else None
    min_contrast = MIN_CONTRAST[kind] if min_contrast is None else min_contrast
    best: Optional[Tuple[float, np.ndarray, np.ndarray]] = None
    for _ in range(max_tries):
        centers = [_draw_center(rng, size, region) for _ in range(6 if energy is not None else 1)]
        # a blur only shows on texture: take the most textured of a few candidate places
        c = max(centers, key=lambda p: energy[int(p[1]), int(p[0])]) if energy is not None else centers[0]
        fn = _DEFECTS[kind]
        out = fn(base, c, u, rng, own_source) if kind == "contamination" else fn(base, c, u, rng)
        res, mask, diff = _exact_mask(image, out, min_pixels)
        if area[0] <= mask.mean() <= area[1]:
            contrast = float(diff[mask].mean())
            if contrast >= min_contrast:
                return res, mask
            if best is None or contrast > best[0]:
                best = (contrast, res, mask)
    if best is not None:
        log.debug("%s defect: best contrast %.1f < %.1f after %d tries", kind, best[0], min_contrast, max_tries)
        return best[1], best[2]
    raise RuntimeError(f"could not draw a {kind} defect covering {area[0]:.2%}–{area[1]:.2%} of a "
                       f"{size}x{size} image in {max_tries} tries")


def _draw_center(rng: np.random.Generator, size: int, region: Optional[Tuple[float, float, float]]) -> np.ndarray:
    if region is None:
        return rng.uniform(0.12, 0.88, size=2) * size
    r, t = region[2] * np.sqrt(rng.random()), rng.uniform(0, 2 * np.pi)
    return np.clip((np.array(region[:2]) + r * np.array([np.cos(t), np.sin(t)])) * size, 0, size - 1)


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


def _write_class(root: str, name: str, n_train: int, n_test_good: int, n_test_defect: int, size: int,
                 seed: int) -> None:
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


def make_demo_data(out_dir: str, classes: Optional[Union[str, Sequence[str]]] = None, n_train: int = 60,
                   n_test_good: int = 20, n_test_defect: int = 20, image_size: int = 256, seed: int = 0,
                   overwrite: bool = False) -> List[str]:
    """Write a multi-class MVTec-layout dataset made from scikit-image photographs.

    Defect types go round-robin over :data:`DEFECT_TYPES`, so the default ``n_test_defect=20``
    gives four of each per class (20 + 20 test images keep an AUROC from hanging on one image).
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
        overwrite: replace an existing non-empty ``out_dir``.

    Returns:
        The class names written, in order.

    Raises:
        ValueError: unknown class or bad counts/size.
        FileExistsError: ``out_dir`` exists, is not empty and ``overwrite`` is False.
    """
    names = _resolve(classes)
    if n_train < 1 or n_test_good < 0 or n_test_defect < 0:
        raise ValueError(f"need n_train >= 1, n_test_good >= 0, n_test_defect >= 0; got "
                         f"{n_train}, {n_test_good}, {n_test_defect}")
    if n_test_good + n_test_defect < 1:
        raise ValueError("need at least one test image per class (n_test_good + n_test_defect >= 1)")
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32, got {image_size}")
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            raise FileExistsError(f"{out_dir!r} exists and is not a folder")
        if os.listdir(out_dir) and not overwrite:
            raise FileExistsError(f"{out_dir!r} exists and is not empty; pass overwrite=True to replace it")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(out_dir) + ".tmp-", dir=parent)
    try:
        for name in names:
            _write_class(tmp, name, n_train, n_test_good, n_test_defect, image_size, seed)
            log.info("demo class %s written", name)
        info = {"generator": "hgad_edge.demo_data", "format_version": _FORMAT_VERSION, "seed": seed,
                "classes": names, "image_size": image_size, "n_train": n_train, "n_test_good": n_test_good,
                "n_test_defect": n_test_defect, "defect_types": list(DEFECT_TYPES),
                "mask_threshold": MASK_THRESHOLD, "sources": {n: CLASSES[n].source for n in names}}
        with open(os.path.join(tmp, INFO_FILE), "w") as f:
            f.write(json.dumps(info, indent=2, sort_keys=True) + "\n")
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
