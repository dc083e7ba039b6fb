"""Adding product classes to a trained model: ``hgad-edge train --from RUN --classes new --out RUN2``.

The child model starts from the parent's weights. Per level, every new class gets a main center
placed orthogonally to the existing ones (``place_new_centers``), K intra-class centers drawn
like a fresh model's, and an inter-class weight at the mean of the old log-weights; the old
class indices stay, the new ones are appended. The feature standardisation of the flow inputs
is the parent's (moving it would move every old class's log-likelihoods). Flows and priors are
then fine-tuned for a few epochs on the new classes' features plus a *replay* of the old
classes, so the shared flow does not forget them:

* ``images``: the old classes' training images, re-read from ``--data`` (those the parent held
  out for calibration stay held out);
* ``buffer``: the mosaic feature buffer the parent stored (``replay.safetensors``,
  ``hgad_edge.train.replay``), for when the old images are gone;
* ``none``: no replay (only to measure what replay buys).

The new classes are calibrated on their held-out normal images. The old classes keep the
parent's calibration unless their scores moved: their held-out images (listed in the parent
artifact) are scored by parent and child with the parent's normalizer, and a class whose scores
moved by more than ``DRIFT_TOL`` of its calibrated spread is recalibrated on them. The artifact
records the step in ``Artifact.lineage`` (parent checksums, classes, epochs, replay, drift).
README "Adding a product class" has the measurements behind the defaults.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

from hgad_edge import artifact, data, fileio
from hgad_edge.artifact import Artifact
from hgad_edge.calibrate import calibrate_class, threshold
from hgad_edge.config import TrainConfig
from hgad_edge.model.hgad import HGAD
from hgad_edge.postprocess import score_map
from hgad_edge.runtime.eager import load_model
from hgad_edge.train import distributed, loop, replay as replay_mod
from hgad_edge.train.defaults import (ADD_EPOCHS, DRIFT_TOL, FLOW_LR_MULT, REPLAY_MODES, REPLAY_PER_CLASS,
                                      REPLAY_PER_EPOCH)

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- the model
@torch.no_grad()
def place_new_centers(mu_old: torch.Tensor, n_new: int, seed: int = 0) -> torch.Tensor:
    """Main centers (n_new, D) for new classes, well apart from the ``mu_old`` (C, D) ones.

    The extension of ``_separated_centers`` (one block of coordinates per class: orthogonal
    centers): each new center points in a random direction orthogonal to every old center and
    to the new ones placed before it (Gram–Schmidt in float64), with the mean norm of the old
    centers, so its distance to old center c is √(|μ_new|² + |μ_c|²). With more classes than
    dimensions no orthogonal direction is left: the best of 256 random directions (largest
    distance to its nearest existing center) is taken instead.
    """
    c, d = mu_old.shape
    g = torch.Generator().manual_seed(int(seed) * 7 + 1)
    norm = float(mu_old.double().norm(dim=1).mean()) if c else 1.0
    placed = [row.double() for row in mu_old]
    out = []
    for _ in range(n_new):
        if len(placed) < d:
            basis = (torch.linalg.qr(torch.stack(placed).t())[0] if placed
                     else torch.zeros(d, 0, dtype=torch.float64))
            v = torch.randn(d, generator=g, dtype=torch.float64)
            for _ in range(2):  # twice: orthogonal to float64 precision
                v = v - basis @ (basis.t() @ v)
        else:
            cand = torch.randn(256, d, generator=g, dtype=torch.float64)
            cand = cand / cand.norm(dim=1, keepdim=True) * norm
            v = cand[torch.cdist(cand, torch.stack(placed)).min(dim=1).values.argmax()]
        v = v / v.norm() * norm
        placed.append(v)
        out.append(v)
    return torch.stack(out).to(mu_old.dtype) if out else mu_old.new_zeros(0, d)


@torch.no_grad()
def extend_model(parent: HGAD, new_classes: Sequence[str], seed: int = 0) -> HGAD:
    """A copy of ``parent`` with prior rows for ``new_classes`` appended (old class indices kept).

    Backbone, flows and the feature standardisation are the parent's. Per level: new main
    centers from ``place_new_centers``; ``phi_inter`` of a new class = the mean of the old ones;
    intra-class offsets ~ N(0, 1) and ``phi_intra`` = 0, as a fresh model draws them.
    """
    old = list(parent.cfg.class_names)
    cfg = dataclasses.replace(parent.cfg, class_names=tuple(old) + tuple(new_classes))
    child = HGAD(cfg, backbone_weights="none")
    child.backbone.load_state_dict(parent.backbone.state_dict())
    child.load_state_dict({k: v for k, v in parent.trainable_state().items() if not k.startswith("priors.")},
                          strict=False)
    g = torch.Generator().manual_seed(int(seed) * 7 + 2)
    n_new = len(new_classes)
    for l, (p_old, p_new) in enumerate(zip(parent.priors, child.priors)):
        k1, d = p_old.mu_delta.shape[1:]
        p_new.mu.copy_(torch.cat([p_old.mu, place_new_centers(p_old.mu, n_new, seed * 131 + l)]))
        p_new.phi_inter.copy_(torch.cat([p_old.phi_inter, p_old.phi_inter.mean().expand(n_new)]))
        p_new.mu_delta.copy_(torch.cat([p_old.mu_delta, torch.randn(n_new, k1, d, generator=g)]))
        p_new.phi_intra.copy_(torch.cat([p_old.phi_intra, torch.zeros(n_new, k1 + 1)]))
    return child


def make_optimizer(model: HGAD, cfg: TrainConfig, flow_lr_mult: float) -> torch.optim.Adam:
    """``loop.make_optimizer`` with the flows at ``flow_lr_mult`` × ``cfg.lr`` (centers at ``center_lr_mult`` ×)."""
    return torch.optim.Adam([
        {"params": [p for p in model.flows.parameters() if p.requires_grad], "lr": cfg.lr * flow_lr_mult,
         "name": "flows"},
        {"params": list(model.priors.parameters()), "lr": cfg.lr * cfg.center_lr_mult, "name": "centers"},
    ], betas=cfg.betas)


# ----------------------------------------------------------------------------- inputs
def check_new_classes(parent: Artifact, data_root: str, classes) -> Tuple[str, ...]:
    """The classes to add, checked: named, not in the model yet, present in ``data_root``."""
    names = [c.strip() for c in classes.split(",")] if isinstance(classes, str) else [str(c).strip() for c in
                                                                                    (classes or ())]
    names = [c for c in names if c]
    if not names:
        raise ValueError(f"--classes must name the class(es) to add to the model; it has {parent.class_names}, "
                         f"{data_root!r} has {data.list_classes(data_root)}")
    known = [c for c in names if c in parent.class_names]
    if known:
        raise ValueError(f"class(es) {known} are already in the model {parent.run_dir} (its classes: "
                         f"{', '.join(parent.class_names)}); --classes names only the classes to add")
    return data.resolve_classes(data_root, names)  # unknown or repeated names: ValueError listing the valid ones


def _relpaths(parent: Artifact) -> List[str]:
    return [os.path.normpath(p) for p in parent.data.get("calibration_files", [])]


def _find(rel: str, roots: Sequence[str]) -> Optional[str]:
    for root in roots:
        path = os.path.join(root, rel)
        if root and os.path.isfile(path):
            return path
    return None


def old_calibration_samples(parent: Artifact, data_root: str) -> List[data.Sample]:
    """The parent's held-out normal images that can still be read: under ``data_root`` first,
    else under the data root recorded in the parent."""
    out = []
    roots = [data_root, parent.data.get("root", "")]
    for rel in _relpaths(parent):
        name = rel.split(os.sep)[0]
        path = _find(rel, roots)
        if name in parent.class_names and path:
            out.append(data.Sample(path, name, parent.class_names.index(name), data.GOOD, None, False))
    return out


def old_fit_samples(parent: Artifact, data_root: str) -> List[data.Sample]:
    """The old classes' training images in ``data_root``, without the ones the parent held out."""
    held = set(_relpaths(parent))
    out = []
    for c, name in enumerate(parent.class_names):
        for path in data.images_in(os.path.join(data_root, name, "train", data.GOOD)):
            if os.path.normpath(os.path.relpath(path, data_root)) not in held:
                out.append(data.Sample(path, name, c, data.GOOD, None, False))
    return out


