"""What a valid model.json is (docs/design.md §3): the file's constants, strict parsing, the
content checksum (format 4) and the field-by-field validation every read and every write runs.

Private to ``hgad_edge.artifact``, which re-exports what is public.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hgad_edge.config import ModelConfig

FORMAT = "hgad_edge"
FORMAT_VERSION = 4
META = "model.json"
WEIGHTS = "weights.safetensors"
REPLAY = "replay.safetensors"  # hgad_edge.train.replay (optional)
BACKBONE = "backbone.safetensors"
EXPORT_STATUSES = ("passed", "failed", "unvalidated")
# Most precise first: ``precision=None`` means the first one a backend has.
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
CONTENT_KEY = "content_sha256"  # format 4: the checksum of model.json's own content
CONTENT_SINCE = 4
# Refused before parsing. Measured on 48 model.json files (README "Model artifacts"): at most 1.4 MB
# (6 classes at 256², fp32 + int8 + OpenVINO calibrations; ~50 kB per class and calibration) and
# 11 levels of nesting.
MAX_META_BYTES = 64 << 20
MAX_DEPTH = 32
WEIGHTS_CLASSES = "class_names"  # weights.safetensors header metadata: the class order it was trained with


class ArtifactError(ValueError):
    """The model directory is missing, damaged, or of a format this version cannot read.

    The message is always one line (the CLI prints it as its one error line)."""

    def __init__(self, message: object):
        super().__init__(" ".join(str(message).split()))


def format_version(meta: Dict[str, Any], path: str = META) -> int:
    """The format version of ``meta``, refused unless an integer 1..FORMAT_VERSION."""
    version = meta.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ArtifactError(f"{path} has format version {_show(version)}; expected an integer 1..{FORMAT_VERSION}")
    if version > FORMAT_VERSION:
        raise ArtifactError(f"{path} has format version {version}, newer than this hgad_edge reads "
                            f"({FORMAT_VERSION}): upgrade hgad_edge")
    return version



# ----------------------------------------------------------------------------- content checksum
def content_checksum(meta: Dict[str, Any]) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces, ASCII, strict) of every key but
    ``content_sha256``: what format 4 records, so an edit to any value (or key) is detected. It
    guards against damage and edits, not against someone who recomputes it: the fields are still
    validated one by one, and the weights record the class order themselves."""
    body = {k: v for k, v in meta.items() if k != CONTENT_KEY}
    # plain json (strict: a NaN raises): ``meta`` is parsed JSON, for which it writes what
    # fileio.dumps writes, without its Python walk over every number
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


