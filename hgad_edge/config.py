"""Frozen configuration dataclasses, one per concern. Built only in the CLI layer."""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, Dict, Tuple

# A feature level: (index into the backbone's feature stages, input scale relative to S).
Level = Tuple[int, float]


def default_pool(levels) -> Tuple[int, ...]:
    """3×3 neighbourhood averaging at the full-scale levels, none at downscaled ones.

    Measured on the demo dataset (20 epochs, "position" map, class known, README "Accuracy"):
    no pooling 0.925 / 0.901 mean image / pixel AUROC; 3×3 at every level 0.941 / 0.945; 3×3 at
    the stride-8 level only 0.946 / 0.923; 3×3 at the two full-scale levels 0.953 / 0.938; 5×5 at
    every level 0.895 / 0.946 (too coarse for the 8×8 map of the S/2 level).
    """
    return tuple(3 if float(scale) == 1.0 else 1 for _, scale in levels)


def check_pool(pool: Tuple[int, ...], n_levels: int) -> None:
    """Refuse pool windows that are not one odd size >= 1 per level."""
    if len(pool) != n_levels or any(k < 1 or k % 2 == 0 for k in pool):
        raise ValueError(f"pool needs one odd window >= 1 per level ({n_levels} levels), got {list(pool)}")


MAX_IMAGE_SIZE = 4096  # S beyond this does not fit a backbone pass in memory on any edge box