@dataclasses.dataclass(frozen=True)
class ReplayPlan:
    """Which old classes are rehearsed from their images and which from the parent's buffer."""

    kind: str  # "images", "buffer", "images+buffer" or "none"
    image_classes: Tuple[str, ...]
    buffer_classes: Tuple[str, ...]


def plan_replay(mode: str, has_buffer: bool, old_fit: Sequence[data.Sample], parent: Artifact,
                data_root: str) -> ReplayPlan:
    """``auto``: every old class whose training images ``data_root`` still has from them, the
    others from the parent's buffer; ``images`` / ``buffer``: all from one; ``none``: nothing."""
    if mode not in REPLAY_MODES:
        raise ValueError(f"unknown replay {mode!r}; choose one of {', '.join(REPLAY_MODES)}")
    present = {s.class_name for s in old_fit}
    have = tuple(c for c in parent.class_names if c in present)
    missing = [c for c in parent.class_names if c not in present]
    if mode == "none":
        return ReplayPlan("none", (), ())
    if mode == "images" and missing:
        raise ValueError(f"--replay images: {data_root!r} has no training images of the model's class(es) {missing}")
    if mode == "buffer" and not has_buffer:
        raise ValueError(f"--replay buffer: {parent.run_dir} has no {replay_mod.REPLAY} (trained before replay "
                         "buffers, or with --replay-buffer 0); use --replay images")
    if mode == "buffer":
        return ReplayPlan("buffer", (), tuple(parent.class_names))
    if mode == "auto" and missing and not has_buffer:
        raise ValueError(f"no replay for the model's class(es) {missing}: {data_root!r} has no training images of "
                         f"them and {parent.run_dir} has no {replay_mod.REPLAY}; point --data at a dataset that "
                         "still has them, or pass --replay none (the old classes may then be forgotten)")
    buffered = tuple(missing)
    kind = "+".join(k for k, on in (("images", have), ("buffer", buffered)) if on)
    return ReplayPlan(kind, have, buffered)


