"""What to score: one ``SourceSpec`` per camera, file, URL or pipeline, from flags or a file.

A sources file is YAML (needs PyYAML) or JSON: either a list of sources or a mapping with
``sources:`` (the list) and optional ``defaults:`` (keys every source inherits)::

    defaults: {alarm: 3/5}
    sources:
      - {id: station1, camera: 0, class: brick, roi: [100, 50, 320, 240]}
      - {id: station2, source: "rtsp://cam2/stream", alarm: 2/4, target_fpr: 0.001}
      - {id: line3, source: line3.mp4, realtime: true}

A source has exactly one of ``camera`` (index) or ``source`` (file, folder, URL, pipeline); a
relative file or folder path is taken relative to the sources file.
Errors name the file, the line and the field (``sources.yaml:7: sources[1].alarm: ...``).
"""
from __future__ import annotations

import json
import math
import numbers
import os
import re
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from hgad_edge.stream.alarm import AlarmDebouncer, parse_alarm
from hgad_edge.stream.capture import MAX_CAMERA_INDEX, check_camera_index, source_kind

Source = Union[int, str]
DEFAULT_ALARM = (3, 5)
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
PER_SOURCE_KEYS = ("class", "roi", "alarm", "target_fpr", "realtime", "fps")
SOURCE_KEYS = ("id", "camera", "source") + PER_SOURCE_KEYS
_UNSET = object()
MAX_ROI = 1 << 16  # pixels: larger than any frame OpenCV decodes
FPS_RANGE = (0.01, 1000.0)  # what OpenCV's mp4v writer opens (0.001 and 1e5 fail; inf hangs it)


def check_number(name: str, value: Any, lo: float, hi: float = math.inf, integer: bool = False,
                 lo_open: bool = False) -> Any:
    """``value`` when it is a finite number (an int if ``integer``) in [lo, hi] (lo excluded when
    ``lo_open``); else a ``ValueError`` naming ``name``, the value and the accepted range."""
    kind = "an integer" if integer else "a number"
    ok = not isinstance(value, bool) and isinstance(value, numbers.Integral if integer else numbers.Real)
    if ok:
        ok = math.isfinite(value) and (value > lo if lo_open else value >= lo) and value <= hi
    if not ok:
        low = f"> {lo:g}" if lo_open else f">= {lo:g}"
        raise ValueError(f"{name} must be {kind} {low}{'' if math.isinf(hi) else f' and <= {hi:g}'}, got {value!r}")
    return value


def check_fps(value: Any, name: str = "fps") -> float:
    return float(check_number(name, value, *FPS_RANGE))


class SourcesError(ValueError):
    """A bad sources file or source option; the message names the file, line and field."""


@dataclass(frozen=True)
class SourceSpec:
    """One source and how its frames are scored.

    Args:
        id: short name used in every record, on the web page and in events.
        source: camera index (int), video file, image folder, rtsp/http URL or GStreamer pipeline.
        class_name: the product class; None routes every frame on its own.
        roi: (x, y, w, h) in pixels: only that crop is scored.
        alarm: (N, M): alarm when >= N of the last M frames are anomalous; None: no alarms.
        target_fpr: this source's false-positive rate (None: the detector's thresholds).
        realtime: files/folders: pace at ``fps`` and keep the newest frame only (live sources
            always are); None/False: every frame in order.
        fps: source rate for pacing and saved video (default: the source's own, else 25).
    """

    id: str
    source: Source
    class_name: Optional[str] = None
    roi: Optional[Tuple[int, int, int, int]] = None
    alarm: Optional[Tuple[int, int]] = DEFAULT_ALARM
    target_fpr: Optional[float] = None
    realtime: Optional[bool] = None
    fps: Optional[float] = None

    def __post_init__(self):
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"source id must be a non-empty string, got {self.id!r}")
        if not isinstance(self.source, (int, str)) or isinstance(self.source, bool) or self.source == "":
            raise ValueError(f"source must be a camera index (int) or a path/URL/pipeline (str), got {self.source!r}")
        if isinstance(self.source, int):
            check_camera_index(self.source)
        if self.alarm is not None:
            AlarmDebouncer(*self.alarm)  # validates N/M
        if self.roi is not None:
            object.__setattr__(self, "roi", parse_roi(self.roi))
        if self.target_fpr is not None:
            _fpr(self.target_fpr)
        if self.fps is not None:
            check_fps(self.fps)

    @property
    def display(self) -> str:
        """The source as it may be shown (a URL's password replaced by ***)."""
        return redact(self.source)


def redact(source: Source) -> str:
    """``rtsp://user:secret@host/x`` → ``rtsp://user:***@host/x``; anything else as it is."""
    return re.sub(r"(://[^/@:\s]*:)[^/@\s]*@", r"\1***@", str(source))


