"""Synthetic defects with exact masks, drawn on a normal image (see ``hgad_edge.data.demo``).

The five kinds of the demo test set (:data:`DEFECT_TYPES`), small like real MVTec defects:

* ``scratch``       thin curved tapered line, brighter or darker than the surface
* ``stain``         soft-edged blob of dirt, rust, residue or bleach
* ``contamination`` irregular piece of another photograph (foreign material) or a fibre
* ``hole``          dark irregular pit with shading inside and a lit rim
* ``blur``          a locally blurred, hazy smudge

and three stress kinds (:data:`STRESS_TYPES`), written only when asked for:

* ``large``         a big discoloured, darkened, faded or washed-out patch, 5–25 % of the image
* ``lookalike``     a region of another class's normal image pasted in (hard or soft edge)
* ``thin_crack``    long branching 1–3 px lines, only a few % darker than the surface

A pixel is in the mask iff the defect changed one of its channels by at least the kind's
:data:`MASK_THRESHOLDS` (grey levels: :data:`MASK_THRESHOLD` for all but ``thin_crack``, whose
crisp, faint lines are masked wherever they changed a pixel at all); draws that are too faint on
average (:data:`MIN_CONTRAST`) or too small or large (:data:`DEFECT_AREA`) are redrawn.
"""
from __future__ import annotations

import logging
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from hgad_edge.data._photos import _photo, _warp

log = logging.getLogger(__name__)

DEFECT_TYPES = ("scratch", "stain", "contamination", "hole", "blur")
STRESS_TYPES = ("large", "lookalike", "thin_crack")
MASK_THRESHOLD = 10  # grey levels; smaller changes are invisible and stay out of the mask
MASK_THRESHOLDS = {**{k: MASK_THRESHOLD for k in DEFECT_TYPES + STRESS_TYPES}, "thin_crack": 1}
MIN_DEFECT_AREA = 0.003  # fraction of the image
MAX_DEFECT_AREA = 0.04
DEFECT_AREA = {**{k: (MIN_DEFECT_AREA, MAX_DEFECT_AREA) for k in DEFECT_TYPES}, "large": (0.05, 0.25),
               "lookalike": (0.03, 0.20), "thin_crack": (0.001, 0.03)}
# Least mean change (grey levels) inside the mask, per defect type: a defect must be plainly
# visible (a blur changes only what has detail, so it gets a lower bar) -- except a thin crack,
# which is meant to be faint (its depth is bounded by CRACK_DEPTH instead).
MIN_CONTRAST = {"scratch": 35.0, "stain": 35.0, "contamination": 35.0, "hole": 35.0, "blur": 25.0,
                "large": 25.0, "lookalike": 25.0, "thin_crack": 3.0}
CRACK_DEPTH = (0.05, 0.12)  # a thin crack darkens the pixels it crosses by this fraction
_SS = 4  # supersampling of rasterised shapes (anti-aliased edges)
_FOREIGN = ("coffee", "chelsea", "rocket", "astronaut", "colorwheel", "coins", "moon", "camera",
            "hubble_deep_field", "immunohistochemistry", "brick", "grass", "gravel")


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


def _large(img: np.ndarray, c: np.ndarray, u: float, rng: np.random.Generator) -> np.ndarray:
    size = img.shape[0]
    radius = rng.uniform(0.15, 0.34) * size
    cover = _soft(_fill(_blob(c, radius, rng, 0.7), size), radius * rng.uniform(0.05, 0.25))
    alpha = cover * rng.uniform(0.6, 0.9) * (0.7 + 0.3 * _lowfreq(rng, size, 6))
    kind = rng.random()
    if kind < 0.3:  # discoloured (faded paint, heat tint, water damage): tinted (BGR multipliers)
        tints = ((0.6, 0.8, 1.0), (1.0, 0.85, 0.6), (0.7, 1.0, 0.75), (0.85, 0.7, 0.95))
        target = img * np.array(tints[int(rng.integers(len(tints)))], np.float32)
    elif kind < 0.55:  # a big damp or oily patch: darker
        target = img * rng.uniform(0.45, 0.75)
    elif kind < 0.8:  # sun-faded / dusty: lighter
        target = img + (255 - img) * rng.uniform(0.3, 0.55)
    else:  # worn or washed out: the texture's contrast gone, a little lighter
        import cv2

        flat = cv2.GaussianBlur(img, (0, 0), rng.uniform(4.0, 8.0) * u)
        target = flat + (255 - flat) * rng.uniform(0.1, 0.3)
    return img + alpha[..., None] * (target - img)