def parent_digest(parent: Artifact) -> Dict[str, str]:
    """The checksums that identify the parent: its model.json and weights."""
    return {"model_json_sha256": fileio.sha256(parent.path(artifact.META)),
            "weights_sha256": parent.files[artifact.WEIGHTS]}


# ----------------------------------------------------------------------------- calibration
def score_drift(parent_raws, child_raws, parent: Artifact) -> Dict[str, float]:
    """Per old class: how far its held-out images' scores moved from parent to child, both scored
    with the parent's calibration: the largest |score(child) − score(parent)| over the images and
    over every calibrated map, each in units of that map's calibrated spread for the class."""
    size = parent.image_size
    out = {}
    for c, name in enumerate(parent.class_names):
        pr = [r for r in parent_raws if r.class_index == c]
        cr = [r for r in child_raws if r.class_index == c]
        if not pr:
            continue
        norm = parent.normalizer(name)
        worst = 0.0
        for mode in parent.calibrated_maps():
            # the spread at an FPR the scores resolve (threshold extrapolates finer ones, which
            # would widen the unit and make the drift depend on the target FPR)
            stored = parent.scores(name, mode)
            _, spread = threshold(stored, min(0.5, max(parent.target_fpr, 1.0 / len(stored))))
            # the stored normalizer as the Detector applies it (no leave-one-out: that is for the
            # calibration scores, and would move the means with the frames scored here)
            sp = np.array([score_map(r, norm, size, mode)[1] for r in pr])
            sc = np.array([score_map(r, norm, size, mode)[1] for r in cr])
            worst = max(worst, float(np.max(np.abs(sc - sp)) / spread))
        out[name] = worst
    return out


def _raws(model: HGAD, images, labels, batch_size: int, progress: bool, desc: str):
    return loop.score_raws(model, images, labels, batch_size, progress, desc)


def finished_child(out_dir: str, parent: Artifact, new: Sequence[str], train_cfg: TrainConfig,
                   resume: bool) -> Artifact:
    """``out_dir`` already holds a model: with ``resume``, when it is this very addition (same
    parent checksums, classes and epochs) it is the result, kept as it is (exports included); a
    re-run of a finished command is a no-op, like ``train --resume`` (``loop.finished_model``).
    Anything else is refused, never trained over."""
    if not resume:
        raise ValueError(f"{out_dir} already holds a trained model; choose a new --out (--resume only finishes an "
                         "interrupted addition, or confirms a finished one with the same settings)")
    art = Artifact.read(out_dir)
    step = art.lineage[-1] if art.lineage else {}
    digest = parent_digest(parent)
    same = (bool(step) and all(step.get("parent", {}).get(k) == v for k, v in digest.items())
            and step.get("added_classes") == list(new) and step.get("epochs") == int(train_cfg.epochs)
            and list(art.class_names) == list(parent.class_names) + list(new))
    if not same:
        raise ValueError(f"{out_dir} already holds another model (not {parent.run_dir} + {', '.join(new)} in "
                         f"{train_cfg.epochs} epochs); --resume continues an interrupted addition only: choose a new "
                         "--out")
    log.info("%s already holds this finished addition: nothing to do, kept as it is", out_dir)
    return art