def default_id(source: Source, taken: Sequence[str], position: int) -> str:
    """``cam0`` for camera 0, the file or folder name without extension, else ``src<position>``;
    ``-2``, ``-3`` ... appended when taken."""
    kind = source_kind(source)
    if kind == "camera":
        base = f"cam{source}"
    elif kind in ("file", "folder"):
        stem = os.path.splitext(os.path.basename(os.path.normpath(str(source))))[0]
        base = re.sub(r"[^A-Za-z0-9_.-]", "_", stem).lstrip("._-")[:60] or f"src{position}"
    else:
        base = f"src{position}"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    return name


# ----------------------------------------------------------------------------- field parsers


def parse_roi(value: Any) -> Tuple[int, int, int, int]:
    """[x, y, w, h] or "x,y,w,h" → a validated tuple."""
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise ValueError(f"roi must be x,y,w,h in pixels (e.g. [100, 50, 320, 240]), got {value!r}")
    try:
        x, y, w, h = (_int(v) for v in value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"roi must be four integers x,y,w,h, got {value!r}") from e
    if min(x, y) < 0 or min(w, h) < 1 or max(x + w, y + h) > MAX_ROI:
        raise ValueError(f"roi needs x, y >= 0 and w, h >= 1 (x + w and y + h <= {MAX_ROI}), got {value!r}")
    return x, y, w, h


def _int(v: Any) -> int:
    if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
        raise ValueError(f"not an integer: {v!r}")
    return int(str(v).strip()) if isinstance(v, str) else int(v)


def _alarm(value: Any) -> Optional[Tuple[int, int]]:
    if value is None or value is False:  # YAML reads a bare `off` as false
        return None
    if isinstance(value, (list, tuple)) and len(value) == 2:
        value = f"{_int(value[0])}/{_int(value[1])}"
    if not isinstance(value, str):
        raise ValueError(f"alarm must look like N/M (e.g. 3/5) or 'off', got {value!r}")
    return parse_alarm(value)