def _lookalike(img: np.ndarray, c: np.ndarray, u: float, rng: np.random.Generator,
               donor: np.ndarray) -> np.ndarray:
    size = img.shape[0]
    radius = rng.uniform(0.11, 0.30) * size
    hard = rng.random() < 0.5
    edge = 0.5 * u if hard else radius * rng.uniform(0.1, 0.25)
    cover = _soft(_fill(_blob(c, radius, rng, 0.8), size), edge)
    return img + cover[..., None] * (donor.astype(np.float32) - img)


def _crack_path(rng: np.random.Generator, start: np.ndarray, angle: float, length: float,
                u: float) -> np.ndarray:
    """A jagged, roughly straight polyline (n, 2) of about ``length`` from ``start``."""
    step = max(1.0, 3.0 * u)
    pts, a = [np.asarray(start, np.float64)], angle
    for _ in range(max(2, int(length / step))):
        a += rng.normal(0.0, 0.35) + 0.15 * (angle - a)  # zig-zag, but keep the heading
        pts.append(pts[-1] + step * np.array([np.cos(a), np.sin(a)]))
    return np.array(pts)


def _thin_crack(img: np.ndarray, c: np.ndarray, u: float, rng: np.random.Generator) -> np.ndarray:
    import cv2

    size = img.shape[0]
    length = rng.uniform(0.35, 0.7) * size
    heading = rng.uniform(0, 2 * np.pi)
    halves = [_crack_path(rng, c, heading + k * np.pi, length / 2, u) for k in (0, 1)]
    main = np.concatenate([halves[1][::-1], halves[0][1:]])
    width = int(np.clip(round(rng.uniform(1.0, 3.0) * u), 1, 3))
    # crisp lines (no anti-aliasing): the crack is exactly the pixels drawn
    canvas = np.zeros((size, size), np.uint8)
    n = len(main)
    cv2.polylines(canvas, [np.round(main).astype(np.int32)], False, 1, max(1, width - 1), cv2.LINE_8)
    cv2.polylines(canvas, [np.round(main[n // 4:3 * n // 4]).astype(np.int32)], False, 1, width, cv2.LINE_8)
    paths = [main]
    for _ in range(int(rng.integers(1, 5))):  # branches, some branching again
        parent = paths[int(rng.integers(len(paths)))]
        i = int(rng.integers(max(1, len(parent) // 6), max(2, 5 * len(parent) // 6)))
        d = parent[min(i + 1, len(parent) - 1)] - parent[max(i - 1, 0)]
        a = np.arctan2(d[1], d[0]) + rng.choice((-1.0, 1.0)) * np.deg2rad(rng.uniform(25, 70))
        branch = _crack_path(rng, parent[i], a, rng.uniform(0.15, 0.4) * length, u)
        cv2.polylines(canvas, [np.round(branch).astype(np.int32)], False, 1, max(1, width - 1), cv2.LINE_8)
        paths.append(branch)
    depth = rng.uniform(*CRACK_DEPTH) * (0.75 + 0.25 * _lowfreq(rng, size, 8))
    return img * (1 - (canvas * depth)[..., None])


def _texture_energy(img: np.ndarray, u: float) -> np.ndarray:
    """Local high-frequency energy (H, W): where a blur would visibly change the image."""
    import cv2

    gray = img.mean(axis=2).astype(np.float32)
    detail = np.abs(gray - cv2.GaussianBlur(gray, (0, 0), 3.0 * u))
    return cv2.GaussianBlur(detail, (0, 0), 8.0 * u)


_DEFECTS: Dict[str, Callable[..., np.ndarray]] = {
    "scratch": _scratch, "stain": _stain, "contamination": _contamination, "hole": _hole, "blur": _blur,
    "large": _large, "lookalike": _lookalike, "thin_crack": _thin_crack}


def _exact_mask(base: np.ndarray, out: np.ndarray, min_pixels: int,
                threshold: int = MASK_THRESHOLD) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Round ``out``; mask = changed by ≥ ``threshold``; specks smaller than ``min_pixels`` are
    put back to ``base`` so the mask stays exactly the set of visibly changed pixels."""
    import cv2

    res = np.clip(out, 0, 255).round().astype(np.uint8)
    diff = np.abs(res.astype(np.int16) - base.astype(np.int16)).max(axis=2)
    mask = diff >= threshold
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
                      area: Optional[Tuple[float, float]] = None, min_contrast: Optional[float] = None,
                      max_tries: int = 80, donor: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Draw one synthetic defect on a copy of ``image`` and return it with its exact mask.

    Args:
        image: BGR uint8 (S, S, 3) normal image.
        kind: one of :data:`DEFECT_TYPES` or :data:`STRESS_TYPES`.
        rng: random generator (consumed).
        region: ``(cx, cy, r)`` as fractions of S: the defect centre is drawn inside this disc;
            default anywhere at least 12 % of S from the border.
        own_source: photograph the image comes from; foreign material never comes from it.
        area: accepted mask area as a fraction of the image; draws outside are redrawn.
            Default :data:`DEFECT_AREA` of ``kind``.
        min_contrast: least mean change (grey levels, largest channel) inside the mask;
            fainter draws are redrawn. Default :data:`MIN_CONTRAST` of ``kind``. When no draw
            reaches it, the most visible draw within ``area`` is used.
        max_tries: redraws before giving up.
        donor: for ``lookalike`` (required there, ignored otherwise): an image of the same shape
            (another class's normal image) that the pasted region is cut from.

    Returns:
        ``(defective uint8 image, bool mask)``: the mask is True exactly where some channel
        changed by at least :data:`MASK_THRESHOLDS` of ``kind``; every other pixel changed by less.

    Raises:
        ValueError: unknown ``kind``, a non-square / non-BGR image, or a missing / mis-shaped donor.
        RuntimeError: no draw fell within ``area`` after ``max_tries``.
    """
    if kind not in _DEFECTS:
        raise ValueError(f"unknown defect type {kind!r}; choose from {', '.join(DEFECT_TYPES + STRESS_TYPES)}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] != image.shape[1] or image.dtype != np.uint8:
        raise ValueError(f"expected a square BGR uint8 image, got {image.shape} {image.dtype}")
    if kind == "lookalike" and (donor is None or donor.shape != image.shape):
        raise ValueError(f"a lookalike defect needs a donor image of shape {image.shape}, got "
                         f"{None if donor is None else donor.shape}")
    size = image.shape[0]
    u = size / 256.0
    base = image.astype(np.float32)
    min_pixels = max(3, int(round(size * size * 0.0002)))
    energy = _texture_energy(base, u) if kind == "blur" else None
    min_contrast = MIN_CONTRAST[kind] if min_contrast is None else min_contrast
    area = DEFECT_AREA[kind] if area is None else area
    best: Optional[Tuple[float, np.ndarray, np.ndarray]] = None
    for _ in range(max_tries):
        centers = [_draw_center(rng, size, region) for _ in range(6 if energy is not None else 1)]
        # a blur only shows on texture: take the most textured of a few candidate places
        c = max(centers, key=lambda p: energy[int(p[1]), int(p[0])]) if energy is not None else centers[0]
        fn = _DEFECTS[kind]
        if kind == "contamination":
            out = fn(base, c, u, rng, own_source)
        elif kind == "lookalike":
            out = fn(base, c, u, rng, donor)
        else:
            out = fn(base, c, u, rng)
        res, mask, diff = _exact_mask(image, out, min_pixels, MASK_THRESHOLDS[kind])
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