# ----------------------------------------------------------------------------- the driver
def add_classes(parent_dir: str, data_root: str, new_classes, out_dir: str, train_cfg: TrainConfig,
                resume: bool = False, progress: bool = True, replay: str = "auto",
                flow_lr_mult: float = FLOW_LR_MULT, target_fpr: Optional[float] = None,
                replay_per_class: Optional[int] = None, drift_tol: float = DRIFT_TOL,
                replay_per_epoch: int = REPLAY_PER_EPOCH) -> Artifact:
    """Add ``new_classes`` (from ``data_root``) to the model in ``parent_dir``; write ``out_dir``.

    ``train_cfg`` is the fine-tuning: its ``epochs`` (``ADD_EPOCHS`` from the CLI by default),
    ``lr`` (flows at ``flow_lr_mult`` × it), batch size, λ2, seed, and ``calib_fraction`` for the
    new classes. ``target_fpr``: the child's default FPR (None: the parent's). ``replay``: one of
    ``REPLAY_MODES``. ``replay_per_class``: mosaics per class in the child's replay buffer (None:
    as many as the parent's buffer has, else ``REPLAY_PER_CLASS``; 0: none). Under
    ``torchrun`` it runs like ``train``: sharded features, all-reduced gradients, rank 0 writes.
    """
    t_start = time.perf_counter()
    parent = Artifact.read(parent_dir)
    if os.path.realpath(out_dir) == os.path.realpath(parent_dir):
        raise ValueError(f"--out {out_dir} is the parent model itself; choose a new folder")
    new = check_new_classes(parent, data_root, new_classes)
    old = parent.class_names
    n_old = len(old)
    new_samples = [dataclasses.replace(s, class_index=s.class_index + n_old) for s in data.train_samples(data_root, new)]
    fit_new, calib_new = data.split_calibration(new_samples, train_cfg.calib_fraction, train_cfg.seed)
    lacking = [c for c in new if not any(s.class_name == c for s in calib_new)]
    if lacking:
        raise ValueError(f"class(es) {lacking} have no held-out calibration image: each class needs at least "
                         "2 train/good images (or raise --calib-fraction)")
    buffer = replay_mod.load_buffer(parent)
    old_fit = old_fit_samples(parent, data_root)
    plan = plan_replay(replay, buffer is not None, old_fit, parent, data_root)
    old_calib = old_calibration_samples(parent, data_root)
    if os.path.exists(os.path.join(out_dir, artifact.META)):
        return finished_child(out_dir, parent, new, train_cfg, resume)
    info = distributed.current()
    dist_info = info if info.enabled else None
    progress = progress and info.is_main
    calib_images = loop.load_images(calib_new, progress, "load calibration") if info.is_main else []
    old_calib_images = loop.load_images(old_calib, progress, "load old calibration") if info.is_main else []

    # One epoch's samples, in global order: the new classes' training images, then fresh mosaics of
    # the old classes replayed from their images (drawn anew every epoch from all their images'
    # features), then the parent's buffer rows of the old classes replayed from it.
    old_img = [s for s in old_fit if s.class_name in plan.image_classes]
    old_img_labels = torch.tensor([s.class_index for s in old_img], dtype=torch.long)
    image_classes = [old.index(c) for c in plan.image_classes]
    n_new, n_mos = len(fit_new), replay_per_epoch * len(image_classes)
    buf_feats, buf_labels = None, torch.zeros(0, dtype=torch.long)
    if plan.buffer_classes:
        rows = torch.isin(buffer[1], torch.tensor([old.index(c) for c in plan.buffer_classes]))
        buf_feats, buf_labels = [f[rows] for f in buffer[0]], buffer[1][rows]
    n_total = n_new + n_mos + int(buf_labels.numel())
    if dist_info is not None and min(n_new, len(old_img) or info.world) < info.world:
        raise ValueError(f"{n_new} new / {len(old_img)} old training images cannot be shared by {info.world} "
                         "processes")
    os.makedirs(out_dir, exist_ok=True)
    ckpt = os.path.join(out_dir, loop.CHECKPOINT)
    digest = parent_digest(parent)
    loop.seed_everything(train_cfg.seed)
    parent_model = load_model(parent)
    model = extend_model(parent_model, new, train_cfg.seed)
    mcfg = model.cfg
    opt = make_optimizer(model, train_cfg, flow_lr_mult)
    steps = math.ceil(n_total / train_cfg.batch_size)
    start, history = 0, []
    loop.remove_stale_temporaries(out_dir)
    if resume and os.path.exists(ckpt):
        saved = loop.checkpoint_metadata(ckpt).get("parent", "")
        if saved != json.dumps(digest, sort_keys=True):
            raise ValueError(f"{ckpt} was written while adding classes to another parent model (or by a "
                             "from-scratch training); train into a new --out or drop --resume")
        start, history = loop._load_checkpoint(ckpt, model, opt, mcfg)
        log.info("resuming after epoch %d from %s", start, ckpt)
    elif resume:
        log.info("--resume: no checkpoint in %s yet, starting from the parent", out_dir)
    sched = loop.make_scheduler(opt, train_cfg, steps, start * steps)

    # This rank's part: global index i with i % world == rank (distributed.shard), per segment.
    mine_new = [fit_new[i] for i in distributed.shard(n_new, info)]
    mine_old = [old_img[i] for i in distributed.shard(len(old_img), info)]
    mine_mos = torch.tensor([j for j in range(n_mos) if (n_new + j) % info.world == info.rank], dtype=torch.long)
    mine_buf = torch.tensor([j for j in range(int(buf_labels.numel()))
                             if (n_new + n_mos + j) % info.world == info.rank], dtype=torch.long)
    new_images = loop.load_images(mine_new, progress, "load new")
    old_images = loop.load_images(mine_old, progress, "load old (replay)")
    new_labels = torch.tensor([s.class_index for s in mine_new], dtype=torch.long)

    def image_features(augment=None) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        bs, show = train_cfg.batch_size, progress and augment is None
        new_f = loop.cache_features(model, new_images, bs, show, augment)
        old_f = loop.cache_features(model, old_images, bs, show, augment) if old_images else [f[:0] for f in new_f]
        return new_f, old_f

    def epoch_samples(epoch: int, new_f, old_f) -> Tuple[List[torch.Tensor], torch.Tensor]:
        parts, labels = [list(new_f)], [new_labels]
        if n_mos:
            mos, mos_y = replay_mod.build_buffer(old_f, old_img_labels, image_classes, replay_per_epoch,
                                                 train_cfg.seed * 7919 + 31 * epoch + 17, dist_info)
            parts.append([m[mine_mos].float() for m in mos])
            labels.append(mos_y[mine_mos])
        if buf_feats is not None:
            parts.append([b[mine_buf] for b in buf_feats])
            labels.append(buf_labels[mine_buf])
        return [torch.cat([p[l] for p in parts]) for l in range(len(new_f))], torch.cat(labels)

    new_f, old_f = image_features()
    bar = tqdm(range(start, train_cfg.epochs), desc="add classes", disable=not progress, initial=start,
               total=train_cfg.epochs)
    meta = {"parent": json.dumps(digest, sort_keys=True)}
    for epoch in bar:
        if train_cfg.augment:
            g = torch.Generator().manual_seed(train_cfg.seed * 7919 + epoch + 1000003 * info.rank)
            new_f, old_f = image_features(g)
        feats, labels = epoch_samples(epoch, new_f, old_f)
        stats = loop.train_epoch(model, feats, labels, opt, sched, train_cfg, epoch, progress, dist_info, n_total)
        history.append({"epoch": epoch + 1, **{k: round(v, 6) for k, v in stats.items()}})
        bar.set_postfix(loss=f"{stats['loss']:.3f}", mi=f"{stats['mi']:.3f}", gi=f"{stats['g_intra']:.3f}")
        if info.is_main:
            loop._save_checkpoint(ckpt, model, opt, epoch + 1, history, mcfg, train_cfg, extra=meta)

    # The child's replay buffer: fresh mosaics of every class trained from images here, the parent's
    # rows for the others (every rank joins the all-reduce that assembles them).
    per_class = replay_per_class if replay_per_class is not None else (
        buffer[2] if buffer is not None else REPLAY_PER_CLASS)
    new_buf = None
    if per_class:
        if train_cfg.augment:
            new_f, old_f = image_features()
        new_buf = replay_mod.build_buffer(new_f, torch.tensor([s.class_index for s in fit_new]),
                                          list(range(n_old, len(mcfg.class_names))), per_class, train_cfg.seed,
                                          dist_info)
        if old_img:
            new_buf = replay_mod.merge(new_buf, replay_mod.build_buffer(old_f, old_img_labels, image_classes,
                                                                        per_class, train_cfg.seed, dist_info))
        if buffer is not None:
            new_buf = replay_mod.merge((buffer[0], buffer[1]), new_buf)
    if not info.is_main:
        return distributed.broadcast_object(None)

    # Calibration: new classes on their held-out images; old ones kept unless their scores moved.
    model.eval()
    calibration = {name: parent.calibration[name] for name in old}
    if calib_images:
        raws = _raws(model, calib_images, [s.class_index for s in calib_new], train_cfg.batch_size, progress,
                     "calibrate new")
        for name in new:
            c = mcfg.class_names.index(name)
            calibration[name] = calibrate_class([r for r in raws if r.class_index == c], mcfg.image_size)
    drift: Dict[str, Optional[float]] = {name: None for name in old}
    recalibrated: List[str] = []
    if old_calib_images:
        old_labels = [s.class_index for s in old_calib]
        child_raws = _raws(model, old_calib_images, old_labels, train_cfg.batch_size, progress, "rescore old")
        parent_raws = _raws(parent_model, old_calib_images, old_labels, train_cfg.batch_size, progress,
                            "score old (parent)")
        drift.update(score_drift(parent_raws, child_raws, parent))
        for name in old:
            if drift[name] is not None and drift[name] > drift_tol:
                c = old.index(name)
                calibration[name] = calibrate_class([r for r in child_raws if r.class_index == c], mcfg.image_size)
                recalibrated.append(name)
    unmeasured = [n for n in old if drift[n] is None]
    if unmeasured:
        log.warning("no held-out image of class(es) %s found (under %s or %s): their calibration is kept from the "
                    "parent without a drift check", unmeasured, data_root, parent.data.get("root"))
    if recalibrated:
        log.info("recalibrated old class(es) %s: held-out scores moved by %s spreads (> %.2f)", recalibrated,
                 ", ".join(f"{drift[n]:.2f}" for n in recalibrated), drift_tol)

    rel = lambda p: os.path.relpath(p, data_root)  # noqa: E731
    data_info = {"root": os.path.abspath(data_root), "n_train": n_total, "n_calibration": len(calib_new),
                 "calibration_files": [rel(s.path) for s in old_calib]
                 + [r for r in _relpaths(parent) if _find(r, [data_root, parent.data.get("root", "")]) is None]
                 + [rel(s.path) for s in calib_new]}
    step = {"parent": {"run_dir": os.path.abspath(parent_dir), **digest, "classes": list(old)},
            "added_classes": list(new), "epochs": int(train_cfg.epochs), "flow_lr_mult": float(flow_lr_mult),
            "replay": {"kind": plan.kind, "image_classes": list(plan.image_classes),
                       "buffer_classes": list(plan.buffer_classes), "images": len(old_img),
                       "mosaics_per_epoch": n_mos,
                       "buffer_samples": int(buf_labels.numel()),
                       "buffer_mb": round(replay_mod.size_mb(buf_feats) if buf_feats is not None else 0.0, 3)},
            "calibration": {"drift_tolerance": drift_tol if math.isfinite(drift_tol) else None,  # null: none
                            "drift": drift, "recalibrated": recalibrated,
                            "new": list(new)},
            "train_s": round(time.perf_counter() - t_start, 1)}
    art = loop.write_artifact(out_dir, model, mcfg, train_cfg, calibration, history, data_info,
                              target_fpr=parent.target_fpr if target_fpr is None else target_fpr,
                              lineage=list(parent.lineage) + [step], replay_buffer=new_buf,
                              replay_per_class=per_class)
    return distributed.broadcast_object(art) if dist_info is not None else art