def _number(name: str, value: Any, lo: float, hi: float = math.inf, lo_open: bool = False, hi_open: bool = False,
            integer: bool = False) -> None:
    """Refuse (``ValueError`` naming the setting, its flag and the accepted range) a value that is
    not a finite number in the range; NaN and ±inf are never accepted."""
    kind = numbers.Integral if integer else numbers.Real
    ok = isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        flag = "--" + name.replace("_", "-")
        fmt = (lambda v: str(int(v))) if integer else (lambda v: f"{v:g}")
        if hi == math.inf:
            rng = f"{'>' if lo_open else '>='} {fmt(lo)}"
        else:
            rng = f"in {'(' if lo_open else '['}{fmt(lo)}, {fmt(hi)}{')' if hi_open else ']'}"
        what = "an integer" if integer else "a finite number"
        raise ValueError(f"{name} ({flag}) must be {what} {rng}, got {value!r}")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one HGAD model.

    Attributes:
        class_names: the product classes the unified model covers (order = class index).
        backbone: timm model name (efficientnet_lite0/1/2 load real ImageNet weights offline).
        image_size: S, the square input side in pixels.
        levels: (stage index, input scale) per feature level. The official HGAD uses the same
            stride-16 stage at S, S/2 and S/4 (``3@1,3@0.5,3@0.25``). The default replaces the S/4
            level (a 4×4 map at 256²) with the stride-8 stage at S (32×32): measured on the demo
            dataset with the "position" map, 20 epochs: pixel AUROC +0.01 to +0.03 over the official
            levels in three trainings (``benchmarks/accuracy_sweep.py``, README "Accuracy").
        coupling_blocks: FrEIA AllInOneBlocks per flow.
        clamp: affine clamping of the coupling blocks.
        pos_dim: channels of the 2-D sin/cos positional condition.
        hidden_ratio: width of the coupling subnet relative to its input.
        n_intra: K, intra-class mixed centers per class.
        center_scale: value written into each class's identity block of the initial centers.
        pool: per level, an odd window of feature-cell averaging (PatchCore's local aggregation:
            a cell describes its neighbourhood, so texture noise averages out and a defect shows
            up in every cell that touches it); empty = ``default_pool(levels)``.
        pad: reflect padding (pixels at scale 1) added before the backbone and cropped off the
            feature maps afterwards; 0 = none.
    """

    class_names: Tuple[str, ...]
    backbone: str = "efficientnet_lite0"
    image_size: int = 256
    levels: Tuple[Level, ...] = ((2, 1.0), (3, 1.0), (3, 0.5))
    coupling_blocks: int = 8
    clamp: float = 1.9
    pos_dim: int = 128
    hidden_ratio: float = 2.0
    n_intra: int = 10
    center_scale: float = 1.0
    pad: int = 0
    pool: Tuple[int, ...] = ()

    def __post_init__(self):
        names = self.class_names
        if (not names or any(not isinstance(n, str) or not n.strip() for n in names)
                or len(set(names)) != len(names)):
            raise ValueError(f"class_names must be distinct non-empty names, got {list(names)}")
        _number("image_size", self.image_size, 32, MAX_IMAGE_SIZE, integer=True)
        if not self.levels:
            raise ValueError("levels (--levels) needs at least one stage@scale level")
        for lv in self.levels:
            stage, scale = lv
            if (isinstance(stage, bool) or not isinstance(stage, numbers.Integral) or stage < 0
                    or not isinstance(scale, numbers.Real) or not 0 < scale <= 1):  # NaN fails 0 < scale
                raise ValueError(f"levels (--levels): each level is stage@scale with a stage index >= 0 and a "
                                 f"scale in (0, 1], got {stage}@{scale}")
        _number("coupling_blocks", self.coupling_blocks, 1, integer=True)
        _number("n_intra", self.n_intra, 1, integer=True)
        _number("pad", self.pad, 0, integer=True)
        _number("clamp", self.clamp, 0, lo_open=True)
        _number("hidden_ratio", self.hidden_ratio, 0, lo_open=True)
        _number("center_scale", self.center_scale, 0, lo_open=True)
        if not isinstance(self.pos_dim, numbers.Integral) or self.pos_dim < 4 or self.pos_dim % 4:
            raise ValueError(f"pos_dim must be a multiple of 4 (2-D sin/cos encoding), got {self.pos_dim!r}")
        if not self.pool:  # the default rule, written out so the artifact records what ran
            object.__setattr__(self, "pool", default_pool(self.levels))
        pool = tuple(int(k) for k in self.pool)
        object.__setattr__(self, "pool", pool * len(self.levels) if len(pool) == 1 else pool)
        check_pool(self.pool, len(self.levels))

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["class_names"] = list(self.class_names)
        d["levels"] = [list(lv) for lv in self.levels]
        d["pool"] = list(self.pool)
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {sorted(unknown)}; known: {sorted(known)}")
        d = dict(d)
        d["class_names"] = tuple(d["class_names"])
        d["levels"] = tuple((int(a), float(b)) for a, b in d.get("levels", cls.levels))
        d["pool"] = tuple(d.get("pool", ()))  # artifacts from before pooling: see artifact.MIGRATIONS
        return cls(**d)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings.

    Official HGAD: lr 2e-4, λ2 = 100, betas (0.95, 0.99), centers at 3× lr. Measured on the demo
    dataset (6 classes, 48 training images each, 20 epochs, 256², see README "Accuracy"), the
    official lr/λ2 leave the flow far from converged within a CPU budget (mean image/pixel AUROC
    0.56/0.61 after 12 epochs) and λ2 = 100 makes the mutual-information term dominate the
    density fit; lr 2e-3 with λ2 = 1 reached 0.86/0.84 in the same time, so those are the
    defaults. ``--lr 2e-4 --lambda-mi 100`` restores the official values. 25 epochs instead of 20
    (default model, class known): 0.953 / 0.938 → 0.960 / 0.943 on the demo dataset, 0.940 / 0.938
    → 0.952 / 0.943 on a second draw of it (seed 1), for 25 % more training time.
    """

    epochs: int = 25
    batch_size: int = 8
    lr: float = 2e-3
    betas: Tuple[float, float] = (0.95, 0.99)
    center_lr_mult: float = 3.0
    lambda1: float = 1.0
    lambda2: float = 1.0
    label_smoothing: float = 0.02
    stage1_epochs: int = 2
    warmup_epochs: int = 1
    calib_fraction: float = 0.2
    target_fpr: float = 0.01
    seed: int = 0
    num_workers: int = 0
    augment: bool = False

    def __post_init__(self):
        # Refused here, before anything runs: a NaN rate or weight trains for the full time and
        # writes a model that never fires; 0 epochs writes an untrained one.
        _number("epochs", self.epochs, 1, integer=True)
        _number("batch_size", self.batch_size, 1, integer=True)
        _number("lr", self.lr, 0, lo_open=True)
        if len(self.betas) != 2:
            raise ValueError(f"betas needs two values in [0, 1), got {self.betas!r}")
        for b in self.betas:
            _number("betas", b, 0, 1, hi_open=True)
        _number("center_lr_mult", self.center_lr_mult, 0, lo_open=True)
        _number("lambda1", self.lambda1, 0)
        if not (isinstance(self.lambda2, numbers.Real) and math.isfinite(self.lambda2) and self.lambda2 >= 0):
            raise ValueError(f"lambda2 (--lambda-mi) must be a finite number >= 0, got {self.lambda2!r}")
        _number("label_smoothing", self.label_smoothing, 0, 1, hi_open=True)
        _number("stage1_epochs", self.stage1_epochs, 0, integer=True)
        _number("warmup_epochs", self.warmup_epochs, 0, integer=True)
        _number("calib_fraction", self.calib_fraction, 0, 1, hi_open=True)
        _number("target_fpr", self.target_fpr, 0, 1, lo_open=True, hi_open=True)
        _number("seed", self.seed, 0, 2**32 - 1, integer=True)
        _number("num_workers", self.num_workers, 0, integer=True)
