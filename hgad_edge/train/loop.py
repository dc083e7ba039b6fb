"""Training: cached frozen-backbone features → HGAD flows + priors → calibration → artifact.

One atomic checkpoint per epoch (``checkpoint.safetensors``: weights, optimizer state and
progress in its metadata); ``resume=True`` continues after the last complete epoch and, since
every epoch's shuffle is seeded by (seed, epoch), ends exactly where an uninterrupted run ends.
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import logging
import math
import os
import random
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from hgad_edge import artifact, data, fileio
from hgad_edge.artifact import Artifact
from hgad_edge.calibrate import calibrate_class
from hgad_edge.config import ModelConfig, TrainConfig
from hgad_edge.gmm import GaussianMixture
from hgad_edge.model.hgad import HGAD
from hgad_edge.preprocess import preprocess
from hgad_edge.runtime.eager import TorchBackend
from hgad_edge.runtime.scorer import Scorer
from hgad_edge.train import distributed, replay
from hgad_edge.train.defaults import REPLAY_PER_CLASS
from hgad_edge.train.loss import hgad_losses, total_loss

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.safetensors"
LOSS_NAMES = ("g", "mi", "e", "g_intra", "z")
# The map a new model scores with. Measured on the demo dataset (README "Accuracy"): the
# log-likelihood map alone beat the official log-likelihood × entropy product by +0.04 image and
# +0.08 pixel AUROC, and the per-position calibrated log-likelihood ("position") beat "loglik" by
# +0.015 to +0.05 image AUROC on unpooled models and +0.08 on the default (0.960 vs 0.882); all stay
# selectable (Detector(combine=...)), each with its own calibrated thresholds.
DEFAULT_COMBINE = "position"


class NonFiniteLoss(FloatingPointError):
    """The training loss became NaN or infinite: training stops, the last good checkpoint stays."""


def check_run_dir(out_dir: str) -> None:
    """Refuse (``ValueError``) a RUN_DIR that cannot be one: empty, a file, below a file, or in a
    folder that cannot be written. Creates nothing."""
    if not out_dir or not str(out_dir).strip():
        raise ValueError("--out needs a folder path for the model (RUN_DIR)")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"--out {out_dir} is a file, not a folder: choose a folder for the model")
    up = os.path.abspath(out_dir)
    while not os.path.exists(up):  # the first part of the path that exists
        up = os.path.dirname(up)
    if not os.path.isdir(up):
        raise ValueError(f"--out {out_dir} is below the file {up}: choose a folder for the model")
    if not os.access(up, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out_dir}: no permission to write in {up}")


@contextlib.contextmanager
def run_dir_lock(out_dir: str, take: bool = True) -> Iterator[None]:
    """Create RUN_DIR if needed and hold it for one training (``flock`` on the folder itself:
    nothing is left in it, and the kernel drops the lock when the process dies). A second
    training into the same RUN_DIR, from this process or any other, fails at once instead of
    silently replacing the first one's model. When the training fails before writing anything,
    a RUN_DIR this call created is removed again. ``take=False`` (the other ranks of a torchrun
    job): no lock, rank 0 holds it."""
    check_run_dir(out_dir)
    created = not os.path.exists(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    if not take:
        yield
        return
    fd = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"{out_dir} is in use by another training right now (another `hgad-edge train "
                             f"--out {out_dir}`); wait for it to finish or choose another --out") from None
        yield
    except BaseException:
        if created:
            with contextlib.suppress(OSError):  # only an empty folder: what was written stays
                os.rmdir(out_dir)
        raise
    finally:
        os.close(fd)  # releases the lock


def finished_model(out_dir: str, model_cfg: ModelConfig, train_cfg: TrainConfig, resume: bool) -> Artifact:
    """RUN_DIR already holds a model: with ``resume`` and the same settings that model is the
    result (returned as it is, exports included — a re-run of a finished command is a no-op);
    anything else is refused, never retrained over it."""
    if not resume:
        raise ValueError(f"{out_dir} already holds a trained model; choose a new --out (--resume only finishes an "
                         "interrupted training, or confirms a finished one with the same settings)")
    art = Artifact.read(out_dir)
    same = (art.model_config.to_dict() == model_cfg.to_dict() and art.train_config == _train_dict(train_cfg)
            and len(art.history) == train_cfg.epochs)
    if not same:
        raise ValueError(f"{out_dir} already holds a model trained with other settings ({len(art.history)} epochs); "
                         "--resume continues an interrupted training only: train into a new --out")
    log.info("%s already holds this finished model (%d epochs): nothing to do, kept as it is", out_dir,
             len(art.history))
    return art


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # FrEIA draws its soft permutations from numpy's global RNG
    torch.manual_seed(seed)


def load_images(samples: Sequence[data.Sample], progress: bool, desc: str) -> List[np.ndarray]:
    return [data.read_image(s.path) for s in tqdm(samples, desc=desc, disable=not progress, leave=False)]


@torch.no_grad()
def cache_features(model: HGAD, images: Sequence[np.ndarray], batch_size: int, progress: bool,
                   augment: Optional[torch.Generator] = None) -> List[torch.Tensor]:
    """Backbone features of every image, per level (n, D, h, w); computed once, reused every epoch."""
    chunks: List[List[torch.Tensor]] = [[] for _ in range(model.n_levels)]
    steps = range(0, len(images), batch_size)
    for i in tqdm(steps, desc="features", disable=not progress, leave=False):
        x = torch.from_numpy(preprocess(images[i:i + batch_size], model.cfg.image_size))
        if augment is not None:
            flip = torch.rand(x.shape[0], generator=augment) < 0.5
            x[flip] = x[flip].flip(-1)
            x = x * (1.0 + 0.1 * (torch.rand(x.shape[0], 1, 1, 1, generator=augment) - 0.5))
        for l, f in enumerate(model.extract_features(x)):
            chunks[l].append(f)
    return [torch.cat(c) for c in chunks]


def make_optimizer(model: HGAD, cfg: TrainConfig) -> torch.optim.Adam:
    """Adam; the mixture centers/weights get ``center_lr_mult`` × the flows' learning rate."""
    flow_params = [p for p in model.flows.parameters() if p.requires_grad]
    return torch.optim.Adam([
        {"params": flow_params, "lr": cfg.lr, "name": "flows"},
        {"params": list(model.priors.parameters()), "lr": cfg.lr * cfg.center_lr_mult, "name": "centers"},
    ], betas=cfg.betas)


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int, start_step: int = 0):
    """Linear warm-up then cosine decay to 10 %. LambdaLR multiplies each group's *own* base rate,
    so the centers keep their 3× (the official code overwrote every group with one rate).
    ``start_step`` (resume) starts the schedule there, as if it had been stepped that often."""
    warm = max(1, cfg.warmup_epochs * steps_per_epoch)
    total = max(warm + 1, cfg.epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / (total - warm)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))

    if start_step:  # LambdaLR resumes from each group's initial_lr (the base rate: opt is fresh)
        for grp in opt.param_groups:
            grp.setdefault("initial_lr", grp["lr"])
    return torch.optim.lr_scheduler.LambdaLR(opt, factor, last_epoch=start_step - 1)


