"""Operator mistakes on the command line that used to lose work or go silently wrong (issue 17):
an overwrite that deletes any folder, overlays that overwrite each other, two trainings into one
RUN_DIR, a resume that drops the exports, a loss that turns NaN, EXIF orientation read two ways."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess

import cv2
import numpy as np
import pytest

from hgad_edge import artifact, data
from hgad_edge.cli.commands import main as cli_main
from hgad_edge.train import loop
from hgad_edge.train.loop import CHECKPOINT

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["--image-size", "64", "--coupling-blocks", "1", "--n-intra", "2", "--batch-size", "4",
        "--replay-buffer", "0", "--quiet"]
DEMO_SMALL = ["--classes", "grass", "--n-train", "2", "--n-test", "1", "--image-size", "32"]


def _err_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def _tree(root: str) -> dict:
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = (os.stat(p).st_mtime_ns, hashlib.sha256(fh.read()).hexdigest())
    return out


def _strict_json(path: str):
    def refuse(name):
        raise AssertionError(f"{path} holds a bare {name}: not strict JSON")

    with open(path, encoding="utf-8") as f:
        return json.loads(f.read(), parse_constant=refuse)


@pytest.fixture(scope="module")
def cli_run(tiny_root, tmp_path_factory) -> str:
    """A 2-epoch model of tiny_root's grass trained by the CLI (so a CLI --resume can repeat its
    flags, and --from can add retina)."""
    out = str(tmp_path_factory.mktemp("cli_hostile") / "run")
    assert cli_main(["train", "--data", tiny_root, "--classes", "grass", "--out", out, "--epochs", "2", *TINY]) == 0
    return out


# ----------------------------------------------------------------------------- make-demo-data --overwrite
def test_overwrite_replaces_only_a_demo_dataset_it_made(tmp_path, capsys, cli_run):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.txt").write_text("years of work")
    model = tmp_path / "model"
    shutil.copytree(cli_run, model)
    mine = tmp_path / "demo"
    assert cli_main(["make-demo-data", str(mine), *DEMO_SMALL]) == 0
    with_run = tmp_path / "demo_with_run"
    shutil.copytree(mine, with_run)
    shutil.copytree(cli_run, with_run / "run")  # a model trained into the demo folder
    with_note = tmp_path / "demo_with_note"
    shutil.copytree(mine, with_note)
    (with_note / "grass" / "README.txt").write_text("my labels")
    forged = tmp_path / "forged"
    forged.mkdir()
    (forged / "demo_data.json").write_text(json.dumps({"generator": "someone else", "classes": []}))
    capsys.readouterr()
    for folder in (notes, model, with_run, with_note, forged):
        before = _tree(str(folder))
        assert cli_main(["make-demo-data", str(folder), *DEMO_SMALL, "--overwrite"]) == 2, folder
        line = _err_line(capsys)
        assert "refusing to overwrite" in line and str(folder) in line, line
        assert _tree(str(folder)) == before, f"{folder} was changed"
    # without --overwrite: one clear line, exit 2
    assert cli_main(["make-demo-data", str(notes), *DEMO_SMALL]) == 2
    assert "--overwrite" in _err_line(capsys)
    # its own folder is replaced (a different seed: different files)
    before = _tree(str(mine))
    assert cli_main(["make-demo-data", str(mine), *DEMO_SMALL, "--seed", "1", "--overwrite"]) == 0
    after = _tree(str(mine))
    assert set(after) == set(before) and after != before
    assert sorted(os.listdir(tmp_path)) == sorted(["notes", "model", "demo", "demo_with_run", "demo_with_note",
                                                   "forged"])  # no temporary left


# ----------------------------------------------------------------------------- predict overlay names
COLLIDING = [
    ["x.png", "x.jpg"],  # same stem, other extension
    ["a_b/z.png", "a/b_z.png"],  # joined with '_' they were one name
    ["one/cls/test/good/000.png", "two/cls/test/good/000.png"],  # deep paths sharing their last folders
    ["x.png", "x.jpg", "x_png.bmp"],  # the extension-kept name of one is the plain name of another
    ["q/x.png", "q/x.PNG", "q/x.jpg"],
]


@pytest.mark.parametrize("names", COLLIDING, ids=["ext", "underscore", "deep", "ext-vs-name", "case"])
def test_overlay_names_are_unique_and_readable(names, tmp_path):
    from hgad_edge.cli.commands import overlay_paths

    paths = [str(tmp_path / "in" / n) for n in names]
    out = overlay_paths(paths, str(tmp_path / "ov"))
    assert len({os.path.normcase(p) for p in out}) == len(names), out
    for p, o in zip(paths, out):
        assert o.startswith(str(tmp_path / "ov") + os.sep) and o.endswith("_overlay.png")
        stem = os.path.splitext(os.path.basename(p))[0]
        assert os.path.basename(o).startswith(stem), (p, o)  # readable: the input's own name
        assert "tmp" not in os.path.relpath(o, str(tmp_path / "ov"))  # relative to the inputs' shared folder
    assert overlay_paths(paths[:1] * 2, str(tmp_path / "ov"))[0] == overlay_paths(paths[:1], str(tmp_path / "ov"))[0]


def test_predict_gives_every_input_its_own_overlay(cli_run, tiny_root, tmp_path):
    samples = data.test_samples(tiny_root, ["grass", "retina"])
    imgs = [data.read_image(s.path) for s in samples[:5]]
    src = tmp_path / "in"
    names = ["x.png", "x.jpg", "a_b/z.png", "a/b_z.png", "one/cls/test/good/000.png"]
    paths = []
    for n, img in zip(names, imgs):
        p = src / n
        p.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(p), img)
        paths.append(str(p))
    out = tmp_path / "ov"
    assert cli_main(["predict", cli_run, *paths, "--out", str(out), "--backend", "torch"]) == 0
    rows = _strict_json(str(out / "predictions.json"))
    assert [r["image"] for r in rows] == paths
    overlays = [r["overlay"] for r in rows]
    assert len(set(overlays)) == len(paths), overlays
    pngs = [os.path.join(d, f) for d, _, fs in os.walk(out) for f in fs if f.endswith(".png")]
    assert sorted(pngs) == sorted(overlays)  # nothing overwritten, nothing extra
    assert os.path.relpath(overlays[4], out) == os.path.join("one", "cls", "test", "good", "000_overlay.png")


# ----------------------------------------------------------------------------- one training per RUN_DIR
@pytest.mark.parametrize("second", ["train", "train --from"])
def test_second_training_into_a_running_run_dir_is_refused(second, cli_run, tiny_root, tmp_path, monkeypatch,
                                                           capsys):
    out = str(tmp_path / "run")
    again = (["train", "--data", tiny_root, "--out", out, "--epochs", "1", *TINY] if second == "train" else
             ["train", "--from", cli_run, "--data", tiny_root, "--classes", "retina", "--out", out, "--quiet"])
    real = loop.train_epoch
    seen = {}

    def first_epoch_starts_a_second_training(*args, **kw):
        if not seen:  # while the first training holds RUN_DIR (once: the second may train too)
            seen["rc"] = None
            seen["rc"] = cli_main(again)
            seen["err"] = capsys.readouterr().err
        return real(*args, **kw)

    monkeypatch.setattr(loop, "train_epoch", first_epoch_starts_a_second_training)
    assert cli_main(["train", "--data", tiny_root, "--out", out, "--epochs", "1", *TINY]) == 0
    assert seen["rc"] == 2, seen
    lines = [ln for ln in seen["err"].splitlines() if ln.strip()]
    assert len(lines) == 1 and "in use by another training" in lines[0], lines
    art = artifact.Artifact.read(out)
    assert len(art.history) == 1 and art.lineage == []  # the first training's model, not replaced


def test_lock_is_held_across_processes(tiny_root, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        ["python", "-c", "import sys, time; from hgad_edge.train.loop import run_dir_lock\n"
         "with run_dir_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(120)", str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert cli_main(["train", "--data", tiny_root, "--out", str(out), "--epochs", "1", *TINY]) == 2
        assert "in use by another training" in _err_line(capsys)
        assert os.listdir(out) == []
    finally:
        holder.kill()
        holder.wait()
    with loop.run_dir_lock(str(out)):  # the kernel released it with the process
        pass


# ----------------------------------------------------------------------------- --resume of a finished run
def test_resume_of_a_finished_run_keeps_the_model_and_its_exports(cli_run, tiny_root, tmp_path, capsys):
    from hgad_edge.detector import Detector

    run = str(tmp_path / "run")
    shutil.copytree(cli_run, run)
    assert cli_main(["export", run, "--format", "onnx", "--quiet"]) == 0
    assert Detector(run, backend="auto").backend == "onnxruntime"
    before = _tree(run)
    flags = ["train", "--data", tiny_root, "--classes", "grass", "--out", run, "--epochs", "2", *TINY]
    assert cli_main([*flags, "--resume"]) == 0  # what a re-run of the same command does
    assert _tree(run) == before, "a finished model was rewritten"
    assert "onnxruntime" in artifact.Artifact.read(run).exports
    assert Detector(run, backend="auto").backend == "onnxruntime"
    capsys.readouterr()
    # other settings: refused, never trained over
    assert cli_main([*flags[:-len(TINY)], *TINY, "--epochs", "3", "--resume"]) == 2
    assert "other settings" in _err_line(capsys)
    assert cli_main(flags) == 2  # without --resume
    assert "already holds a trained model" in _err_line(capsys)
    assert _tree(run) == before


def test_demo_script_reruns_on_the_same_folder(tmp_path):
    """scripts/demo.sh twice on one WORKDIR, with stand-in `python`/`hgad-edge` that log their
    arguments: the second run keeps the dataset and asks train to --resume (a finished model is
    then kept as it is: test above), so it does not stop at 'already holds a trained model'."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    stub = ("#!/usr/bin/env bash\necho \"$(basename \"$0\") $*\" >> " + str(log) + "\n"
            "if [[ \"$1\" == make-demo-data ]]; then mkdir -p \"$2\" && echo '{}' > \"$2/demo_data.json\"; fi\n")
    for name in ("python", "hgad-edge"):
        (bin_dir / name).write_text(stub)
        (bin_dir / name).chmod(0o755)
    work = tmp_path / "work"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    runs = []
    for _ in range(2):
        log.write_text("")
        p = subprocess.run(["bash", os.path.join(REPO, "scripts", "demo.sh"), str(work)], env=env,
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        runs.append(log.read_text().splitlines())
    first, second = runs
    assert any(c.startswith("hgad-edge make-demo-data") for c in first)
    assert not any(c.startswith("hgad-edge make-demo-data") for c in second)  # the dataset is kept
    for calls in runs:
        train = [c for c in calls if c.startswith("hgad-edge train")]
        assert len(train) == 1 and "--resume" in train[0].split()


# ----------------------------------------------------------------------------- a loss that turns NaN
def test_non_finite_loss_stops_training_and_keeps_the_last_checkpoint(tiny_root, tmp_path, monkeypatch, capsys):
    real_epoch, real_loss = loop.train_epoch, loop.total_loss

    def nan_from_epoch_2(*args, **kw):
        epoch = args[6]
        monkeypatch.setattr(loop, "total_loss", (lambda *a, **k: real_loss(*a, **k) * float("nan")) if epoch >= 1
                            else real_loss)
        return real_epoch(*args, **kw)

    monkeypatch.setattr(loop, "train_epoch", nan_from_epoch_2)
    out = str(tmp_path / "run")
    assert cli_main(["train", "--data", tiny_root, "--out", out, "--epochs", "4", *TINY]) == 2
    line = _err_line(capsys)
    assert "non-finite" in line and "epoch 2" in line and "checkpoint of epoch 1 is kept" in line, line
    assert sorted(os.listdir(out)) == [CHECKPOINT]  # no model.json: no model that never fires
    assert loop.checkpoint_metadata(os.path.join(out, CHECKPOINT))["epoch"] == "1"


# ----------------------------------------------------------------------------- EXIF orientation
def _exif_jpeg(path: str, bgr: np.ndarray, orientation: int = 6) -> None:
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1]))
    exif = im.getexif()
    exif[0x0112] = orientation  # 6: the camera was turned, view rotated 90° clockwise
    im.save(path, exif=exif.tobytes(), quality=95)