# ----------------------------------------------------------------------------- strict parsing
def parse(raw: bytes, path: str = META) -> Any:
    """Strict JSON of a model.json: UTF-8, no NaN/Infinity (nor numbers that overflow to them),
    no key twice in one object, at most ``MAX_DEPTH`` levels of nesting."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ArtifactError(f"{path} is not valid JSON: it is not UTF-8 ({e})") from e

    def constant(name: str) -> float:
        raise ArtifactError(f"{path} is not valid JSON: {name} is not a JSON number (model.json never stores "
                            "a non-finite value)")

    def number(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ArtifactError(f"{path} holds the number {text[:24]}, out of the float range")
        return value

    def obj(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise ArtifactError(f"{path} is not valid JSON: key {_show(k)} appears twice in one object")
            out[k] = v
        return out

    try:
        meta = json.loads(text, parse_constant=constant, parse_float=number, object_pairs_hook=obj)
    except ArtifactError:
        raise
    except RecursionError as e:
        raise ArtifactError(f"{path} is not valid JSON: it nests too deeply") from e
    except ValueError as e:  # JSONDecodeError, and integers of more digits than Python converts
        raise ArtifactError(f"{path} is not valid JSON: {e}") from e
    stack = [(meta, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ArtifactError(f"{path} nests more than {MAX_DEPTH} levels deep: not a model file")
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack += [(c, depth + 1) for c in children if isinstance(c, (dict, list))]
    return meta


def _non_finite(obj: Any, path: str) -> None:
    """Refuse to store a NaN/inf anywhere (``fileio.dumps`` would quietly make it ``null``)."""
    import numpy as np

    stack: List[Tuple[Any, str]] = [(obj, "")]
    while stack:
        node, where = stack.pop()
        if isinstance(node, dict):
            stack += [(v, f"{where}.{k}" if where else str(k)) for k, v in node.items()]
        elif isinstance(node, (list, tuple)):
            if all(type(v) is float or type(v) is int for v in node):  # a list of numbers: no path per element
                bad = next((i for i, v in enumerate(node) if type(v) is float and not math.isfinite(v)), None)
                if bad is not None:
                    raise ArtifactError(f"refusing to write {path}: {where}[{bad}] is {node[bad]} "
                                        "(model.json never stores NaN or infinity)")
            else:
                stack += [(v, f"{where}[{i}]") for i, v in enumerate(node)]
        elif isinstance(node, np.ndarray):
            if node.dtype.kind in "fc" and not np.isfinite(node).all():
                raise ArtifactError(f"refusing to write {path}: {where} holds non-finite values "
                                    "(model.json never stores NaN or infinity)")
        elif isinstance(node, (float, np.floating)) and not math.isfinite(float(node)):
            raise ArtifactError(f"refusing to write {path}: {where} is {float(node)} "
                                "(model.json never stores NaN or infinity)")


# ----------------------------------------------------------------------------- field validation
_HEX64 = re.compile(r"[0-9a-f]{64}")
_IDENT = re.compile(r"[A-Za-z0-9_.+-]{1,64}")
_INF = float("inf")
# model_config: (kind, lo, hi) — bounds generous enough for any model that trains, tight enough that
# a tampered size cannot make the loader allocate or build something absurd
_CONFIG = {"image_size": ("int", 8, 8192), "coupling_blocks": ("int", 1, 256), "pos_dim": ("int", 2, 8192),
           "n_intra": ("int", 1, 4096), "pad": ("int", 0, 8192), "clamp": ("num", 0.0, 100.0),
           "hidden_ratio": ("num", 0.0, 64.0), "center_scale": ("num", -1e6, 1e6)}
MAX_CLASSES = 10000
MAX_LEVELS = 16
MAX_DIM = 65536
_NORMALIZER = ("ll_max", "ent_min", "ll_sum_max", "ent_sum_max", "ll_pos_mean", "ll_pos_sd")


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_name(name: Any, where: str = "file name") -> str:
    """A file of the artifact: a plain name inside the model directory (no folder, no ``..``, not
    absolute, not hidden), else ``ArtifactError``."""
    if (not isinstance(name, str) or not 0 < len(name) <= 255 or name in (".", "..") or name.startswith(".")
            or "/" in name or "\\" in name or os.sep in name or not name.isprintable()):
        raise ArtifactError(f"{where} {_show(name)} is not a plain file name inside the model directory "
                            "(no folders, '..', absolute or hidden paths)")
    return name


class _Fields:
    """Type/range checks that raise ``ArtifactError('<model.json>: <where> <what>')``."""

    def __init__(self, path: str):
        self.path = path

    def fail(self, where: str, what: str):
        raise ArtifactError(f"{self.path}: {where} {what}")

    def dict(self, v: Any, where: str) -> Dict[str, Any]:
        if not isinstance(v, dict):
            self.fail(where, f"must be an object, got {type(v).__name__} {_show(v)}")
        return v

    def list(self, v: Any, where: str, n: Optional[int] = None, lo: int = 0, hi: int = 10**7) -> list:
        if not isinstance(v, list):
            self.fail(where, f"must be a list, got {type(v).__name__} {_show(v)}")
        if n is not None and len(v) != n:
            self.fail(where, f"has {len(v)} entries, expected {n}")
        if not lo <= len(v) <= hi:
            self.fail(where, f"has {len(v)} entries, expected {lo}..{hi}")
        return v

    def int(self, v: Any, where: str, lo: float = -_INF, hi: float = _INF) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(where, f"must be an integer, got {_show(v)}")
        if not lo <= v <= hi:
            self.fail(where, f"is {_show(v)}, outside [{lo}, {hi}]")
        return v

    def num(self, v: Any, where: str, lo: float = -_INF, hi: float = _INF, open_lo: bool = False,
            open_hi: bool = False) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self.fail(where, f"must be a number, got {_show(v)}")
        try:
            x = float(v)
        except OverflowError:
            self.fail(where, f"is too large ({len(str(v))} digits)")
        if not math.isfinite(x):
            self.fail(where, f"is {x}, not a finite number")
        if x < lo or x > hi or (open_lo and x == lo) or (open_hi and x == hi):
            self.fail(where, f"is {_show(v)}, outside {'(' if open_lo else '['}{lo}, {hi}{')' if open_hi else ']'}")
        return x

    def str(self, v: Any, where: str, hi: int = 4096) -> str:
        if not isinstance(v, str) or not 0 < len(v) <= hi:
            self.fail(where, f"must be a non-empty string of at most {hi} characters, got {_show(v)}")
        return v

    def choice(self, v: Any, where: str, options: Sequence[str]) -> str:
        if v not in options:
            self.fail(where, f"is {_show(v)}; expected one of {list(options)}")
        return v

    def nums(self, v: Any, where: str, n: Optional[int] = None, min_len: int = 0, lo: float = -_INF,
             hi: float = _INF, open_lo: bool = False, open_hi: bool = False) -> None:
        self.list(v, where, n, min_len)
        if all(type(x) is float or type(x) is int for x in v):  # the fast path: one numpy check (bool is not int here)
            import numpy as np

            try:
                a = np.asarray(v, dtype=np.float64)
            except OverflowError:
                a = None
            if a is not None and (a.size == 0 or (np.isfinite(a).all() and (a.min() > lo if open_lo else a.min() >= lo)
                                                  and (a.max() < hi if open_hi else a.max() <= hi))):
                return
        for i, x in enumerate(v):  # name the first bad one
            self.num(x, f"{where}[{i}]", lo, hi, open_lo, open_hi)


def _model_config(f: _Fields, mc: Any) -> Tuple[List[str], int, int]:
    """(class names, image size, number of levels) of a valid ``model_config``."""
    f.dict(mc, "model_config")
    known = {fl.name for fl in ModelConfig.__dataclass_fields__.values()}
    unknown, missing = sorted(set(mc) - known), sorted(known - set(mc))
    if unknown:
        f.fail("model_config", f"has unknown field(s) {unknown}; known: {sorted(known)}")
    if missing:
        f.fail("model_config", f"lacks {missing}")
    names = f.list(mc["class_names"], "model_config.class_names", lo=1, hi=MAX_CLASSES)
    for i, c in enumerate(names):
        if not isinstance(c, str) or not 0 < len(c) <= 255 or not c.isprintable() or c in (".", "..") or "/" in c:
            f.fail(f"model_config.class_names[{i}]", f"is {_show(c)}: a class name is a plain folder name")
    twice = sorted({c for c in names if names.count(c) > 1})
    if twice:
        f.fail("model_config.class_names", f"lists {twice} more than once: class names must be unique")
    f.str(mc["backbone"], "model_config.backbone", 200)
    for key, (kind, lo, hi) in _CONFIG.items():
        if kind == "int":
            f.int(mc[key], f"model_config.{key}", lo, hi)
        else:
            f.num(mc[key], f"model_config.{key}", lo, hi, open_lo=lo == 0.0)
    size = mc["image_size"]
    levels = f.list(mc["levels"], "model_config.levels", lo=1, hi=MAX_LEVELS)
    for i, lv in enumerate(levels):
        f.list(lv, f"model_config.levels[{i}]", 2)
        f.int(lv[0], f"model_config.levels[{i}][0] (stage)", 0, 16)
        f.num(lv[1], f"model_config.levels[{i}][1] (scale)", 0.0, 8.0, open_lo=True)
    pool = f.list(mc["pool"], "model_config.pool", len(levels))
    for i, k in enumerate(pool):
        if f.int(k, f"model_config.pool[{i}]", 1, size) % 2 == 0:
            f.fail(f"model_config.pool[{i}]", f"is {k}: a pool window is odd")
    return list(names), size, len(levels)


def _calibration(f: _Fields, cal: Any, where: str, names: Sequence[str], shapes: Sequence[Tuple[int, int]]) -> None:
    """Per class {"normalizer", "scores"}: one entry per level, per-position means of each level's
    (h, w), finite numbers, positive spreads, non-empty score lists of known maps."""
    L = len(shapes)
    f.dict(cal, where)
    missing = [c for c in names if c not in cal]
    if missing:
        f.fail(where, f"lacks the class(es) {missing} of model_config.class_names")
    extra = sorted(set(cal) - set(names))
    if extra:
        f.fail(where, f"has class(es) {_show(extra)} the model does not have")
    for c in names:
        at = f"{where}.{c}"
        entry = f.dict(cal[c], at)
        for key in ("normalizer", "scores"):
            if key not in entry:
                f.fail(at, f"lacks {key!r}")
        n = f.dict(entry["normalizer"], f"{at}.normalizer")
        unknown = sorted(set(n) - set(_NORMALIZER))
        if unknown:
            f.fail(f"{at}.normalizer", f"has unknown field(s) {_show(unknown)}; known: {list(_NORMALIZER)}")
        for key in _NORMALIZER[:4]:
            if key not in n:
                f.fail(f"{at}.normalizer", f"lacks {key!r}")
        f.nums(n["ll_max"], f"{at}.normalizer.ll_max", L)
        f.nums(n["ent_min"], f"{at}.normalizer.ent_min", L)
        f.num(n["ll_sum_max"], f"{at}.normalizer.ll_sum_max")
        f.num(n["ent_sum_max"], f"{at}.normalizer.ent_sum_max")
        if ("ll_pos_mean" in n) != ("ll_pos_sd" in n):
            f.fail(f"{at}.normalizer", "has only one of 'll_pos_mean' and 'll_pos_sd'")
        if "ll_pos_mean" in n:
            means = f.list(n["ll_pos_mean"], f"{at}.normalizer.ll_pos_mean", L)
            for l, (h, w) in enumerate(shapes):
                rows = f.list(means[l], f"{at}.normalizer.ll_pos_mean[{l}]", h)
                for r, row in enumerate(rows):
                    f.nums(row, f"{at}.normalizer.ll_pos_mean[{l}][{r}]", w)
            f.nums(n["ll_pos_sd"], f"{at}.normalizer.ll_pos_sd", L, lo=0.0, open_lo=True)
        scores = f.dict(entry["scores"], f"{at}.scores")
        from hgad_edge.postprocess import COMBINE_MODES

        if not scores:
            f.fail(f"{at}.scores", "is empty: no map was calibrated")
        for mode, values in scores.items():
            f.choice(mode, f"{at}.scores key", COMBINE_MODES)
            f.nums(values, f"{at}.scores.{mode}", min_len=1)
        if "position" in scores and "ll_pos_mean" not in n:
            f.fail(f"{at}.normalizer", "lacks 'll_pos_mean', which the 'position' scores need")


def _file_map(f: _Fields, files: Any, where: str) -> List[str]:
    """An export's {role: file name}: plain names."""
    f.dict(files, where)
    return [check_name(v, f"{where}.{k}") for k, v in files.items()]