def check_fpr(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise ValueError(f"target_fpr must be in (0, 1), got {value!r}")
    return float(value)


def _fpr(value: Any) -> Optional[float]:
    return None if value is None else check_fpr(value)


def _fps(value: Any) -> Optional[float]:
    return None if value is None else check_fps(value)


def _bool(value: Any) -> Optional[bool]:
    if value is None or isinstance(value, bool):
        return value
    raise ValueError(f"realtime must be true or false, got {value!r}")


def _class(value: Any) -> Optional[str]:
    if value is None or (isinstance(value, str) and value):
        return value
    raise ValueError(f"class must be a class name of the model, got {value!r}")


PARSERS = {"class": ("class_name", _class), "roi": ("roi", lambda v: None if v is None else parse_roi(v)),
           "alarm": ("alarm", _alarm), "target_fpr": ("target_fpr", _fpr), "realtime": ("realtime", _bool),
           "fps": ("fps", _fps)}


# ----------------------------------------------------------------------------- building specs


def apply_options(spec: SourceSpec, options: Mapping[str, Any]) -> SourceSpec:
    """``spec`` with the per-source keys of ``options`` (file spelling: class, roi, ...) parsed in."""
    return replace(spec, **{PARSERS[k][0]: PARSERS[k][1](v) for k, v in options.items()})


def from_flags(inputs: Sequence[Tuple[str, Source]], defaults: Optional[Mapping[str, Any]] = None,
               short_ids: Optional[bool] = None) -> List[SourceSpec]:
    """Sources given as ``--camera N`` / ``--source SRC`` flags (in order), with the command
    line's per-source options as ``defaults``. ``short_ids`` (default: with several sources)
    names them ``cam0``, ``line3``, ``src3``; otherwise the source itself is the id, so the
    records of a single-source stream stay as they were."""
    short = len(inputs) > 1 if short_ids is None else short_ids
    specs: List[SourceSpec] = []
    for i, (_, src) in enumerate(inputs):
        sid = default_id(src, [s.id for s in specs], i + 1) if short else redact(src)
        specs.append(apply_options(SourceSpec(id=sid, source=src), dict(defaults or {})))
    return specs


def load_sources(path: str, defaults: Optional[Mapping[str, Any]] = None, taken: Sequence[str] = ()
                 ) -> List[SourceSpec]:
    """Read a YAML or JSON sources file.

    Args:
        path: the file (``.json`` is read as JSON, anything else as YAML).
        defaults: per-source options from the command line (the file's ``defaults:`` and each
            source's own keys override them).
        taken: ids already used by sources from flags.

    Raises:
        SourcesError: naming ``path:line: field`` and what is wrong.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise SourcesError(f"sources file {path!r}: {e.strerror or e}") from e
    data, lines = _parse(path, text)

    def fail(where: Tuple[Any, ...], msg: str) -> SourcesError:
        line = next((lines[where[:n]] for n in range(len(where), -1, -1) if where[:n] in lines), None)
        field = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else p) for i, p in enumerate(where))
        return SourcesError(f"{path}{f':{line}' if line else ''}: {field + ': ' if field else ''}{msg}")

    file_defaults: Dict[str, Any] = {}
    if isinstance(data, list):
        entries, root = data, ()
    elif isinstance(data, dict):
        unknown = sorted(set(data) - {"sources", "defaults"})
        if unknown:
            raise fail((unknown[0],), "unknown key; a sources file has 'sources' and optional 'defaults'")
        if "sources" not in data:
            raise fail((), "no 'sources' list")
        entries, root = data["sources"], ("sources",)
        file_defaults = data.get("defaults") or {}
        if not isinstance(file_defaults, dict):
            raise fail(("defaults",), "must be a mapping of per-source keys")
        for k in file_defaults:
            if k not in PER_SOURCE_KEYS:
                raise fail(("defaults", k), f"unknown key; defaults may set {', '.join(PER_SOURCE_KEYS)}")
    else:
        raise fail((), "must be a list of sources or a mapping with a 'sources' list")
    if not isinstance(entries, list) or not entries:
        raise fail(root, "must be a non-empty list of sources")

    base = dict(defaults or {})
    for k, v in file_defaults.items():
        try:
            PARSERS[k][1](v)
        except ValueError as e:
            raise fail(("defaults", k), str(e)) from None
        base[k] = v
    specs: List[SourceSpec] = []
    ids = list(taken)
    for i, entry in enumerate(entries):
        where = root + (i,)
        if not isinstance(entry, dict):
            raise fail(where, "a source must be a mapping (id, camera or source, and options)")
        for k in entry:
            if k not in SOURCE_KEYS:
                raise fail(where + (k,), f"unknown key; a source may have {', '.join(SOURCE_KEYS)}")
        if ("camera" in entry) == ("source" in entry):
            raise fail(where, "needs exactly one of 'camera' (an index) or 'source' (file, folder, URL, pipeline)")
        if "camera" in entry:
            cam = entry["camera"]
            try:
                src: Source = check_camera_index(cam)
            except ValueError:
                raise fail(where + ("camera",), f"must be a camera index >= 0 and <= {MAX_CAMERA_INDEX} (/dev/videoN), "
                                                f"got {cam!r}") from None
        else:
            src = entry["source"]
            if not isinstance(src, str) or not src.strip():
                raise fail(where + ("source",), f"must be a file, folder, URL or pipeline (a string), got {src!r}")
            if source_kind(src) in ("file", "folder") and not os.path.isabs(src):
                src = os.path.join(os.path.dirname(os.path.abspath(path)), src)  # relative to the file
        sid = entry.get("id", _UNSET)
        if sid is _UNSET:
            sid = default_id(src, ids, len(ids) + 1)
        elif not isinstance(sid, str) or not ID_PATTERN.match(sid):
            raise fail(where + ("id",), f"must be 1-64 letters, digits, '_', '.' or '-' (starting with a letter or "
                                        f"digit), got {sid!r}")
        elif sid in ids:
            raise fail(where + ("id",), f"duplicate id {sid!r}")
        ids.append(sid)
        spec = SourceSpec(id=sid, source=src)
        options = {**base, **{k: v for k, v in entry.items() if k in PER_SOURCE_KEYS}}
        for k, v in options.items():
            try:
                spec = apply_options(spec, {k: v})
            except ValueError as e:
                origin = where + (k,) if k in entry else (("defaults", k) if k in file_defaults else where)
                raise fail(origin, str(e)) from None
        specs.append(spec)
    return specs


def _parse(path: str, text: str) -> Tuple[Any, Dict[Tuple[Any, ...], int]]:
    """The file's data and the 1-based line of every key / list item (by path)."""
    if path.lower().endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SourcesError(f"{path}:{e.lineno}: not valid JSON: {e.msg} (column {e.colno})") from None
        try:  # JSON is YAML's flow syntax: the YAML composer gives its lines when PyYAML is there
            return data, _lines(_compose(text))
        except Exception:  # noqa: BLE001 (lines are a courtesy; the JSON itself was valid)
            return data, {}
    try:
        import yaml  # lazy: only YAML sources files need PyYAML
    except ImportError:
        raise SourcesError(f"{path}: reading a YAML sources file needs PyYAML (pip install pyyaml), "
                           "or write it as JSON (a .json file)") from None
    try:
        node = _compose(text)
        data = yaml.safe_load(text)  # safe_load: plain data only, never Python objects
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise SourcesError(f"{path}{where}: not valid YAML: {getattr(e, 'problem', None) or e}") from None
    return data, _lines(node)


def _compose(text: str):
    import yaml

    return yaml.compose(text, Loader=yaml.SafeLoader)


def _lines(node, where: Tuple[Any, ...] = ()) -> Dict[Tuple[Any, ...], int]:
    import yaml

    out: Dict[Tuple[Any, ...], int] = {}
    if node is None:
        return out
    out[where] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = where + (k.value,)
            out.update(_lines(v, key))
            out[key] = k.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out.update(_lines(v, where + (i,)))
    return out
