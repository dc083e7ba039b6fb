"""Every CLI verb over a table of bad values: exit code 2, one stderr line naming the problem, no
traceback, and nothing outside the output touched (inputs byte-identical, mtimes unchanged).

Rows run in-process (``hgad_edge.cli.commands.main`` / ``hgad_edge.train.__main__.main``; an
exception escaping them is what the console script would print as a traceback); a few run the
real console scripts in a subprocess, where log lines on stderr count too.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from hgad_edge import data

# (id, argv with {run} {data} {sb} {img} {frames} {video} placeholders, words: one must appear in
# the stderr line, compared with '_' read as '-', case-insensitive)
ROWS = [
    # ------------------------------------------------------------------ make-demo-data
    ("demo-existing", ["make-demo-data", "{sb}/existing"], ["exists"]),
    ("demo-overwrite-foreign", ["make-demo-data", "{sb}/existing", "--overwrite"], ["demo"]),
    ("demo-overwrite-model", ["make-demo-data", "{run}", "--overwrite"], ["demo"]),
    ("demo-onto-file", ["make-demo-data", "{sb}/notes.txt"], ["notes.txt"]),
    ("demo-under-file", ["make-demo-data", "{sb}/notes.txt/d"], ["notes.txt"]),
    ("demo-n-train-0", ["make-demo-data", "{sb}/out", "--n-train", "0"], ["n-train"]),
    ("demo-n-train-neg", ["make-demo-data", "{sb}/out", "--n-train", "-5"], ["n-train"]),
    ("demo-n-test-neg", ["make-demo-data", "{sb}/out", "--n-test", "-1"], ["n-test"]),
    ("demo-size-0", ["make-demo-data", "{sb}/out", "--image-size", "0"], ["image-size"]),
    ("demo-size-huge", ["make-demo-data", "{sb}/out", "--image-size", "1000000"], ["image-size"]),
    ("demo-class-unknown", ["make-demo-data", "{sb}/out", "--classes", "unicorn"], ["unicorn"]),
    ("demo-class-empty", ["make-demo-data", "{sb}/out", "--classes", ""], ["classes"]),
    ("demo-n-train-text", ["make-demo-data", "{sb}/out", "--n-train", "many"], ["n-train"]),
    ("demo-out-empty", ["make-demo-data", ""], ["folder", "out"]),
    # ------------------------------------------------------------------ train
    ("train-lr-nan", ["train", "--data", "{data}", "--out", "{sb}/out", "--lr", "nan"], ["lr"]),
    ("train-lr-inf", ["train", "--data", "{data}", "--out", "{sb}/out", "--lr", "inf"], ["lr"]),
    ("train-lr-neg", ["train", "--data", "{data}", "--out", "{sb}/out", "--lr", "-1e-3"], ["lr"]),
    ("train-lr-0", ["train", "--data", "{data}", "--out", "{sb}/out", "--lr", "0"], ["lr"]),
    ("train-lambda-nan", ["train", "--data", "{data}", "--out", "{sb}/out", "--lambda-mi", "nan"], ["lambda"]),
    ("train-lambda-neg", ["train", "--data", "{data}", "--out", "{sb}/out", "--lambda-mi", "-1"], ["lambda"]),
    ("train-epochs-0", ["train", "--data", "{data}", "--out", "{sb}/out", "--epochs", "0"], ["epochs"]),
    ("train-epochs-neg", ["train", "--data", "{data}", "--out", "{sb}/out", "--epochs", "-2"], ["epochs"]),
    ("train-batch-0", ["train", "--data", "{data}", "--out", "{sb}/out", "--batch-size", "0"], ["batch-size"]),
    ("train-n-intra-0", ["train", "--data", "{data}", "--out", "{sb}/out", "--n-intra", "0"], ["n-intra"]),
    ("train-blocks-0", ["train", "--data", "{data}", "--out", "{sb}/out", "--coupling-blocks", "0"],
     ["coupling-blocks"]),
    ("train-levels-scale-0", ["train", "--data", "{data}", "--out", "{sb}/out", "--levels", "2@0"], ["levels"]),
    ("train-levels-scale-nan", ["train", "--data", "{data}", "--out", "{sb}/out", "--levels", "2@nan"], ["levels"]),
    ("train-levels-scale-big", ["train", "--data", "{data}", "--out", "{sb}/out", "--levels", "2@4"], ["levels"]),
    ("train-levels-stage-neg", ["train", "--data", "{data}", "--out", "{sb}/out", "--levels", "-1@1"], ["levels"]),
    ("train-levels-stage-9", ["train", "--data", "{data}", "--out", "{sb}/out", "--levels", "9@1"], ["stage"]),
    ("train-levels-empty", ["train", "--data", "{data}", "--out", "{sb}/out", "--levels", ""], ["levels"]),
    ("train-size-0", ["train", "--data", "{data}", "--out", "{sb}/out", "--image-size", "0"], ["image-size"]),
    ("train-size-neg", ["train", "--data", "{data}", "--out", "{sb}/out", "--image-size", "-64"], ["image-size"]),
    ("train-size-huge", ["train", "--data", "{data}", "--out", "{sb}/out", "--image-size", "100000"],
     ["image-size"]),
    ("train-pad-neg", ["train", "--data", "{data}", "--out", "{sb}/out", "--pad", "-8"], ["pad"]),
    ("train-pool-even", ["train", "--data", "{data}", "--out", "{sb}/out", "--pool", "2"], ["pool"]),
    ("train-calib-big", ["train", "--data", "{data}", "--out", "{sb}/out", "--calib-fraction", "1.5"], ["calib"]),
    ("train-calib-nan", ["train", "--data", "{data}", "--out", "{sb}/out", "--calib-fraction", "nan"], ["calib"]),
    ("train-fpr-0", ["train", "--data", "{data}", "--out", "{sb}/out", "--target-fpr", "0"], ["target-fpr"]),
    ("train-fpr-nan", ["train", "--data", "{data}", "--out", "{sb}/out", "--target-fpr", "nan"], ["target-fpr"]),
    ("train-replay-neg", ["train", "--data", "{data}", "--out", "{sb}/out", "--replay-buffer", "-1"], ["replay"]),
    ("train-seed-neg", ["train", "--data", "{data}", "--out", "{sb}/out", "--seed", "-1"], ["seed"]),
    ("train-out-file", ["train", "--data", "{data}", "--out", "{sb}/notes.txt"], ["notes.txt"]),
    ("train-out-under-file", ["train", "--data", "{data}", "--out", "{sb}/notes.txt/run"], ["notes.txt"]),
    ("train-out-empty", ["train", "--data", "{data}", "--out", ""], ["out"]),
    ("train-out-is-data", ["train", "--data", "{data}", "--out", "{data}"], ["data"]),
    ("train-out-model", ["train", "--data", "{data}", "--out", "{run}"], ["trained model"]),
    ("train-weights-text", ["train", "--data", "{data}", "--out", "{sb}/out", "--weights", "{sb}/notes.txt"],
     ["notes.txt"]),
    ("train-weights-garbage", ["train", "--data", "{data}", "--out", "{sb}/out", "--weights",
                               "{sb}/garbage.safetensors"], ["garbage"]),
    ("train-weights-dir", ["train", "--data", "{data}", "--out", "{sb}/out", "--weights", "{sb}/adir"], ["adir"]),
    ("train-weights-missing", ["train", "--data", "{data}", "--out", "{sb}/out", "--weights", "{sb}/nope.pt"],
     ["nope.pt"]),
    ("train-data-missing", ["train", "--data", "{sb}/nope", "--out", "{sb}/out"], ["nope"]),
    ("train-data-file", ["train", "--data", "{sb}/notes.txt", "--out", "{sb}/out"], ["notes.txt"]),
    ("train-data-empty", ["train", "--data", "", "--out", "{sb}/out"], ["data"]),
    ("train-class-unknown", ["train", "--data", "{data}", "--out", "{sb}/out", "--classes", "unicorn"],
     ["unicorn"]),
    ("train-class-empty", ["train", "--data", "{data}", "--out", "{sb}/out", "--classes", ""], ["classes"]),
    ("train-backbone-unknown", ["train", "--data", "{data}", "--out", "{sb}/out", "--backbone", "nosuchnet"],
     ["nosuchnet"]),
    ("train-epochs-text", ["train", "--data", "{data}", "--out", "{sb}/out", "--epochs", "ten"], ["epochs"]),
    ("train-from-not-model", ["train", "--data", "{data}", "--out", "{sb}/out", "--from", "{sb}/adir",
                              "--classes", "brick"], ["adir"]),
    ("train-from-unknown-class", ["train", "--data", "{data}", "--out", "{sb}/out", "--from", "{run}",
                                  "--classes", "unicorn"], ["unicorn"]),
    ("train-from-lr-nan", ["train", "--data", "{data}", "--out", "{sb}/out", "--from", "{run}",
                           "--classes", "brick", "--lr", "nan"], ["lr"]),
    ("train-from-epochs-0", ["train", "--data", "{data}", "--out", "{sb}/out", "--from", "{run}",
                             "--classes", "brick", "--epochs", "0"], ["epochs"]),
    ("train-from-out-file", ["train", "--data", "{data}", "--out", "{sb}/notes.txt", "--from", "{run}",
                             "--classes", "brick"], ["notes.txt"]),
    # ------------------------------------------------------------------ python -m hgad_edge.train
    ("m-train-lr-nan", ["-m", "--data", "{data}", "--out", "{sb}/out", "--lr", "nan"], ["lr"]),
    ("m-train-epochs-0", ["-m", "--data", "{data}", "--out", "{sb}/out", "--epochs", "0"], ["epochs"]),
    ("m-train-backend-none", ["-m", "--data", "{data}", "--out", "{sb}/out", "--dist-backend"], ["dist-backend"]),
    ("m-train-backend-bad", ["-m", "--data", "{data}", "--out", "{sb}/out", "--dist-backend", "mpi"], ["mpi"]),
    ("m-train-batch-0", ["-m", "--data", "{data}", "--out", "{sb}/out", "--batch-size", "0"], ["batch-size"]),
    # ------------------------------------------------------------------ predict
    ("predict-out-file", ["predict", "{run}", "{img}", "--out", "{sb}/notes.txt"], ["notes.txt"]),
    ("predict-out-under-file", ["predict", "{run}", "{img}", "--out", "{sb}/notes.txt/o"], ["notes.txt"]),
    ("predict-image-missing", ["predict", "{run}", "{sb}/nope.png", "--out", "{sb}/out"], ["nope.png"]),
    ("predict-image-text", ["predict", "{run}", "{sb}/notes.txt", "--out", "{sb}/out"], ["notes.txt"]),
    ("predict-image-dir", ["predict", "{run}", "{sb}/adir", "--out", "{sb}/out"], ["adir"]),
    ("predict-image-empty", ["predict", "{run}", "", "--out", "{sb}/out"], ["image"]),
    ("predict-run-not-model", ["predict", "{sb}/adir", "{img}", "--out", "{sb}/out"], ["adir"]),
    ("predict-run-missing", ["predict", "{sb}/nope", "{img}", "--out", "{sb}/out"], ["nope"]),
    ("predict-class-unknown", ["predict", "{run}", "{img}", "--out", "{sb}/out", "--class", "unicorn"],
     ["unicorn"]),
    ("predict-fpr-0", ["predict", "{run}", "{img}", "--out", "{sb}/out", "--target-fpr", "0"], ["target-fpr"]),
    ("predict-fpr-nan", ["predict", "{run}", "{img}", "--out", "{sb}/out", "--target-fpr", "nan"],
     ["target-fpr"]),
    ("predict-fpr-big", ["predict", "{run}", "{img}", "--out", "{sb}/out", "--target-fpr", "7"], ["target-fpr"]),
    ("predict-out-is-run", ["predict", "{run}", "{img}", "--out", "{run}"], ["model"]),
    ("predict-overlay-is-input", ["predict", "{run}", "{sb}/frames/000.png", "{sb}/frames/000_overlay.png",
                                  "--out", "{sb}/frames"], ["000-overlay.png"]),
    ("predict-device-bad", ["predict", "{run}", "{img}", "--out", "{sb}/out", "--device", "toaster"], ["toaster"]),
    # ------------------------------------------------------------------ eval
    ("eval-json-dir", ["eval", "{run}", "--data", "{data}", "--json", "{sb}/adir", "--quiet"], ["adir"]),
    ("eval-json-under-file", ["eval", "{run}", "--data", "{data}", "--json", "{sb}/notes.txt/m.json", "--quiet"],
     ["notes.txt"]),
    ("eval-json-model", ["eval", "{run}", "--data", "{data}", "--json", "{run}/model.json", "--quiet"],
     ["model.json"]),
    ("eval-json-image", ["eval", "{run}", "--data", "{data}", "--json", "{img}", "--quiet"], ["img.png"]),
    ("eval-json-empty", ["eval", "{run}", "--data", "{data}", "--json", "", "--quiet"], ["json"]),
    ("eval-data-missing", ["eval", "{run}", "--data", "{sb}/nope", "--quiet"], ["nope"]),
    ("eval-data-file", ["eval", "{run}", "--data", "{sb}/notes.txt", "--quiet"], ["notes.txt"]),
    ("eval-class-unknown", ["eval", "{run}", "--data", "{data}", "--classes", "unicorn", "--quiet"], ["unicorn"]),
    ("eval-class-empty", ["eval", "{run}", "--data", "{data}", "--classes", "", "--quiet"], ["classes"]),
    ("eval-run-not-model", ["eval", "{sb}/adir", "--data", "{data}", "--quiet"], ["adir"]),
    ("eval-device-bad", ["eval", "{run}", "--data", "{data}", "--device", "toaster", "--quiet"], ["toaster"]),
    # ------------------------------------------------------------------ export
    ("export-opset-99", ["export", "{run}", "--opset", "99"], ["opset"]),
    ("export-opset-5", ["export", "{run}", "--opset", "5"], ["opset"]),
    ("export-opset-triton", ["export", "{run}", "--format", "triton", "--out", "{sb}/out", "--opset", "99"],
     ["opset"]),
    ("export-run-not-model", ["export", "{sb}/adir"], ["adir"]),
    ("export-run-missing", ["export", "{sb}/nope"], ["nope"]),
    ("export-max-batch-0", ["export", "{run}", "--max-batch", "0"], ["max-batch"]),
    ("export-calib-images-0", ["export", "{run}", "--calib-images", "0"], ["calib-images"]),
    ("export-workspace-0", ["export", "{run}", "--workspace-mb", "0"], ["workspace"]),
    ("export-threads-0", ["export", "{run}", "--threads", "0"], ["threads"]),
    ("export-max-drop-nan", ["export", "{run}", "--max-drop", "nan"], ["max-drop"]),
    ("export-max-drop-neg", ["export", "{run}", "--max-drop", "-0.1"], ["max-drop"]),
    ("export-calib-data-missing", ["export", "{run}", "--calib-data", "{sb}/nope"], ["nope"]),
    ("export-calib-data-file", ["export", "{run}", "--calib-data", "{sb}/notes.txt"], ["notes.txt"]),
    ("export-triton-no-out", ["export", "{run}", "--format", "triton"], ["out"]),
    ("export-triton-out-file", ["export", "{run}", "--format", "triton", "--out", "{sb}/notes.txt"], ["notes.txt"]),
    ("export-triton-instances-0", ["export", "{run}", "--format", "triton", "--out", "{sb}/out",
                                   "--instance-count", "0"], ["instance-count"]),
    # ------------------------------------------------------------------ bench
    ("bench-frames-0", ["bench", "{run}", "--data", "{data}", "--frames", "0", "--no-rss"], ["frames"]),
    ("bench-frames-neg", ["bench", "{run}", "--data", "{data}", "--frames", "-3", "--no-rss"], ["frames"]),
    ("bench-warmup-neg", ["bench", "{run}", "--data", "{data}", "--warmup", "-1", "--no-rss"], ["warmup"]),
    ("bench-threads-0", ["bench", "{run}", "--data", "{data}", "--threads", "0", "--no-rss"], ["threads"]),
    ("bench-json-dir", ["bench", "{run}", "--data", "{data}", "--json", "{sb}/adir", "--no-rss"], ["adir"]),
    ("bench-json-model", ["bench", "{run}", "--data", "{data}", "--json", "{run}/model.json", "--no-rss"],
     ["model.json"]),
    ("bench-data-missing", ["bench", "{run}", "--data", "{sb}/nope", "--no-rss"], ["nope"]),
    ("bench-run-not-model", ["bench", "{sb}/adir", "--data", "{data}", "--no-rss"], ["adir"]),
    ("bench-device-bad", ["bench", "{run}", "--data", "{data}", "--device", "toaster", "--no-rss"], ["toaster"]),
    # ------------------------------------------------------------------ stream (H3's verb)
    ("stream-threads-0", ["stream", "--model", "{run}", "--source", "{frames}", "--headless", "--max-frames", "1",
                          "--threads", "0"], ["threads"]),
    ("stream-fps-inf-save", ["stream", "--model", "{run}", "--source", "{frames}", "--headless", "--max-frames", "1",
                             "--fps", "inf", "--save", "{sb}/out/x.mp4"], ["fps"]),
    ("stream-camera-neg", ["stream", "--model", "{run}", "--camera", "-1", "--headless"], ["camera"]),
    ("stream-save-is-source", ["stream", "--model", "{run}", "--source", "{video}", "--headless", "--max-frames", "1",
                               "--save", "{video}"], ["save"]),
    ("stream-source-text", ["stream", "--model", "{run}", "--source", "{sb}/notes.txt", "--headless",
                            "--max-frames", "1"], ["notes.txt"]),
    ("stream-model-not-model", ["stream", "--model", "{sb}/adir", "--source", "{frames}", "--headless",
                                "--max-frames", "1"], ["adir"]),
]

# Real console scripts in a subprocess (stderr includes log lines here).
SUBPROCESS_ROWS = [
    ("sub-train-lr-nan", ["hgad-edge", "train", "--data", "{data}", "--out", "{sb}/out", "--lr", "nan"], ["lr"]),
    ("sub-m-train-epochs-0", [sys.executable, "-m", "hgad_edge.train", "--data", "{data}", "--out", "{sb}/out",
                              "--epochs", "0"], ["epochs"]),
    ("sub-eval-json-dir", ["hgad-edge", "eval", "{run}", "--data", "{data}", "--json", "{sb}/adir", "--quiet"],
     ["adir"]),
]


@pytest.fixture(scope="module")
def corpus(trained_run, demo_root, tmp_path_factory):
    sb = tmp_path_factory.mktemp("hostile_sandbox")
    (sb / "notes.txt").write_text("my notes, not an image\n")
    (sb / "adir").mkdir()
    (sb / "adir" / "keep.txt").write_text("keep me\n")
    (sb / "existing").mkdir()
    (sb / "existing" / "thesis.txt").write_text("three years of work\n")
    (sb / "garbage.safetensors").write_bytes(b"\x00garbage" * 64)
    img = data.test_samples(demo_root, ["brick"])[0].path
    shutil.copy(img, sb / "img.png")
    (sb / "frames").mkdir()
    for i in range(2):
        shutil.copy(img, sb / "frames" / f"{i:03d}.png")
    shutil.copy(img, sb / "frames" / "000_overlay.png")
    video = str(sb / "clip.mp4")
    w = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 64))
    for i in range(3):
        w.write(np.full((64, 64, 3), 40 * i, np.uint8))
    w.release()
    subs = {"run": trained_run, "data": demo_root, "sb": str(sb), "img": str(sb / "img.png"),
            "frames": str(sb / "frames"), "video": video}
    return subs, [str(sb), trained_run, demo_root]


def _snapshot(roots):
    out = {}
    for root in roots:
        for d, dirs, files in os.walk(root):
            st = os.stat(d)
            out[d] = ("dir", st.st_mtime_ns)
            for f in files:
                p = os.path.join(d, f)
                st = os.stat(p)
                with open(p, "rb") as fh:
                    out[p] = (st.st_size, st.st_mtime_ns, hashlib.sha256(fh.read()).hexdigest())
    return out


def _fill(argv, subs):
    return [a.format(**subs) for a in argv]


def _check(rc, err, words, before, after, row_id):
    problems = []
    if rc != 2:
        problems.append(f"exit code {rc}, expected 2")
    if "Traceback" in err:
        problems.append("a traceback on stderr")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if len(lines) != 1:
        problems.append(f"{len(lines)} stderr lines, expected 1: {lines[:6]}")
    text = err.lower().replace("_", "-")
    if not any(w.lower().replace("_", "-") in text for w in words):
        problems.append(f"stderr does not name the problem (one of {words}): {err.strip()[:300]!r}")
    changed = sorted(set(before) ^ set(after) | {k for k in before if k in after and before[k] != after[k]})
    if changed:
        problems.append(f"files touched: {changed[:5]}")
    assert not problems, f"{row_id}: " + "; ".join(problems)


def _run_in_process(argv, capsys):
    from hgad_edge.cli.commands import main as cli_main
    from hgad_edge.train.__main__ import main as train_main

    capsys.readouterr()
    try:
        rc = train_main(argv[1:]) if argv[0] == "-m" else cli_main(argv)
    except SystemExit as e:  # argparse
        rc = e.code
    except BaseException as e:  # what the console script would print as a traceback
        import traceback

        rc, tb = "exception", "Traceback (in process)\n" + "".join(traceback.format_exception(e))
        return rc, capsys.readouterr().err + tb
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("row_id,argv,words", ROWS, ids=[r[0] for r in ROWS])
def test_bad_value_is_one_clear_line(corpus, capsys, row_id, argv, words):
    subs, roots = corpus
    before = _snapshot(roots)
    rc, err = _run_in_process(_fill(argv, subs), capsys)
    _check(rc, err, words, before, _snapshot(roots), row_id)


@pytest.mark.slow
@pytest.mark.parametrize("row_id,argv,words", SUBPROCESS_ROWS, ids=[r[0] for r in SUBPROCESS_ROWS])
def test_bad_value_console_script(corpus, row_id, argv, words):
    subs, roots = corpus
    before = _snapshot(roots)
    exe = shutil.which(argv[0]) or argv[0]
    p = subprocess.run([exe, *_fill(argv[1:], subs)], capture_output=True, text=True, timeout=300)
    _check(p.returncode, p.stderr, words, before, _snapshot(roots), row_id)