def _save_checkpoint(path: str, model: HGAD, opt: torch.optim.Optimizer, epoch: int, history: list,
                     model_cfg: ModelConfig, train_cfg: TrainConfig, extra: Optional[Dict[str, str]] = None) -> None:
    tensors = {f"model.{k}": v for k, v in model.trainable_state().items()}
    osd = opt.state_dict()
    for idx, st in osd["state"].items():
        for k, v in st.items():
            tensors[f"opt.{idx}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    meta = {"epoch": str(epoch), "history": fileio.dumps(history), "model_config": fileio.dumps(model_cfg.to_dict()),
            "train_config": fileio.dumps(_train_dict(train_cfg)), **(extra or {})}
    fileio.save_tensors(path, tensors, metadata=meta)


def checkpoint_metadata(path: str) -> Dict[str, str]:
    """The string metadata of a checkpoint (``ValueError`` naming it when it is damaged)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"cannot resume from {path}: damaged or not a checkpoint ({e}); "
                         "delete it to start again") from e


def remove_stale_temporaries(out_dir: str) -> None:
    """Delete checkpoint temporaries of a write that was killed midway (the previous checkpoint is intact)."""
    for stale in glob.glob(os.path.join(out_dir, "." + CHECKPOINT + ".*.tmp")):
        os.unlink(stale)


def _load_checkpoint(path: str, model: HGAD, opt: torch.optim.Optimizer, model_cfg: ModelConfig):
    from safetensors import safe_open

    from safetensors import SafetensorError

    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        saved_cfg = json.loads(meta["model_config"])
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        raise ValueError(f"cannot resume from {path}: damaged or not a checkpoint ({e}); "
                         "delete it to start again") from e
    if saved_cfg != model_cfg.to_dict():
        raise ValueError(f"{path} was written for another model config; train into a new --out or drop --resume")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=False)
    osd = opt.state_dict()
    state: Dict[int, Dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    osd["state"] = state
    opt.load_state_dict(osd)
    return int(meta["epoch"]), json.loads(meta["history"])


def _train_dict(cfg: TrainConfig) -> dict:
    import dataclasses

    d = dataclasses.asdict(cfg)
    d["betas"] = list(d["betas"])
    return d


def train_epoch(model: HGAD, feats: List[torch.Tensor], labels: torch.Tensor, opt, sched, cfg: TrainConfig,
                epoch: int, progress: bool, dist_info: Optional[distributed.DistInfo] = None,
                n_total: Optional[int] = None) -> Dict[str, float]:
    """One pass over the cached features in a (seed, epoch)-determined order.

    Under ``torchrun`` (``dist_info``), ``feats``/``labels`` hold this rank's shard of the
    ``n_total`` training images and each global batch is split across ranks (``hgad_edge.distributed``).
    """
    model.flows.train()
    g = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
    order = torch.randperm(n_total or labels.shape[0], generator=g)
    stage2 = epoch >= cfg.stage1_epochs
    sums = dict.fromkeys(("loss",) + LOSS_NAMES, 0.0)
    batches = [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
    bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
    for idx in bar:
        loss = 0.0
        parts = dict.fromkeys(LOSS_NAMES, 0.0)
        weight = 1.0
        if dist_info is not None:  # this rank's part of the global batch, weighted by its share
            n_batch = idx.numel()
            idx = distributed.local_part(idx, dist_info)
            weight = idx.numel() / n_batch
        for l, f in (enumerate(feats) if idx.numel() else ()):
            out = model.flow_level(l, f[idx])
            n = out.z.shape[1]
            y = labels[idx].repeat_interleave(n)  # (B·N,)
            terms = hgad_losses(out.z.reshape(-1, out.z.shape[-1]), out.logdet.reshape(-1), y, model.priors[l],
                                cfg.label_smoothing)
            loss = loss + total_loss(terms, stage2, cfg.lambda1, cfg.lambda2)
            for name, v in zip(LOSS_NAMES, terms):
                parts[name] += v.item() / len(feats)
        opt.zero_grad(set_to_none=True)
        if torch.is_tensor(loss):  # a torchrun rank may own no sample of a batch
            loss.backward()
        if dist_info is not None:
            distributed.all_reduce_grads([p for grp in opt.param_groups for p in grp["params"]], weight)
        torch.nn.utils.clip_grad_norm_(model.flows.parameters(), 10.0)
        opt.step()
        sched.step()
        value = loss.item() if torch.is_tensor(loss) else 0.0
        sums["loss"] += value * weight
        for k, v in parts.items():
            sums[k] += v * weight
        bar.set_postfix(loss=f"{value:.3f}", g=f"{parts['g']:.3f}", mi=f"{parts['mi']:.3f}",
                        e=f"{parts['e']:.3f}", gi=f"{parts['g_intra']:.3f}", z=f"{parts['z']:.3f}")
    if dist_info is not None:
        total = distributed.all_reduce_sum(torch.tensor(list(sums.values()), dtype=torch.float64))
        sums = dict(zip(sums, total.tolist()))
    return {k: v / len(batches) for k, v in sums.items()}


def score_raws(model: HGAD, images: Sequence[np.ndarray], labels: Sequence[Optional[int]], batch_size: int,
               progress: bool, desc: str = "calibrate") -> list:
    """``FrameRaw`` of every image scored as the Detector scores it (eager torch), class given
    (``None``: routed)."""
    model.eval()
    gmms = [GaussianMixture(**model.gmm_arrays(l)) for l in range(model.n_levels)]
    scorer = Scorer(TorchBackend(model), gmms, model.feature_shapes, model.cfg.image_size)
    raws = []
    for i in tqdm(range(0, len(images), batch_size), desc=desc, disable=not progress, leave=False):
        raws += scorer.raw(images[i:i + batch_size], list(labels[i:i + batch_size]))[0]
    return raws


def calibrate_model(model: HGAD, images: Sequence[np.ndarray], labels: Sequence[int], class_names: Sequence[str],
                    batch_size: int, progress: bool) -> dict:
    """Score held-out normal images with their known class and fit every class's constants."""
    raws = score_raws(model, images, labels, batch_size, progress)
    out = {}
    for c, name in enumerate(class_names):
        mine = [r for r, y in zip(raws, labels) if y == c]
        if not mine:
            raise ValueError(f"class {name!r} has no held-out calibration image; add more train/good images")
        out[name] = calibrate_class(mine, model.cfg.image_size)
    return out


