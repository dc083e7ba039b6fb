"""Adding classes to a trained model vs training all of them from scratch (README "Adding a product class").

Runs, one after the other under the same conditions, each as the command a user types (a fresh
``hgad-edge train`` process, timed from start to exit):

1. ``train --classes OLD`` from scratch (the parent),
2. ``train --from parent --classes NEW`` once per ``--variants`` replay (images, buffer, none),
3. ``train --classes OLD,NEW`` from scratch (the reference, and the time the ratio is taken of),

then ``hgad-edge eval`` of every model and prints per class image / pixel AUROC (class routed),
routing, the old classes' change vs the parent, the new classes' gap to the from-scratch
model, the time ratio and the load average around each training. A measurement, not a test:
it asserts nothing.

    python benchmarks/add_classes.py --data demo_work/data --work /tmp/add_bench \\
        --old brick,coffee,grass,gravel --new retina,tissue
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def _load() -> str:
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(cmd: List[str], log_path: str) -> tuple:
    """Run ``cmd`` (output to ``log_path``); (wall seconds, CPU seconds of the process). Raises on
    failure. The CPU seconds are the comparison that survives a shared box: wall time stretches
    with whatever else runs, the work a training does does not (much)."""
    t0, c0 = time.perf_counter(), _child_cpu()
    with open(log_path, "w") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    dt, cpu = time.perf_counter() - t0, _child_cpu() - c0
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (rc {rc}); see {log_path}")
    return dt, cpu


def evaluate(run_dir: str, data: str, out_json: str) -> Dict[str, dict]:
    if not os.path.exists(out_json):
        run(["hgad-edge", "eval", run_dir, "--data", data, "--json", out_json, "--quiet", "--backend", "torch"], out_json + ".log")
    with open(out_json) as f:
        return json.load(f)["classes"]


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="MVTec-layout dataset (hgad-edge make-demo-data)")
    ap.add_argument("--work", required=True, help="folder for the models, logs and metrics (reused: a finished "
                                                  "step is not rerun, so delete it to measure again)")
    ap.add_argument("--old", required=True, help="classes of the parent model, a,b,c")
    ap.add_argument("--new", required=True, help="classes to add, d,e")
    ap.add_argument("--variants", default="images,buffer,none", help="replays to add the classes with")
    ap.add_argument("--skip-scratch", action="store_true", help="no from-scratch model of every class")
    ap.add_argument("--scratch-run", help="an already trained from-scratch model of every class (same data and "
                    "train flags, e.g. scripts/demo.sh's RUN) to compare accuracy with instead of training one; "
                    "its training time is then estimated as the parent's × (images of all classes / images "
                    "of the old classes) — training cost is linear in the images — and marked 'est.'")
    ap.add_argument("--train-args", default="", help="extra flags for every from-scratch train, e.g. '--epochs 10'")
    ap.add_argument("--add-args", default="", help="extra flags for every train --from, e.g. '--epochs 4'")
    a = ap.parse_args(argv)
    os.makedirs(a.work, exist_ok=True)
    old, new = a.old.split(","), a.new.split(",")
    w = lambda *p: os.path.join(a.work, *p)  # noqa: E731
    times: Dict[str, dict] = {}
    tfile = w("times.json")
    if os.path.exists(tfile):
        with open(tfile) as f:
            times = json.load(f)

    def train(name: str, args: List[str]) -> None:
        if name in times and os.path.exists(w(name, "model.json")):
            return
        before = _load()
        dt, cpu = run(["hgad-edge", "train", "--data", a.data, "--out", w(name), "--quiet", *args], w(name + ".log"))
        times[name] = {"wall_s": round(dt, 1), "cpu_s": round(cpu, 1), "load_before": before, "load_after": _load()}
        with open(tfile, "w") as f:
            json.dump(times, f, indent=1)
        print(f"{name}: {dt:.1f} s wall, {cpu:.1f} s CPU (load {before} → {times[name]['load_after']})", flush=True)

    train("parent", ["--classes", a.old, *a.train_args.split()])
    variants = [v for v in a.variants.split(",") if v]
    for v in variants:
        train(f"add_{v}", ["--from", w("parent"), "--classes", a.new, "--replay", v, *a.add_args.split()])
    if a.scratch_run:
        with open(os.path.join(a.scratch_run, "model.json")) as f:
            n_all = json.load(f)["data"]["n_train"]
        with open(w("parent", "model.json")) as f:
            n_old = json.load(f)["data"]["n_train"]
        p = times["parent"]
        times["scratch"] = {"wall_s": p["wall_s"] * n_all / n_old, "cpu_s": p["cpu_s"] * n_all / n_old,
                            "load_before": p["load_before"], "load_after": p["load_after"], "estimated": True}
        print(f"scratch: {a.scratch_run}, time estimated from the parent's × {n_all}/{n_old} training images")
    elif not a.skip_scratch:
        train("scratch", ["--classes", ",".join(old + new), *a.train_args.split()])

    ev = {"parent": evaluate(w("parent"), a.data, w("parent.json"))}
    for v in variants:
        ev[f"add_{v}"] = evaluate(w(f"add_{v}"), a.data, w(f"add_{v}.json"))
    if a.scratch_run or not a.skip_scratch:
        ev["scratch"] = evaluate(a.scratch_run or w("scratch"), a.data, w("scratch.json"))

    cols = ["parent"] + [f"add_{v}" for v in variants] + (["scratch"] if "scratch" in ev else [])

    def cell(model: str, c: str) -> str:
        r = ev[model].get(c)
        if r is None:
            return "—"
        return f"{r['auto']['image_auroc']:.3f} / {r['auto']['pixel_auroc']:.3f} / {r['routing_accuracy']:.2f}"

    print(f"\nper class image AUROC / pixel AUROC / routing (class routed, `hgad-edge eval`); load {_load()}\n")
    print("| class | " + " | ".join(cols) + " |\n|---|" + "---:|" * len(cols))
    for c in old + new:
        print(f"| {c}{' (new)' if c in new else ''} | " + " | ".join(cell(m, c) for m in cols) + " |")

    def mean(model: str, classes: List[str], key: str) -> float:
        rows = [ev[model][c] for c in classes]
        vals = [r["routing_accuracy"] if key == "routing" else r["auto"][key] for r in rows]
        return sum(vals) / len(vals)

    print("\n| model | train wall s (load before → after) | CPU s | × scratch (CPU) | × scratch (wall) | old: Δ image / Δ pixel vs parent "
          "(worst class) | new: Δ image / Δ pixel vs scratch (worst class) | routing, all classes |")
    print("|---|---:|---:|---:|---:|---|---|---:|")
    scratch = times.get("scratch", {})
    for m in cols:
        t = times[m]
        ratio = f"{t['wall_s'] / scratch['wall_s']:.2f}" if scratch else "—"
        cratio = f"{t['cpu_s'] / scratch['cpu_s']:.2f}" if scratch else "—"
        d_old = d_new = "—"
        if m.startswith("add_"):
            di = [ev[m][c]["auto"]["image_auroc"] - ev["parent"][c]["auto"]["image_auroc"] for c in old]
            dp = [ev[m][c]["auto"]["pixel_auroc"] - ev["parent"][c]["auto"]["pixel_auroc"] for c in old]
            d_old = f"{sum(di) / len(di):+.3f} ({min(di):+.3f}) / {sum(dp) / len(dp):+.3f} ({min(dp):+.3f})"
            if "scratch" in ev:
                ni = [ev[m][c]["auto"]["image_auroc"] - ev["scratch"][c]["auto"]["image_auroc"] for c in new]
                np_ = [ev[m][c]["auto"]["pixel_auroc"] - ev["scratch"][c]["auto"]["pixel_auroc"] for c in new]
                d_new = f"{sum(ni) / len(ni):+.3f} ({min(ni):+.3f}) / {sum(np_) / len(np_):+.3f} ({min(np_):+.3f})"
        classes = old if m == "parent" else old + new
        est = " est." if t.get("estimated") else ""
        print(f"| {m} | {t['wall_s']:.1f}{est} ({t['load_before']} → {t['load_after']}) | {t['cpu_s']:.1f}{est} | {cratio} | {ratio} | {d_old} | {d_new} "
              f"| {mean(m, classes, 'routing'):.3f} |")
    for v in variants:
        with open(w(f"add_{v}", "model.json")) as f:
            step = json.load(f)["lineage"][-1]
        drift = ", ".join(f"{c} {d:.2f}" if d is not None else f"{c} —" for c, d in step["calibration"]["drift"].items())
        print(f"\nadd_{v}: replay {step['replay']}, recalibrated {step['calibration']['recalibrated'] or 'none'}; "
              f"score drift of the old classes' held-out images (spreads): {drift}")
    size = os.path.getsize(w("parent", "replay.safetensors")) / 1e6 if os.path.exists(w("parent", "replay.safetensors")) else 0
    print(f"\nparent replay buffer: {size:.2f} MB; weights {os.path.getsize(w('parent', 'weights.safetensors')) / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
