"""Hostile model directories and operator mistakes (issue 17, the model artifact): nothing outside
RUN_DIR is read or written through a link, model.json names only plain files with checksums, every
field of model.json is validated (each tampered file below is an ``ArtifactError`` with a one-line
message, CLI exit 2, no traceback), format 4 protects its own content with a checksum, files get the
umask's permissions and non-finite numbers are never stored.

The artifact is a real one: a 64² two-class model, trained one epoch and exported to ONNX.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest

from hgad_edge import artifact, data, fileio
from hgad_edge.artifact import Artifact, ArtifactError
from hgad_edge.cli.commands import main as cli_main
from hgad_edge.config import ModelConfig, TrainConfig
from hgad_edge.detector import Detector

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = dict(image_size=64, coupling_blocks=1, n_intra=2)


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _train_and_export(root: str, out: str) -> str:
    from hgad_edge.export.pipeline import ExportConfig, export_model
    from hgad_edge.train.loop import train

    cfg = ModelConfig(class_names=tuple(data.resolve_classes(root, None)), **TINY)
    train(root, out, cfg, TrainConfig(epochs=1, batch_size=4, stage1_epochs=1), progress=False)
    export_model(out, ExportConfig(formats=("onnx",)))
    return out


@pytest.fixture(scope="module")
def run(tiny_root, tmp_path_factory) -> str:
    """Trained and exported under umask 022 (the permission test below reads its modes)."""
    with umask(0o022):
        return _train_and_export(tiny_root, str(tmp_path_factory.mktemp("hostile") / "run"))


@pytest.fixture(scope="module")
def image(tiny_root) -> str:
    return data.test_samples(tiny_root, ["grass"])[0].path


def _copy(run: str, tmp_path, name: str = "run") -> str:
    dst = str(tmp_path / name)
    shutil.copytree(run, dst, symlinks=True)
    return dst


def _meta(run: str) -> dict:
    with open(os.path.join(run, artifact.META), encoding="utf-8") as f:
        return json.load(f)


def _put(run: str, meta, sign: bool = True) -> None:
    """Write ``meta`` as model.json; ``sign``: recompute the content checksum as an attacker would,
    so what is tested is the field validation, not the checksum."""
    if sign and isinstance(meta, dict):
        meta[artifact.CONTENT_KEY] = artifact.content_checksum(meta)
    with open(os.path.join(run, artifact.META), "w", encoding="utf-8") as f:
        json.dump(meta, f)


def _one_line_error(run: str, match: str) -> None:
    """``ArtifactError`` matching ``match``, in one line, from ``Artifact.read`` and ``Detector``."""
    with pytest.raises(ArtifactError, match=match) as e:
        Artifact.read(run)
    assert "\n" not in str(e.value)
    with pytest.raises(ArtifactError, match=match):
        Detector(run, backend="torch", device="cpu")


def _cli_refuses(run: str, image: str, tmp_path, capsys, match: str) -> None:
    capsys.readouterr()
    assert cli_main(["predict", run, image, "--out", str(tmp_path / "out"), "--backend", "torch"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("hgad-edge predict: error: "), err
    assert re.search(match, err[0]) and "Traceback" not in err[0], err


# ----------------------------------------------------------------------------- 3/4: field validation
def _set(*keys, value):
    def edit(m):
        node = m
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value(node[keys[-1]]) if callable(value) else copy.deepcopy(value)
    return edit


def _drop(*keys):
    def edit(m):
        node = m
        for k in keys[:-1]:
            node = node[k]
        del node[keys[-1]]
    return edit


def _nested(depth: int):
    node: list = []
    for _ in range(depth):
        node = [node]
    return node


CAL = ("calibration", "grass")
NORM = CAL + ("normalizer",)
# (id, edit of the parsed model.json (then re-signed), what the error says)
MUTATIONS = [
    *[(f"no {k}", _drop(k), re.escape(k)) for k in
      ("model_config", "feature_shapes", "dims", "calibration", "combine", "target_fpr", "files", "exports",
       "train_config", "history", "data", "versions")],
    ("no class_names", _drop("model_config", "class_names"), r"model_config lacks \['class_names'\]"),
    ("no image_size", _drop("model_config", "image_size"), r"lacks \['image_size'\]"),
    ("unknown config field", _set("model_config", "evil", value=1), "unknown field"),
    ("config is a list", _set("model_config", value=[]), "model_config must be an object"),
    ("class_names a string", _set("model_config", "class_names", value="grass"), "class_names must be a list"),
    ("no classes", _set("model_config", "class_names", value=[]), r"class_names has 0 entries"),
    ("duplicated class", _set("model_config", "class_names", value=["grass", "grass"]), "more than once"),
    ("class name a path", _set("model_config", "class_names", value=["../grass", "retina"]), "plain folder name"),
    ("class name not a string", _set("model_config", "class_names", value=[1, "retina"]), "plain folder name"),
    ("swapped classes", _set("model_config", "class_names", value=["retina", "grass"]), "in this order"),
    ("image_size a string", _set("model_config", "image_size", value="64"), "image_size must be an integer"),
    ("image_size a float", _set("model_config", "image_size", value=64.5), "image_size must be an integer"),
    ("image_size a bool", _set("model_config", "image_size", value=True), "image_size must be an integer"),
    ("negative image_size", _set("model_config", "image_size", value=-64), r"image_size is -64, outside"),
    ("huge image_size", _set("model_config", "image_size", value=10**12), r"image_size is 1000000000000"),
    ("huge n_intra", _set("model_config", "n_intra", value=10**9), r"n_intra is 1000000000, outside"),
    ("zero coupling blocks", _set("model_config", "coupling_blocks", value=0), "coupling_blocks is 0"),
    ("levels cut short", _set("model_config", "levels", value=lambda v: v[:2]), r"pool has 3 entries, expected 2"),
    ("levels and pool cut short", lambda m: (_set("model_config", "levels", value=lambda v: v[:2])(m),
                                             _set("model_config", "pool", value=lambda v: v[:2])(m)),
     r"feature_shapes has 3 entries, expected 2"),
    ("even pool", _set("model_config", "pool", value=[2, 3, 1]), "pool window is odd"),
    ("feature_shapes a string", _set("feature_shapes", value="8x8"), "feature_shapes must be a list"),
    ("no feature levels", _set("feature_shapes", value=[]), "feature_shapes has 0 entries, expected 3"),
    ("negative feature size", _set("feature_shapes", 0, value=[-8, 8]), r"feature_shapes\[0\]\[0\] is -8"),
    ("feature shape vs calibration", _set("feature_shapes", 0, value=[4, 4]), r"ll_pos_mean\[0\] has 8 entries, expected 4"),
    ("dims vs weights", _set("dims", 0, value=41), r"gmm.0.mu of shape \[2, 40\].*\[2, 41\]"),
    ("huge dims", _set("dims", 0, value=2**40), r"dims\[0\] is 1099511627776"),
    ("calibration of a class a number", _set(*CAL, value=3), "calibration.grass must be an object"),
    ("calibration of an unknown class", lambda m: m["calibration"].update(zzz=m["calibration"]["grass"]),
     r"class\(es\) \['zzz'\] the model does not have"),
    ("no calibration of a class", _drop(*CAL), r"calibration lacks the class\(es\) \['grass'\]"),
    ("normalizer level cut short", _set(*NORM, "ll_max", value=lambda v: v[:2]), r"ll_max has 2 entries, expected 3"),
    ("normalizer a string number", _set(*NORM, "ll_sum_max", value="1.0"), "ll_sum_max must be a number"),
    ("broadcasting position means", _set(*NORM, "ll_pos_mean", 0, value=[[-3.0]]), r"ll_pos_mean\[0\] has 1 entries"),
    ("position means flattened", _set(*NORM, "ll_pos_mean", 0, value=lambda v: [x for r in v for x in r]),
     r"ll_pos_mean\[0\] has 64 entries, expected 8"),
    ("zero spread", _set(*NORM, "ll_pos_sd", 0, value=0.0), r"ll_pos_sd\[0\] is 0.0, outside \(0.0"),
    ("huge number", _set(*NORM, "ll_sum_max", value=10**400), "ll_sum_max is too large"),
    ("empty scores", _set(*CAL, "scores", "position", value=[]), r"scores.position has 0 entries"),
    ("score a string", _set(*CAL, "scores", "position", 0, value="1.4"), r"scores.position\[0\] must be a number"),
    ("unknown map", _set(*CAL, "scores", "evil", value=[1.0]), "expected one of"),
    ("combine unknown", _set("combine", value="evil"), "combine is 'evil'"),
    ("target_fpr 0", _set("target_fpr", value=0), r"target_fpr is 0, outside \(0.0, 1.0\)"),
    ("target_fpr huge", _set("target_fpr", value=1e300), r"target_fpr is 1e\+300"),
    ("files a list", _set("files", value=[]), "files must be an object, got list"),
    ("checksum not hex", _set("files", artifact.WEIGHTS, value="abc"), "not a sha256"),
    ("format_version a bool", _set("format_version", value=True), "format version True"),
    ("format_version a float", _set("format_version", value=4.0), "format version 4.0"),
    ("export status unknown", _set("exports", "onnxruntime", "status", value="great"), "status is 'great'"),
    ("exports a list", _set("exports", value=[]), "exports must be an object"),
    ("export files a list", _set("exports", "onnxruntime", "files", value=["model.onnx"]), "files must be an object"),
    ("calibration file not a path", _set("data", "calibration_files", value=[7]), r"calibration_files\[0\] must be a non-empty"),
    ("deep nesting", _set("notes", value=_nested(200)), "nests more than 32 levels"),
    ("version string", _set("versions", "torch", value=["2"]), "versions.torch must be a non-empty string"),
    ("history not a list", _set("history", value={"loss": 1}), "history must be a list"),
]
# Raw file contents (not JSON-parsable as a model, or not re-signable): what the error says
RAW = [
    ("NaN literal", lambda t: t.replace('"ll_sum_max": ', '"ll_sum_max": NaN, "x": ', 1), "NaN is not a JSON number"),
    ("Infinity literal", lambda t: t.replace('"target_fpr": ', '"target_fpr": Infinity, "x": ', 1), "Infinity is not"),
    ("-Infinity literal", lambda t: t.replace('"ll_sum_max": ', '"ll_sum_max": -Infinity, "x": ', 1), "-Infinity is not"),
    ("overflowing float", lambda t: t.replace('"target_fpr": ', '"target_fpr": 1e999, "x": ', 1), "1e999, out of the float"),
    ("5000-digit integer", lambda t: t.replace('"dims": [', '"dims": [' + "9" * 5000 + ", ", 1), "not valid JSON"),
    ("non-UTF-8 bytes", lambda t: t.replace('"grass"', '"gr\udcffss"', 1), "not UTF-8"),
    ("JSON array", lambda t: "[" + t + "]", "is not an hgad_edge model file"),
    ("a bare number", lambda t: "4", "is not an hgad_edge model file"),
    ("duplicate key", lambda t: t.replace("{", '{"combine": "loglik", ', 1), "key 'combine' appears twice"),
    ("nested 100000 deep", lambda t: "[" * 100000 + "]" * 100000, "not valid JSON"),
    ("empty file", lambda t: "", "not valid JSON"),
    ("truncated", lambda t: t[: len(t) // 2], "not valid JSON"),
]


@pytest.mark.parametrize("edit, match", [m[1:] for m in MUTATIONS], ids=[m[0] for m in MUTATIONS])
def test_tampered_and_re_signed_model_json_is_refused(run, image, tmp_path, capsys, edit, match):
    bad = _copy(run, tmp_path)
    meta = _meta(bad)
    edit(meta)
    _put(bad, meta)
    _one_line_error(bad, match)
    _cli_refuses(bad, image, tmp_path, capsys, match)


@pytest.mark.parametrize("edit, match", [m[1:] for m in RAW], ids=[m[0] for m in RAW])
def test_model_json_that_is_not_strict_json_is_refused(run, image, tmp_path, capsys, edit, match):
    bad = _copy(run, tmp_path)
    with open(os.path.join(bad, artifact.META), encoding="utf-8") as f:
        text = f.read()
    with open(os.path.join(bad, artifact.META), "wb") as f:
        f.write(edit(text).encode("utf-8", "surrogateescape"))
    _one_line_error(bad, match)
    _cli_refuses(bad, image, tmp_path, capsys, match)


def test_a_2_gb_model_json_is_refused_without_reading_it(run, tmp_path):
    bad = _copy(run, tmp_path)
    with open(os.path.join(bad, artifact.META), "r+b") as f:
        f.truncate(2 << 30)  # sparse: nothing is really written
    _one_line_error(bad, r"is 2147483648 bytes; a model file is at most")


def test_a_weights_header_claiming_2_gb_is_refused(run, tmp_path):
    bad = _copy(run, tmp_path)
    path = os.path.join(bad, artifact.WEIGHTS)
    with open(path, "r+b") as f:
        f.write((2 << 30).to_bytes(8, "little"))  # the header length field
    meta = _meta(bad)
    meta["files"][artifact.WEIGHTS] = fileio.sha256(path)
    _put(bad, meta)
    Artifact.read(bad)  # model.json is consistent: the weights themselves are refused by their loader
    with pytest.raises(ArtifactError, match="as safetensors"):
        Detector(bad, backend="torch", device="cpu")


def test_the_cli_process_exits_2_with_one_line_and_no_traceback(run, image, tmp_path):
    bad = _copy(run, tmp_path)
    meta = _meta(bad)
    meta["model_config"]["class_names"] = ["grass", "grass"]
    _put(bad, meta)
    cli = "import sys; from hgad_edge.cli import main; sys.exit(main())"  # what the hgad-edge script runs
    r = subprocess.run([sys.executable, "-c", cli, "predict", bad, image, "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines == [lines[-1]] and "more than once" in lines[-1] and "Traceback" not in r.stderr, r.stderr


# ----------------------------------------------------------------------------- 3: the content checksum
@pytest.mark.parametrize("edit", [
    lambda t: re.sub(r'("position": \[\s*)(\d)', lambda m: m.group(1) + str((int(m.group(2)) + 1) % 10), t, 1),
    lambda t: t.replace('"target_fpr": 0.01', '"target_fpr": 0.02', 1),
    lambda t: t.replace('"status": "passed"', '"status": "unvalidated"', 1),
    lambda t: t.replace('"format_version": 4', '"format_version": 3', 1),  # a downgrade keeps the key
], ids=["one digit of a calibration score", "target_fpr", "an export status", "format version downgraded"])
def test_any_edit_of_a_format_4_model_json_is_refused(run, image, tmp_path, capsys, edit):
    bad = _copy(run, tmp_path)
    path = os.path.join(bad, artifact.META)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    edited = edit(text)
    assert edited != text
    with open(path, "w", encoding="utf-8") as f:
        f.write(edited)
    match = r"was edited after it was written \(content checksum"
    _one_line_error(bad, match)
    _cli_refuses(bad, image, tmp_path, capsys, match)


def test_a_format_4_model_json_without_its_checksum_is_refused(run, tmp_path):
    bad = _copy(run, tmp_path)
    meta = _meta(bad)
    del meta[artifact.CONTENT_KEY]
    _put(bad, meta, sign=False)
    _one_line_error(bad, "lacks its content checksum")


def test_reformatting_model_json_keeps_it_valid(run, tmp_path):
    """The checksum is of the content, not of the bytes: key order and whitespace do not matter."""
    ok = _copy(run, tmp_path)
    meta = _meta(ok)
    with open(os.path.join(ok, artifact.META), "w", encoding="utf-8") as f:
        json.dump(dict(reversed(list(meta.items()))), f, indent=7)
    assert Artifact.read(ok).to_dict() == Artifact.read(run).to_dict()


def test_every_writer_records_the_content_checksum(run):
    meta = _meta(run)  # written by train, then by the export's add_files
    assert meta["format_version"] == artifact.FORMAT_VERSION == 4
    assert meta[artifact.CONTENT_KEY] == artifact.content_checksum(meta)
    assert "onnxruntime" in meta["exports"]


def test_model_json_is_written_only_by_artifact_write():
    """Static guard: no module but artifact.py writes model.json (so its checksum is always right)."""
    offenders = []
    for folder in ("hgad_edge", "export"):
        for dirpath, _, files in os.walk(os.path.join(REPO, folder)):
            for name in files:
                path = os.path.join(dirpath, name)
                if not name.endswith(".py") or path.endswith(os.path.join("hgad_edge", "artifact.py")):
                    continue
                with open(path, encoding="utf-8") as f:
                    src = f.read()
                for m in re.finditer(r"(write_json|write_bytes|atomic_write|open)\(([^)]*)", src):
                    if "META" in m.group(2) or "model.json" in m.group(2):
                        offenders.append(f"{os.path.relpath(path, REPO)}: {m.group(0)}")
    assert not offenders, offenders


# ----------------------------------------------------------------------------- 2: file names
@pytest.mark.parametrize("name", ["../weights.safetensors", "/etc/hostname", "sub/weights.safetensors", "",
                                  ".hidden", "..", "a\\b"])
def test_a_file_entry_that_is_not_a_plain_name_is_refused(run, tmp_path, name):
    bad = _copy(run, tmp_path)
    target = os.path.normpath(os.path.join(bad, name))  # where a loader would look: make it exist
    if name and not os.path.exists(target) and fileio.within(os.path.dirname(target), str(tmp_path)):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(os.path.join(bad, artifact.WEIGHTS), target)
    meta = _meta(bad)
    meta["files"][name] = fileio.sha256(target) if os.path.isfile(target) else meta["files"][artifact.WEIGHTS]
    _put(bad, meta)
    _one_line_error(bad, "not a plain file name inside the model directory")


@pytest.mark.parametrize("listed", [True, False], ids=["listed with its checksum", "not listed"])
@pytest.mark.parametrize("where", ["export files", "variant files", "engine file"])
def test_an_export_naming_a_file_outside_the_directory_is_refused(run, tmp_path, where, listed):
    bad = _copy(run, tmp_path)
    outside = str(tmp_path / "outside.onnx")
    shutil.copyfile(os.path.join(bad, "model.onnx"), outside)
    rel = os.path.relpath(outside, bad)  # ../outside.onnx
    meta = _meta(bad)
    if listed:
        meta["files"][rel] = fileio.sha256(outside)
    ort = meta["exports"]["onnxruntime"]
    if where == "export files":
        ort["files"]["model"] = rel
    elif where == "variant files":
        ort["variants"]["int8"] = {"precision": "int8", "status": "passed", "files": {"backbone": rel, "flows": rel}}
    else:
        meta["exports"]["tensorrt"] = {"status": "unvalidated", "engines": {"fp16": {"file": rel}}}
    _put(bad, meta)
    _one_line_error(bad, r"'\.\./outside.onnx' is not a plain file name")


def test_an_export_file_not_listed_is_never_loaded_unchecked(run, tmp_path):
    bad = _copy(run, tmp_path)
    shutil.copyfile(os.path.join(bad, "model.onnx"), os.path.join(bad, "other.onnx"))
    meta = _meta(bad)
    meta["exports"]["onnxruntime"]["files"]["model"] = "other.onnx"
    _put(bad, meta)
    with pytest.raises(ArtifactError, match=r"does not list \['other.onnx'\] under 'files'"):
        Detector(bad, backend="onnxruntime", device="cpu")


# ----------------------------------------------------------------------------- 1: links
@pytest.mark.parametrize("name", [artifact.WEIGHTS, artifact.BACKBONE, artifact.REPLAY, "model.onnx", artifact.META])
def test_a_listed_file_linked_outside_the_directory_is_refused(run, tmp_path, name):
    bad = _copy(run, tmp_path)
    outside = str(tmp_path / ("outside_" + name))
    shutil.move(os.path.join(bad, name), outside)  # same bytes: the checksum alone would pass it
    os.symlink(outside, os.path.join(bad, name))
    _one_line_error(bad, re.escape(name) + r" is a link to .*, outside the model directory")


def test_links_inside_the_directory_and_a_linked_directory_are_fine(run, tmp_path):
    ok = _copy(run, tmp_path)
    os.rename(os.path.join(ok, "flows.onnx"), os.path.join(ok, "flows.real"))
    os.symlink("flows.real", os.path.join(ok, "flows.onnx"))
    link = str(tmp_path / "current")
    os.symlink(ok, link)
    assert Artifact.read(link).class_names == ["grass", "retina"]


def test_export_replaces_links_planted_at_its_output_names(run, tmp_path):
    """Links planted at every output name and at the temporary names a writer might use: the export
    replaces the links with its files and never writes through them."""
    from hgad_edge.export.pipeline import ExportConfig, export_model

    work = _copy(run, tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    names = ["backbone.onnx", "flows.onnx", "model.onnx", "full_graph.onnx"]
    for name in names:
        if os.path.lexists(os.path.join(work, name)):
            os.remove(os.path.join(work, name))
        os.symlink(str(victim), os.path.join(work, name))
    for name in names + [artifact.META]:
        for tmp in (name + ".tmp", "." + name + ".tmp", name + "~", name + ".part"):
            if not os.path.lexists(os.path.join(work, tmp)):
                os.symlink(str(victim), os.path.join(work, tmp))
    meta = _meta(work)
    meta["exports"] = {}
    for name in names:
        meta["files"].pop(name, None)
    _put(work, meta)
    export_model(work, ExportConfig(formats=("onnx",), full_graph=True))
    assert victim.read_text() == "precious"
    for name in names + [artifact.META]:
        assert not os.path.islink(os.path.join(work, name)) and os.path.isfile(os.path.join(work, name)), name
    assert Artifact.read(work).exports["onnxruntime"]["status"] == "passed"


def test_a_triton_export_replaces_a_link_at_its_model_folder(run, tmp_path):
    from hgad_edge.export.triton import export_triton

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    repo = tmp_path / "repo"
    repo.mkdir()
    os.symlink(str(victim), str(repo / "hgad_edge"))
    with pytest.raises(ValueError, match="already exists"):
        export_triton(run, str(repo), instance_kind="cpu")
    folder = export_triton(run, str(repo), instance_kind="cpu", overwrite=True)
    assert not os.path.islink(folder) and os.path.isfile(os.path.join(folder, "config.pbtxt"))
    assert os.listdir(victim) == ["keep.txt"] and (victim / "keep.txt").read_text() == "precious"


def test_export_refuses_a_model_json_linked_outside(run, tmp_path):
    from hgad_edge.export.pipeline import ExportConfig, export_model

    work = _copy(run, tmp_path)
    outside = tmp_path / "elsewhere.json"
    shutil.move(os.path.join(work, artifact.META), outside)
    os.symlink(str(outside), os.path.join(work, artifact.META))
    before = outside.read_bytes()
    with pytest.raises(ArtifactError, match="outside the model directory"):
        export_model(work, ExportConfig(formats=("onnx",)))
    assert outside.read_bytes() == before


def test_add_files_refuses_a_link_out_and_a_non_plain_name(run, tmp_path):
    work = _copy(run, tmp_path)
    (tmp_path / "x.bin").write_bytes(b"x")
    os.symlink(str(tmp_path / "x.bin"), os.path.join(work, "x.bin"))
    with pytest.raises(ArtifactError, match="outside the model directory"):
        Artifact.read(work).add_files(["x.bin"])
    with pytest.raises(ArtifactError, match="not a plain file name"):
        Artifact.read(work).add_files(["../x.bin"])
    assert Artifact.read(work).files == Artifact.read(run).files  # nothing was written


# ----------------------------------------------------------------------------- 5: permissions
def _modes(run_dir: str) -> dict:
    return {n: stat.S_IMODE(os.stat(os.path.join(run_dir, n)).st_mode) for n in sorted(os.listdir(run_dir))}


def test_files_of_a_run_get_the_umask_permissions(run, tiny_root, tmp_path):
    from hgad_edge.export.triton import export_triton

    modes = _modes(run)  # trained and exported under umask 022
    assert {artifact.META, artifact.WEIGHTS, artifact.BACKBONE, "model.onnx"} <= set(modes)
    assert set(modes.values()) == {0o644}, {n: oct(m) for n, m in modes.items()}
    with umask(0o077):
        private = _train_and_export(tiny_root, str(tmp_path / "private"))
        folder = export_triton(private, str(tmp_path / "repo"), instance_kind="cpu")
    modes = _modes(private)
    assert set(modes.values()) == {0o600}, {n: oct(m) for n, m in modes.items()}
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    with umask(0o022):
        folder = export_triton(run, str(tmp_path / "repo2"), instance_kind="cpu")
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o755  # not mkdtemp's 0700
    for dirpath, _, files in os.walk(folder):
        for name in files:
            assert stat.S_IMODE(os.stat(os.path.join(dirpath, name)).st_mode) == 0o644, name


def test_atomic_write_honours_the_umask_whatever_the_writer_does(tmp_path):
    """safetensors writes its own 0600 temporary and renames it onto the path it is given."""
    import torch

    for mask, want in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
        path = str(tmp_path / f"t{mask:o}.safetensors")
        with umask(mask):
            fileio.save_tensors(path, {"a": torch.zeros(2)})
            fileio.write_bytes(path + ".bin", b"x")
        assert stat.S_IMODE(os.stat(path).st_mode) == want
        assert stat.S_IMODE(os.stat(path + ".bin").st_mode) == want


# ----------------------------------------------------------------------------- 6: strict JSON out
@pytest.mark.parametrize("where, value", [
    ("score", float("nan")), ("score", np.float32("inf")), ("normalizer", float("-inf")),
    ("position means", np.array([[np.nan]])), ("history", float("nan")),
])
def test_non_finite_values_are_never_written(run, tmp_path, where, value):
    work = _copy(run, tmp_path)
    before = open(os.path.join(work, artifact.META), "rb").read()
    art = Artifact.read(work)
    cal = art.calibration["grass"]
    if where == "score":
        cal["scores"]["position"][0] = value
    elif where == "normalizer":
        cal["normalizer"]["ll_sum_max"] = value
    elif where == "position means":
        cal["normalizer"]["ll_pos_mean"][0] = value
    else:
        art.history[0]["loss"] = value
    with pytest.raises(ArtifactError, match="refusing to write .*(non-finite|nan|inf)"):
        art.write()
    assert open(os.path.join(work, artifact.META), "rb").read() == before


def test_a_field_that_would_be_refused_on_read_is_not_written(run, tmp_path):
    work = _copy(run, tmp_path)
    art = Artifact.read(work)
    art.calibration["grass"]["normalizer"]["ll_max"] = [0.0]  # one level of three
    with pytest.raises(ArtifactError, match="ll_max has 1 entries, expected 3"):
        art.write()
    Artifact.read(work)  # untouched


# ----------------------------------------------------------------------------- old formats
def test_an_old_format_loads_with_a_warning_and_is_still_validated(run, tmp_path, caplog):
    old = _copy(run, tmp_path)
    meta = _meta(old)
    del meta[artifact.CONTENT_KEY]
    meta["format_version"] = 3
    _put(old, meta, sign=False)
    with caplog.at_level("WARNING", logger="hgad_edge.artifact"):
        art = Artifact.read(old)
    assert art.calibration == Artifact.read(run).calibration
    assert any("format 3 has no content checksum" in r.getMessage() for r in caplog.records)
    meta["model_config"]["class_names"] = ["grass", "grass"]
    _put(old, meta, sign=False)
    _one_line_error(old, "more than once")