def write_artifact(out_dir: str, model: HGAD, model_cfg: ModelConfig, train_cfg: TrainConfig, calibration: dict,
                   history: list, data_info: Optional[dict] = None, target_fpr: Optional[float] = None,
                   lineage: Optional[list] = None, replay_buffer=None, replay_per_class: int = 0) -> Artifact:
    """Backbone, weights (+ GMM arrays) as safetensors and model.json with checksums; with
    ``replay_buffer`` ((features per level, labels), ``hgad_edge.train.replay``) also
    ``replay.safetensors``. ``lineage``: the ``train --from`` steps (``Artifact.lineage``)."""
    fileio.save_tensors(os.path.join(out_dir, artifact.BACKBONE), model.backbone.body.state_dict())
    weights = dict(model.trainable_state())
    for l in range(model.n_levels):
        for k, v in model.gmm_arrays(l).items():
            weights[f"gmm.{l}.{k}"] = torch.from_numpy(v.copy())
    fileio.save_tensors(os.path.join(out_dir, artifact.WEIGHTS), weights,
                        metadata=artifact.weights_metadata(model_cfg.class_names))
    files = {artifact.BACKBONE: "", artifact.WEIGHTS: ""}
    if replay_buffer is not None and replay_buffer[1].numel():
        files[replay.save_buffer(out_dir, replay_buffer[0], replay_buffer[1], model_cfg.class_names,
                                 replay_per_class)] = ""
    art = Artifact(run_dir=out_dir, model_config=model_cfg, feature_shapes=list(model.feature_shapes),
                   dims=list(model.dims), calibration=calibration, combine=DEFAULT_COMBINE,
                   target_fpr=train_cfg.target_fpr if target_fpr is None else target_fpr, files=files,
                   train_config=_train_dict(train_cfg), history=history, data=dict(data_info or {}),
                   versions=artifact.library_versions(), lineage=list(lineage or []))
    art.write()
    return art