def _exports(f: _Fields, exports: Any, names: Sequence[str], shapes: Sequence[Tuple[int, int]]) -> List[str]:
    """Every export section well-formed; returns the file names they name."""
    f.dict(exports, "exports")
    used: List[str] = []
    for backend, sec in exports.items():
        at = f"exports.{backend}"
        if not _IDENT.fullmatch(backend):
            f.fail("exports", f"has a section named {_show(backend)}")
        f.dict(sec, at)
        if backend in ("onnxruntime", "openvino", "tensorrt") or "status" in sec:
            f.choice(sec.get("status"), f"{at}.status", EXPORT_STATUSES)
        if "files" in sec:
            used += _file_map(f, sec["files"], f"{at}.files")
        if "engines" in sec:
            for p, eng in f.dict(sec["engines"], f"{at}.engines").items():
                f.choice(p, f"{at}.engines key", PRECISIONS)
                f.dict(eng, f"{at}.engines.{p}")
                if "file" not in eng:
                    f.fail(f"{at}.engines.{p}", "lacks 'file'")
                used.append(check_name(eng["file"], f"{at}.engines.{p}.file"))
                if "status" in eng:
                    f.choice(eng["status"], f"{at}.engines.{p}.status", EXPORT_STATUSES)
            if "default" in sec:
                f.choice(sec["default"], f"{at}.default", list(sec["engines"]))
        if "variants" in sec:
            for p, var in f.dict(sec["variants"], f"{at}.variants").items():
                f.choice(p, f"{at}.variants key", PRECISIONS)
                f.dict(var, f"{at}.variants.{p}")
                if "status" in var:
                    f.choice(var["status"], f"{at}.variants.{p}.status", EXPORT_STATUSES)
                if "files" in var:
                    used += _file_map(f, var["files"], f"{at}.variants.{p}.files")
                if var.get("calibration"):
                    _calibration(f, var["calibration"], f"{at}.variants.{p}.calibration", names, shapes)
                if "accuracy_gate" in var:
                    f.dict(var["accuracy_gate"], f"{at}.variants.{p}.accuracy_gate")
    return list(dict.fromkeys(used))


