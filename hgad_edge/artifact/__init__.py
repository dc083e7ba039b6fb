"""The model artifact (docs/design.md §3): one directory, ``model.json`` + safetensors, checksummed.

``Artifact`` is the typed view of ``model.json``; nothing else in the package reads the JSON.
Every format version that was ever written is read: ``MIGRATIONS[v]`` turns version ``v`` into
``v + 1`` in memory, so an old artifact loads without being rewritten (``Artifact.write``
writes the current version).

Format versions:

* 1 — written until the layout change. Three schema changes landed without a version bump and
  were patched by fallbacks where the keys were read: no ``combine`` (the official "product"
  map), no ``pool`` in ``model_config`` (unpooled features), no ``exports`` (never exported),
  ONNX exports without ``validation`` (exported before validation existed).
* 2 — every key present; each export records ``status``: "passed", "failed" (its validation
  failed: never used by ``backend="auto"``) or "unvalidated".
* 3 — precision variants (docs/design.md §3): ``exports.onnxruntime`` (the fp32 graphs, as in
  v2) gains ``variants`` {precision: section} for its quantized graphs, ``exports.openvino`` has
  ``variants`` {"fp32"|"bf16"|"int8": section}, TensorRT's ``engines`` stay per precision. A
  reduced-precision section carries its own ``calibration`` ({class: {"normalizer", "scores"}},
  computed *with that precision* on the held-out normal images) and ``accuracy_gate``
  (synthetic-defect image/pixel AUROC of fp32 vs this precision, ``drop``, ``max_drop``,
  ``status`` "passed" / "exceeded"); a failed section has a ``reason``. v2 → v3 adds the empty
  ``variants``: a v2 artifact has fp32 only, scored with the top-level ``calibration``.
* 4 — ``content_sha256``: the sha256 of the canonical JSON of every other key (``content_checksum``),
  written by ``Artifact.write`` (the one writer of model.json), so an edit to any value is refused;
  the weights' safetensors header records the class order. v3 → v4 changes nothing else. Versions
  1–3 have no content checksum: they load with a logged warning, their fields checked one by one.

Every version is validated field by field on read and before every write (``validate``): types,
ranges, finite numbers, unique class names, one entry per level everywhere, calibration shapes
against ``feature_shapes``, plain file names inside the model directory, each with a checksum.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import platform
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from hgad_edge import fileio
from hgad_edge.artifact._schema import (  # noqa: F401 - the public names of the artifact format
    BACKBONE, CONTENT_KEY, CONTENT_SINCE, EXPORT_STATUSES, FORMAT, FORMAT_VERSION, MAX_DEPTH, MAX_META_BYTES, META,
    PRECISIONS, REPLAY, WEIGHTS, WEIGHTS_CLASSES, ArtifactError, _header, _non_finite, _show, check_name,
    content_checksum, format_version, parse, validate)
from hgad_edge.config import ModelConfig

log = logging.getLogger(__name__)
# Sections every version has had (a file without them is damaged, not old).
_REQUIRED = ("model_config", "feature_shapes", "calibration", "files")


def library_versions() -> Dict[str, str]:
    import numpy
    import timm
    import torch

    from hgad_edge.version import __version__

    return {"hgad_edge": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "numpy": numpy.__version__, "python": platform.python_version()}


# ----------------------------------------------------------------------------- migrations
def _v1_to_v2(meta: Dict[str, Any]) -> Dict[str, Any]:
    meta.setdefault("combine", "product")
    meta.setdefault("target_fpr", 0.01)
    levels = meta["model_config"].get("levels", ModelConfig.levels)
    meta["model_config"].setdefault("pool", [1] * len(levels))  # written before pooling existed: none
    for key, empty in (("exports", {}), ("history", []), ("data", {}), ("versions", {}), ("train_config", {})):
        meta.setdefault(key, empty)
    ort = meta["exports"].get("onnxruntime")
    if isinstance(ort, dict):
        ort["status"] = (ort.get("validation") or {}).get("status", "unvalidated")
    trt = meta["exports"].get("tensorrt")
    if isinstance(trt, dict):
        trt["status"] = "unvalidated"
    meta["format_version"] = 2
    return meta


def _v2_to_v3(meta: Dict[str, Any]) -> Dict[str, Any]:
    ort = meta["exports"].get("onnxruntime")
    if isinstance(ort, dict):
        ort.setdefault("variants", {})  # v2 wrote fp32 graphs only
    meta["format_version"] = 3
    return meta


def _v3_to_v4(meta: Dict[str, Any]) -> Dict[str, Any]:
    meta["format_version"] = 4  # only the content checksum is new: an old file has none (see ``Artifact.read``)
    return meta


MIGRATIONS: Dict[int, Callable[[Dict[str, Any]], Dict[str, Any]]] = {1: _v1_to_v2, 2: _v2_to_v3, 3: _v3_to_v4}


def migrate(meta: Dict[str, Any], path: str = META) -> Dict[str, Any]:
    """``meta`` (any version ever written) as the current version, migrated step by step."""
    version = format_version(meta, path)
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise ArtifactError(f"{path} is incomplete: it lacks {missing} (re-train or re-export the model)")
    if not isinstance(meta["files"], dict):
        raise ArtifactError(f"{path}: files must be an object, got {type(meta['files']).__name__}")
    try:
        meta = copy.deepcopy(meta)
        while meta["format_version"] < FORMAT_VERSION:
            meta = MIGRATIONS[meta["format_version"]](meta)
    except (KeyError, TypeError, AttributeError, ValueError, RecursionError) as e:
        raise ArtifactError(f"{path} is damaged: format {version} cannot be read ({type(e).__name__}: {e})") from e
    return meta


# ----------------------------------------------------------------------------- content checksum
def _check_content(meta: Dict[str, Any], path: str) -> None:
    version = meta["format_version"]
    recorded = meta.get(CONTENT_KEY)
    if recorded is None and version < CONTENT_SINCE:
        log.warning("%s: format %d has no content checksum (written by an older hgad_edge): an edit to it cannot "
                    "be detected, only values that do not fit are refused; its next rewrite (an export adding files) "
                    "records one",
                    path, version)
        return
    if recorded is None:
        raise ArtifactError(f"{path} lacks its content checksum ({CONTENT_KEY!r}, written with every format "
                            f"{CONTENT_SINCE}+ model): it was edited; re-train or restore the model")
    actual = content_checksum(meta)
    if recorded != actual:  # an old version with the key: a downgraded format 4 file
        raise ArtifactError(f"{path} was edited after it was written (content checksum {actual[:12]}…, recorded "
                            f"{str(recorded)[:12]}…): any change to model.json is refused; re-train or restore it")


# ----------------------------------------------------------------------------- the artifact
@dataclass
class Artifact:
    """The metadata of a model directory (``model.json``), typed.

    Attributes:
        run_dir: the model directory (not stored).
        model_config: what the network is (classes, backbone, levels, image size, …).
        feature_shapes: (h, w) of every feature level; dims: channels of every level.
        calibration: per class ``{"normalizer": {...}, "scores": {combine: sorted scores}}``.
        combine: the anomaly map the thresholds were set for; target_fpr: the default FPR.
        files: file name → sha256 of every file the artifact consists of.
        exports: backend → export section (``files``/``engines``, ``status``, validation, …).
        train_config, history, data, versions: how and from what it was trained.
        lineage: one entry per ``train --from`` step that led to this model, oldest first
            (parent checksums, classes added, epochs, replay, recalibration); empty for a model
            trained from scratch (``hgad_edge.train.extend``).
        extra: keys this version does not know (kept when the artifact is rewritten).
    """

    run_dir: str
    model_config: ModelConfig
    feature_shapes: List[Tuple[int, int]]
    dims: List[int]
    calibration: Dict[str, Dict[str, Any]]
    combine: str = "position"
    target_fpr: float = 0.01
    files: Dict[str, str] = field(default_factory=dict)
    exports: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    train_config: Dict[str, Any] = field(default_factory=dict)
    history: List[Dict[str, Any]] = field(default_factory=list)
    data: Dict[str, Any] = field(default_factory=dict)
    versions: Dict[str, str] = field(default_factory=dict)
    lineage: List[Dict[str, Any]] = field(default_factory=list)
    extra: Dict[str, Any] = field(default_factory=dict)

    # ---------------------------------------------------------------- derived
    @property
    def class_names(self) -> List[str]:
        return list(self.model_config.class_names)

    @property
    def image_size(self) -> int:
        return int(self.model_config.image_size)

    @property
    def n_levels(self) -> int:
        return len(self.feature_shapes)

    def path(self, name: str) -> str:
        """``run_dir/name`` for a plain file name (anything else is refused: ``check_name``)."""
        return os.path.join(self.run_dir, check_name(name))

    def calibration_of(self, backend: Optional[str] = None, precision: Optional[str] = None
                       ) -> Dict[str, Dict[str, Any]]:
        """Per class {"normalizer", "scores"} for scores computed by ``backend`` at ``precision``:
        the variant's own calibration when it has one (reduced precision), else the training
        calibration (fp32: every fp32 backend matches eager torch to ~1e-5 of the map range)."""
        section = self.variant(backend, precision) if backend else None
        cal = (section or {}).get("calibration")
        return cal if cal else self.calibration

    def normalizer(self, class_name: str, backend: Optional[str] = None, precision: Optional[str] = None):
        from hgad_edge.postprocess import Normalizer

        return Normalizer.from_dict(self.calibration_of(backend, precision)[class_name]["normalizer"])

    def scores(self, class_name: str, combine: Optional[str] = None, backend: Optional[str] = None,
               precision: Optional[str] = None) -> List[float]:
        return list(self.calibration_of(backend, precision)[class_name]["scores"][combine or self.combine])

    def calibrated_maps(self, backend: Optional[str] = None, precision: Optional[str] = None) -> List[str]:
        """Combine modes every class has calibration scores for."""
        from hgad_edge.postprocess import COMBINE_MODES

        cal = self.calibration_of(backend, precision)
        return [m for m in COMBINE_MODES if all(m in cal[c]["scores"] for c in self.class_names)]

    def calibration_samples(self) -> List[Tuple[str, str]]:
        """(path, class name) of every held-out calibration image that still exists; the class is
        the first folder of the recorded relative path (``<class>/train/good/...``)."""
        root = self.data.get("root", "")
        out = []
        for rel in self.data.get("calibration_files", []):
            parts = os.path.normpath(rel).split(os.sep)
            path = os.path.join(root, rel)
            if parts and parts[0] in self.model_config.class_names and os.path.isfile(path):
                out.append((path, parts[0]))
        return out

    def calibration_paths(self) -> List[str]:
        """The held-out calibration images that still exist under the recorded data root."""
        root = self.data.get("root", "")
        paths = [os.path.join(root, p) for p in self.data.get("calibration_files", [])]
        return [p for p in paths if os.path.isfile(p)]

    # ---------------------------------------------------------------- exports
    def export_files(self) -> List[str]:
        """Every file an export section names (graphs, engines): each must be listed in ``files``."""
        names = []
        for e in self.exports.values():
            names += [str(f) for f in (e.get("files") or {}).values()]
            names += [str(g["file"]) for g in (e.get("engines") or {}).values() if isinstance(g, dict) and "file" in g]
            for v in (e.get("variants") or {}).values():  # precision variants (format 3)
                names += [str(f) for f in (v.get("files") or {}).values()] if isinstance(v, dict) else []
        return list(dict.fromkeys(names))

    def usable_exports(self) -> Dict[str, Dict[str, Any]]:
        """Exports a backend may load: every one whose validation did not fail."""
        return {b: e for b, e in self.exports.items() if e.get("status") != "failed"}

    def skipped_exports(self) -> Dict[str, str]:
        """backend → why it is not usable (validation failed, with its numbers)."""
        out = {}
        for b, e in self.exports.items():
            if e.get("status") == "failed":
                out[b] = e.get("reason") or validation_reason(e)
        return out

    def variants(self) -> Dict[Tuple[str, str], Dict[str, Any]]:
        """(backend, precision) → that variant's section, for every exported one (failed ones
        included), most precise first per backend. The ONNX Runtime fp32 variant is the
        ``onnxruntime`` section itself; a TensorRT engine's status defaults to its section's."""
        out: Dict[Tuple[str, str], Dict[str, Any]] = {}
        for backend, sec in self.exports.items():
            if not isinstance(sec, dict):
                continue
            if backend == "tensorrt":
                found = {p: dict(e, status=e.get("status", sec.get("status", "unvalidated")))
                         for p, e in sec.get("engines", {}).items()}
            else:
                found = dict(sec.get("variants", {}))
                if backend == "onnxruntime" and "files" in sec:
                    found["fp32"] = sec
            for p in sorted(found, key=_precision_rank):
                out[(backend, p)] = found[p]
        return out

    def variant(self, backend: str, precision: Optional[str] = None) -> Optional[Dict[str, Any]]:
        """The section of ``backend`` at ``precision`` (None: its most precise usable one), or None."""
        if precision is None:
            usable = self.usable_precisions(backend)
            precision = usable[0] if usable else None
        if backend == "torch":
            return {"precision": "fp32", "status": "passed"} if precision in (None, "fp32") else None
        return self.variants().get((backend, precision))

    def usable_precisions(self, backend: str) -> List[str]:
        """Precisions ``backend`` may load, most precise first (a failed variant, or every variant
        of a failed export, is not)."""
        if backend == "torch":
            return ["fp32"]
        if self.exports.get(backend, {}).get("status") == "failed":
            return []
        return [p for (b, p), sec in self.variants().items() if b == backend and sec.get("status") != "failed"]

    def skipped_variants(self) -> Dict[Tuple[str, str], str]:
        """(backend, precision) → why that exported variant is not usable."""
        out = {}
        for (b, p), sec in self.variants().items():
            if self.exports.get(b, {}).get("status") == "failed":
                out[(b, p)] = self.skipped_exports()[b]
            elif sec.get("status") == "failed":
                out[(b, p)] = sec.get("reason") or validation_reason(sec)
        return out

    def gate_passed(self, backend: str, precision: str) -> bool:
        """fp32, or a reduced precision whose accuracy gate passed (``backend="auto"`` never picks
        a precision that exceeded it, even when the export was kept with ``--on-gate-fail warn``)."""
        if precision == "fp32":
            return True
        sec = self.variant(backend, precision) or {}
        return (sec.get("accuracy_gate") or {}).get("status") == "passed"

    # ---------------------------------------------------------------- (de)serialisation
    def to_dict(self) -> Dict[str, Any]:
        d = {"format": FORMAT, "format_version": FORMAT_VERSION, "model_config": self.model_config.to_dict(),
             "feature_shapes": [list(map(int, s)) for s in self.feature_shapes], "dims": list(map(int, self.dims)),
             "calibration": self.calibration, "combine": self.combine, "target_fpr": float(self.target_fpr),
             "files": dict(self.files), "exports": self.exports, "train_config": self.train_config,
             "history": self.history, "data": self.data, "versions": self.versions}
        if self.lineage:  # optional: only models made by ``train --from`` have it
            d["lineage"] = self.lineage
        return {**self.extra, **d}

    @classmethod
    def from_dict(cls, meta: Dict[str, Any], run_dir: str) -> "Artifact":
        """Build from a model.json dict of any version (migrated, then validated: ``validate``)."""
        path = os.path.join(run_dir, META)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ArtifactError(f"{path} is not an {FORMAT} model file")
        meta = migrate(meta, path)
        validate(meta, path)
        known = {"format", "format_version", "model_config", "feature_shapes", "dims", "calibration", "combine",
                 "target_fpr", "files", "exports", "train_config", "history", "data", "versions", "lineage",
                 CONTENT_KEY}
        try:
            cfg = ModelConfig.from_dict(meta["model_config"])
            art = cls(run_dir=run_dir, model_config=cfg,
                      feature_shapes=[(int(h), int(w)) for h, w in meta["feature_shapes"]],
                      dims=[int(d) for d in meta["dims"]], calibration=dict(meta["calibration"]),
                      combine=str(meta["combine"]), target_fpr=float(meta["target_fpr"]),
                      files={str(k): str(v) for k, v in meta["files"].items()}, exports=dict(meta["exports"]),
                      train_config=dict(meta["train_config"]), history=list(meta["history"]),
                      data=dict(meta["data"]), versions=dict(meta["versions"]),
                      lineage=[dict(step) for step in meta.get("lineage", [])],
                      extra={k: v for k, v in meta.items() if k not in known})
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:  # validate let it through
            raise ArtifactError(f"{path} is damaged: {type(e).__name__}: {e}") from e
        return art

    @classmethod
    def read(cls, run_dir: str, verify: bool = True) -> "Artifact":
        """Load ``run_dir/model.json``: strict JSON, format, version (migrated), every field
        (``validate``), the content checksum (format 4+) and, with ``verify``, every listed file
        (inside the directory, its sha256) and the weights' header against model.json. Raises
        ``ArtifactError`` saying what is wrong, in one line."""
        if not os.path.isdir(run_dir):
            raise ArtifactError(f"model directory not found: {run_dir}")
        path = os.path.join(run_dir, META)
        if not os.path.lexists(path):
            raise ArtifactError(f"{run_dir} is not an hgad_edge model: {META} is missing "
                                "(train one with `hgad-edge train`)")
        _inside(run_dir, META)
        try:
            size = os.path.getsize(path)
            if not os.path.isfile(path):
                raise ArtifactError(f"{path} is not a regular file")
            if size > MAX_META_BYTES:
                raise ArtifactError(f"{path} is {size} bytes; a model file is at most {MAX_META_BYTES} bytes")
            with open(path, "rb") as fh:
                raw = fh.read(MAX_META_BYTES + 1)
            if len(raw) > MAX_META_BYTES:  # it grew since
                raise ArtifactError(f"{path} is over {MAX_META_BYTES} bytes, the most a model file has")
        except OSError as e:
            raise ArtifactError(f"cannot read {path}: {e}") from e
        meta = parse(raw, path)
        art = cls.from_dict(meta, run_dir)
        _check_content(meta, path)
        if verify:
            art.verify()
            art._check_tensors()
        return art

    def verify(self, names: Optional[Sequence[str]] = None) -> None:
        """Check every listed file (or ``names``): a regular file inside the model directory (a link
        out of it is refused), with the recorded sha256."""
        for name in (self.files if names is None else names):
            actual = self._hash(name)
            if actual != self.files[name]:
                raise ArtifactError(f"{self.run_dir}: {name} was modified or damaged "
                                    f"(sha256 {actual[:12]}…, expected {self.files[name][:12]}…)")

    def _hash(self, name: str) -> str:
        fp = self.path(name)
        if os.path.lexists(fp):
            _inside(self.run_dir, name)
        if not os.path.isfile(fp):
            raise ArtifactError(f"{self.run_dir}: file {name} listed in {META} is missing")
        try:
            return fileio.sha256(fp)
        except OSError as e:
            raise ArtifactError(f"{self.run_dir}: cannot read {name}: {e}") from e

    def _check_tensors(self) -> None:
        """The weights (and replay buffer) headers agree with model.json: per level the mixture
        arrays' shapes (classes, centers, dims), no level more, the class order they were trained
        with (recorded since format 4; the replay buffer has always recorded it). A header that does
        not parse is left to the loader (``load_tensors``), which refuses it."""
        from safetensors import SafetensorError

        C, K, L = len(self.class_names), int(self.model_config.n_intra), self.n_levels
        try:
            shapes, meta = _header(self.path(WEIGHTS))
        except (SafetensorError, OSError, ValueError):
            return
        for l in range(L):
            D = self.dims[l]
            want = {f"gmm.{l}.mu": (C, D), f"gmm.{l}.mu_intra": (C, K, D), f"gmm.{l}.log_pi_inter": (C,),
                    f"gmm.{l}.log_pi_intra": (C, K)}
            for key, shape in want.items():
                if key in shapes and shapes[key] != shape:
                    raise ArtifactError(f"{self.run_dir}: {WEIGHTS} holds {key} of shape {list(shapes[key])}; "
                                        f"{META} says {list(shape)} ({C} classes, {K} centers, {D} dims at level {l})")
        if f"gmm.{L}.mu" in shapes:
            raise ArtifactError(f"{self.run_dir}: {WEIGHTS} has a level {L} that {META} does not ({L} levels)")
        self._check_classes(WEIGHTS, meta.get(WEIGHTS_CLASSES))
        if REPLAY in self.files:
            try:
                shapes, meta = _header(self.path(REPLAY))
            except (SafetensorError, OSError, ValueError):
                return
            self._check_classes(REPLAY, meta.get("classes"))
            for l, (h, w) in enumerate(self.feature_shapes):
                got = shapes.get(f"level.{l}")
                if got is not None and tuple(got[1:]) != (self.dims[l], h, w):
                    raise ArtifactError(f"{self.run_dir}: {REPLAY} holds level {l} features of shape "
                                        f"{list(got[1:])}; {META} says {[self.dims[l], h, w]} (dims, feature_shapes)")
            if f"level.{L}" in shapes:
                raise ArtifactError(f"{self.run_dir}: {REPLAY} has a level {L} that {META} does not ({L} levels)")

    def _check_classes(self, name: str, recorded: Optional[str]) -> None:
        if recorded is None:
            return
        try:
            classes = json.loads(recorded)
        except ValueError:
            classes = recorded
        if classes != self.class_names:
            raise ArtifactError(f"{self.run_dir}: {name} was trained for the classes {_show(classes)} (in this "
                                f"order); {META} lists {_show(self.class_names)}")

    def write(self) -> None:
        """Hash every file whose checksum is not recorded yet, refuse non-finite values and any field
        ``validate`` would refuse on read, then write model.json atomically with its content
        checksum. The one writer of model.json (train, ``train --from``, export, re-calibration)."""
        path = self.path(META)
        for name, digest in self.files.items():
            if not digest:
                self.files[name] = self._hash(name)
        meta = self.to_dict()
        _non_finite(meta, path)
        meta = json.loads(fileio.dumps(meta))  # exactly what a reader will parse
        validate(meta, path)
        meta[CONTENT_KEY] = content_checksum(meta)
        fileio.write_json(path, meta)

    def add_files(self, names: Sequence[str], update: Optional[Callable[["Artifact"], None]] = None) -> "Artifact":
        """Register new files (exported graphs, engines) with their checksums — only these are
        hashed, so a file already listed is never re-blessed from what is on disk — apply
        ``update`` and write model.json."""
        for name in names:
            self.files[name] = self._hash(name)
        if update is not None:
            update(self)
        self.write()
        return self


def weights_metadata(class_names: Sequence[str]) -> Dict[str, str]:
    """The safetensors header metadata of ``weights.safetensors``: the class order it is trained with."""
    return {WEIGHTS_CLASSES: json.dumps(list(class_names))}


def _inside(run_dir: str, name: str) -> None:
    """Refuse a file of the artifact that is a link resolving outside the model directory."""
    fp = os.path.join(run_dir, name)
    if not fileio.within(fp, run_dir):
        raise ArtifactError(f"{fp} is a link to {os.path.realpath(fp)}, outside the model directory: "
                            "refusing to read it (copy the file into the directory)")


def _precision_rank(p: str) -> int:
    return PRECISIONS.index(p) if p in PRECISIONS else len(PRECISIONS)


def validation_reason(section: Dict[str, Any]) -> str:
    val = section.get("validation", {})
    return (f"its export failed validation (max relative error {val.get('max_rel_err')} > "
            f"tolerance {val.get('tolerance')}); re-export it")


def load_tensors(run_dir: str, name: str) -> dict:
    """Read a safetensors file of the artifact (never unpickles)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = os.path.join(run_dir, name)
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise ArtifactError(f"cannot read {path} as safetensors: {e}") from e