def test_exif_orientation_is_read_the_same_on_every_path(cli_run, tiny_root, tmp_path):
    from hgad_edge.detector import Detector
    from hgad_edge.stream.capture import FolderCapture

    base = data.read_image(data.train_samples(tiny_root, ["grass"])[0].path)
    wide = cv2.resize(base, (96, 64))  # not square, so a rotation shows in the shape
    folder = tmp_path / "photos"
    folder.mkdir()
    path = str(folder / "phone.jpg")
    _exif_jpeg(path, wide)
    sdk = cv2.imread(path)  # what an SDK user passes to Detector
    assert sdk.shape[:2] == (96, 64)  # OpenCV applies the orientation tag
    # training, calibration, evaluation, export calibration: data.read_image / loop.load_images
    np.testing.assert_array_equal(data.read_image(path), sdk)
    sample = data.Sample(path=path, class_name="grass", class_index=0, defect="good", mask_path=None,
                         is_anomaly=False)
    np.testing.assert_array_equal(loop.load_images([sample], False, "x")[0], sdk)
    # the stream's folder source
    ok, frame = FolderCapture(str(folder)).read()
    assert ok
    np.testing.assert_array_equal(frame, sdk)
    # predict: the overlay has the upright photo's shape and the score the SDK gets
    out = tmp_path / "ov"
    assert cli_main(["predict", cli_run, path, "--out", str(out), "--backend", "torch", "--class", "grass"]) == 0
    row = _strict_json(str(out / "predictions.json"))[0]
    assert cv2.imread(row["overlay"]).shape[:2] == (96, 64)
    with Detector(cli_run, backend="torch") as det:
        assert row["raw_score"] == pytest.approx(det(sdk, class_name="grass").raw_score, rel=1e-6)