def train(data_root: str, out_dir: str, model_cfg: ModelConfig, train_cfg: TrainConfig, resume: bool = False,
          backbone_weights: Optional[str] = None, progress: bool = True,
          replay_per_class: int = REPLAY_PER_CLASS) -> Artifact:
    """Train one unified model on every class of ``model_cfg.class_names``; returns its artifact.

    ``replay_per_class``: mosaic feature maps per class stored in ``replay.safetensors`` for a
    later ``train --from`` (``hgad_edge.train.replay``; 0: no buffer).

    Inside an initialised process group (``torchrun -m hgad_edge.train``) every rank caches its
    shard only, gradients and feature statistics are all-reduced, and rank 0 alone shows progress,
    writes checkpoints, calibrates and writes the artifact; every rank returns the artifact.
    """
    check_run_dir(out_dir)
    if isinstance(replay_per_class, bool) or not isinstance(replay_per_class, int) or replay_per_class < 0:
        raise ValueError(f"replay_per_class (--replay-buffer) must be an integer >= 0, got {replay_per_class!r}")
    samples = data.train_samples(data_root, model_cfg.class_names)
    fit_s, calib_s = data.split_calibration(samples, train_cfg.calib_fraction, train_cfg.seed)
    # Everything that could fail after training (a class without a held-out image, an unreadable
    # calibration image, a backbone or weights file that does not load) is checked before the
    # first epoch is spent; what needs no image (the network) before RUN_DIR is created.
    lacking = [c for c in model_cfg.class_names if not any(s.class_name == c for s in calib_s)]
    if lacking:
        raise ValueError(f"class(es) {lacking} have no held-out calibration image: each class needs at least "
                         "2 train/good images (or raise --calib-fraction)")
    info = distributed.current()
    if info.enabled and len(fit_s) < info.world:
        raise ValueError(f"{len(fit_s)} training images cannot be shared by {info.world} processes")
    seed_everything(train_cfg.seed)
    model = HGAD(model_cfg, backbone_weights=backbone_weights)
    with run_dir_lock(out_dir, info.is_main):
        return _train_locked(data_root, out_dir, model, model_cfg, train_cfg, resume, progress, replay_per_class,
                             fit_s, calib_s, info)