def validate(meta: Dict[str, Any], path: str = META) -> None:
    """Refuse (``ArtifactError`` naming the field) a current-version model.json dict whose values do
    not fit: see the module docstring. Run on every read (after migration) and before every write."""
    from hgad_edge.postprocess import COMBINE_MODES

    f = _Fields(path)
    f.dict(meta, "model.json")
    for key in ("model_config", "feature_shapes", "dims", "calibration", "combine", "target_fpr", "files",
                "exports", "train_config", "history", "data", "versions"):
        if key not in meta:
            f.fail("model.json", f"lacks the section {key!r} (re-train or re-export the model)")
    names, size, L = _model_config(f, meta["model_config"])
    shapes = []
    for l, hw in enumerate(f.list(meta["feature_shapes"], "feature_shapes", L)):
        f.list(hw, f"feature_shapes[{l}]", 2)
        shapes.append((f.int(hw[0], f"feature_shapes[{l}][0]", 1, size), f.int(hw[1], f"feature_shapes[{l}][1]", 1, size)))
    for l, d in enumerate(f.list(meta["dims"], "dims", L)):
        f.int(d, f"dims[{l}]", 1, MAX_DIM)
    _calibration(f, meta["calibration"], "calibration", names, shapes)
    f.choice(meta["combine"], "combine", COMBINE_MODES)
    lacking = [c for c in names if meta["combine"] not in meta["calibration"][c]["scores"]]
    if lacking:
        f.fail("combine", f"is {meta['combine']!r}, but class(es) {lacking} have no scores for that map")
    f.num(meta["target_fpr"], "target_fpr", 0.0, 1.0, open_lo=True, open_hi=True)
    files = f.dict(meta["files"], "files")
    for name, digest in files.items():
        check_name(name, "files key")
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            f.fail(f"files.{name}", f"is {_show(digest)}, not a sha256 (64 lowercase hex digits)")
    used = _exports(f, meta["exports"], names, shapes)
    unlisted = [n for n in (WEIGHTS, BACKBONE, *used) if n not in files]
    if unlisted:  # an unlisted file would be loaded without its checksum
        raise ArtifactError(f"{path} does not list {unlisted} under 'files' with a checksum")
    f.dict(meta["train_config"], "train_config")
    for i, h in enumerate(f.list(meta["history"], "history")):
        f.dict(h, f"history[{i}]")
    for i, step in enumerate(f.list(meta.get("lineage", []), "lineage")):
        f.dict(step, f"lineage[{i}]")
    data = f.dict(meta["data"], "data")
    if "root" in data and not isinstance(data["root"], str):
        f.fail("data.root", f"must be a string, got {_show(data['root'])}")
    for i, rel in enumerate(f.list(data.get("calibration_files", []), "data.calibration_files")):
        f.str(rel, f"data.calibration_files[{i}]")  # images only read as images (``train --from`` records ../)
    for k, v in f.dict(meta["versions"], "versions").items():
        f.str(v, f"versions.{k}", 200)
    if CONTENT_KEY in meta and not (isinstance(meta[CONTENT_KEY], str) and _HEX64.fullmatch(meta[CONTENT_KEY])):
        f.fail(CONTENT_KEY, f"is {_show(meta[CONTENT_KEY])}, not a sha256")


def _header(path: str) -> Tuple[Dict[str, Tuple[int, ...]], Dict[str, str]]:
    """(tensor name → shape, metadata) from a safetensors header, without reading the tensors."""
    from safetensors import safe_open

    with safe_open(path, framework="numpy") as fh:
        return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}, dict(fh.metadata() or {})