def _train_locked(data_root: str, out_dir: str, model: HGAD, model_cfg: ModelConfig, train_cfg: TrainConfig,
                  resume: bool, progress: bool, replay_per_class: int, fit_s: List[data.Sample],
                  calib_s: List[data.Sample], info: distributed.DistInfo) -> Artifact:
    """The training of :func:`train` once RUN_DIR is held and the network is built."""
    ckpt = os.path.join(out_dir, CHECKPOINT)
    if os.path.exists(os.path.join(out_dir, artifact.META)):
        return finished_model(out_dir, model_cfg, train_cfg, resume)
    dist_info = info if info.enabled else None
    if dist_info is not None:
        progress = progress and info.is_main
    calib_images = load_images(calib_s, progress, "load calibration")
    opt = make_optimizer(model, train_cfg)
    steps = math.ceil(len(fit_s) / train_cfg.batch_size)
    start, history = 0, []
    remove_stale_temporaries(out_dir)
    if resume and os.path.exists(ckpt):
        start, history = _load_checkpoint(ckpt, model, opt, model_cfg)
        log.info("resuming after epoch %d from %s", start, ckpt)
    elif resume:
        log.info("--resume: no checkpoint in %s yet, starting from scratch", out_dir)
    # Start the schedule where it stopped (replaying sched.step() before opt.step() warns).
    sched = make_scheduler(opt, train_cfg, steps, start * steps)
    mine = [fit_s[i] for i in distributed.shard(len(fit_s), info)]  # every image for one process
    labels = torch.tensor([s.class_index for s in mine])
    images = load_images(mine, progress, "load train")
    feats = cache_features(model, images, train_cfg.batch_size, progress)
    if start == 0 and dist_info is None:
        model.set_feature_stats(feats)
    elif start == 0:
        with torch.no_grad():
            for l, (mean, std) in enumerate(distributed.feature_stats(feats)):
                getattr(model, f"feat_mean_{l}").copy_(mean)
                getattr(model, f"feat_std_{l}").copy_(std.clamp_min(1e-4))
    bar = tqdm(range(start, train_cfg.epochs), desc="train", disable=not progress, initial=start,
               total=train_cfg.epochs)
    for epoch in bar:
        if train_cfg.augment:
            g = torch.Generator().manual_seed(train_cfg.seed * 7919 + epoch + 1000003 * info.rank)
            feats = cache_features(model, images, train_cfg.batch_size, False, augment=g)
        stats = train_epoch(model, feats, labels, opt, sched, train_cfg, epoch, progress, dist_info, len(fit_s))
        if not all(math.isfinite(v) for v in stats.values()):  # all-reduced: every rank stops alike
            bad = ", ".join(f"{k}={v}" for k, v in stats.items() if not math.isfinite(v))
            kept = f"the checkpoint of epoch {epoch} is kept" if epoch else "no checkpoint was written"
            raise NonFiniteLoss(f"training stopped: the loss became non-finite in epoch {epoch + 1} ({bad}); {kept} "
                                f"in {out_dir}, no model written. Lower --lr (now {train_cfg.lr:g}) or --lambda-mi "
                                f"(now {train_cfg.lambda2:g}) and train again")
        history.append({"epoch": epoch + 1, **{k: round(v, 6) for k, v in stats.items()}})
        bar.set_postfix(loss=f"{stats['loss']:.3f}", mi=f"{stats['mi']:.3f}", gi=f"{stats['g_intra']:.3f}")
        if info.is_main:
            _save_checkpoint(ckpt, model, opt, epoch + 1, history, model_cfg, train_cfg)
    buffer = None
    if replay_per_class:  # every rank joins: the mosaics are assembled from every shard
        if train_cfg.augment:
            feats = cache_features(model, images, train_cfg.batch_size, False)
        all_labels = torch.tensor([s.class_index for s in fit_s])
        buffer = replay.build_buffer(feats, all_labels, range(len(model_cfg.class_names)), replay_per_class,
                                     train_cfg.seed, dist_info)
    if not info.is_main:  # rank 0 calibrates and writes the artifact
        return distributed.broadcast_object(None)
    calibration = calibrate_model(model, calib_images, [s.class_index for s in calib_s], model_cfg.class_names,
                                  train_cfg.batch_size, progress)
    data_info = {"root": os.path.abspath(data_root), "n_train": len(fit_s), "n_calibration": len(calib_s),
                 "calibration_files": [os.path.relpath(s.path, data_root) for s in calib_s]}
    art = write_artifact(out_dir, model, model_cfg, train_cfg, calibration, history, data_info,
                         replay_buffer=buffer, replay_per_class=replay_per_class)
    return distributed.broadcast_object(art) if dist_info is not None else art
