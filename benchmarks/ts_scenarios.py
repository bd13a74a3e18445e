"""The teacher-student paper's experiment (Fredriksen et al., Sec. 2.5, Tables 2-5) on the phantom.

Two scenarios, each its own phantom cohort whose train cases are partly box-only (the phantom's
``box_only_share``; every case has a box file):

- *vast*: strong : box = 2 : 3 (the paper: ~500 strong + ~750 box);
- *scarce*: strong : box = 1 : 20 (the paper: ~50 strong + ~1000 box).

Per scenario: ``box-teacher`` and ``point-teacher`` on the strong cases (Tables 2 / 4: DSC on the test
cases, the box teacher guided by boxes derived from the expert masks and its masks kept inside them,
the point teacher by the box centres alone); ``cmedl pseudo-label`` with the box teacher (also scored
against the phantom's hidden masks of the box-only cases); ``ts-baseline`` (strong only), ``ts-student``
(SO) and ``ts-student-do`` (DO) on strong + pseudo; each student segments the test cases whole
(``cmedl segment``, hole filling) and is scored with DSC, DSC-TP, F1, recall and precision
(:mod:`cmedl.evaluation.objects`, >= 25 % overlap) as mean +- SD over cases (Tables 3 / 5), as segmented
and with the clean-up each student chose on the validation split (small components, lung filter, largest
component: :mod:`cmedl.evaluation.postprocess_choice`), overall and per tumour kind.

    python benchmarks/ts_scenarios.py --out /tmp/ts                        # CPU-sized (cpu-ts presets)
    python benchmarks/ts_scenarios.py --out /tmp/ts --vast 200,300 --scarce 20,400 --test 60 \\
        --teacher-config paper-ts-teacher --student-config paper-ts --shape 96,256,256 --steps-per-epoch 1000 --epochs 8 --device cuda

Every method uses the paper's preprocessing (``<method>.pipeline: paper``: clip + z-score, resampled to
``<method>.preprocess.spacing``, teacher crops around the tumour, student lung crops; the cpu-ts presets at
2.7 x 2.7 x 3 mm); ``--set <method>.pipeline=legacy`` (per method) runs the working grid instead.
Runs already finished in ``--out`` (``best.pt`` present) are reused. The paper's direction: box > point
teacher (more so when scarce) and students > baseline in the scarce scenario.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TEACHERS = ("point-teacher", "box-teacher")
STUDENTS = ("ts-baseline", "ts-student", "ts-student-do")
LABELS = {"point-teacher": "Point guided", "box-teacher": "Box guided", "ts-baseline": "Baseline",
          "ts-student": "SO Student", "ts-student-do": "DO Student"}


@dataclass
class Scenario:
    name: str
    strong: int
    box: int
    val: int
    test: int

    @property
    def n(self) -> int:
        return self.strong + self.box + self.val + self.test


def _pair(text: str) -> tuple[int, int]:
    a, b = (int(v) for v in text.split(","))
    return a, b


def mean_sd(values: list[float]) -> str:
    v = np.asarray([x for x in values if not math.isnan(x)], float)
    if v.size == 0:
        return "n/a"
    return f"{100 * v.mean():5.1f} ± {100 * v.std(ddof=0):4.1f}" + (f" (n={v.size})" if v.size != len(values) else "")


def make_cohort(sc: Scenario, out: Path, shape: tuple[int, ...], seed: int) -> Path:
    from cmedl.data.phantom import PhantomOptions, generate_cohort

    path = out / "data" / "manifest.json"
    if path.exists():
        return path
    train = sc.strong + sc.box
    return generate_cohort(out / "data", n_ct=sc.n, n_cbct=0, n_mr=0, seed=seed, shape=shape,
                           fractions=(train / sc.n, sc.val / sc.n, sc.test / sc.n),
                           options=PhantomOptions(box_only_share=sc.box / train,
                                                  # the cue the README's scenario tables were measured on
                                                  ct_cue_hu=(15, 25)))


def train_run(method: str, preset: str, manifest: Path, out: Path, overrides: list[str]) -> tuple[Path, float]:
    from cmedl.methods import load_config
    from cmedl.training import train

    if (out / "best.pt").exists() and (out / "DONE").exists():
        return out / "best.pt", float("nan")
    config = load_config(preset, [f"training.method={method}", *overrides])
    t = time.perf_counter()
    result = train(config, manifest, out_dir=out, resume=(out / "last.pt").exists())
    seconds = time.perf_counter() - t
    (out / "DONE").write_text(f"{seconds:.1f}\n")
    return result.best_checkpoint, seconds


def run_summary(run_dir: Path) -> dict[str, float]:
    """Epochs run, best epoch and its validation Dice of a finished run (from its ``log.csv``)."""
    import csv

    with open(run_dir / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    best = max(rows, key=lambda r: float(r["val_dice"]))
    return {"epochs": len(rows), "steps": int(rows[-1]["step"]), "best_epoch": int(best["epoch"]),
            "best_val_dice": float(best["val_dice"])}


def score_teacher(model: Path, manifest_path: Path, split: str, guided: str, hidden: bool = False,
                  device: str = "cpu") -> list[float]:
    """Per-case DSC of a teacher on ``split``: box teacher inside the (expert-derived or file) boxes."""
    from cmedl.data.boxes import box_mask, read_boxes
    from cmedl.data.datasets_ts import derived_box_mask
    from cmedl.data.manifest import Manifest
    from cmedl.evaluation.metrics import dice
    from cmedl.inference.pseudo_label import pseudo_label_volume, teacher_of
    from cmedl.io.volume import read_volume
    from cmedl.training.checkpoint import load_checkpoint

    cls, net, pp, crop, ts = teacher_of(load_checkpoint(model), model)
    m = Manifest.load(manifest_path)
    scores = []
    for case in m.cases:
        if case.split != split or (case.label is None) != hidden:
            continue
        image = read_volume(m.image_path(case))
        label_path = m.label_path(case) or (m.root / "labels" / f"{case.id}.nii.gz")  # hidden phantom masks
        ref = read_volume(label_path).array != 0
        boxes = (box_mask(read_boxes(m.boxes_path(case), image), image.shape) if hidden and m.boxes_path(case)
                 else derived_box_mask(ref) != 0)
        pred = pseudo_label_volume(image, boxes, net, pp, cls.guidance, crop, inside_boxes=cls.guidance == "box",
                                   ts=ts, device=device)
        scores.append(dice(pred != 0, ref))
    return scores


def _predict(model: Path, manifest_path: Path, split: str, out: Path, device: str) -> tuple[list[Path], float]:
    """Masks (hole filling only) and probability maps of ``split``; seconds per volume."""
    from cmedl.inference.segment import segment_files

    t = time.perf_counter()
    written = segment_files(model, [], out, manifest=manifest_path, split=split, fill_holes=True, probabilities=True,
                            progress=False, device=device)
    masks = [Path(p) for p in written if not str(p).endswith("_prob.nii.gz")]
    return masks, (time.perf_counter() - t) / max(len(masks), 1)


def _score_rows(masks: dict[str, np.ndarray], manifest) -> dict[str, list]:
    from cmedl.evaluation.metrics import dice
    from cmedl.evaluation.objects import object_metrics
    from cmedl.io.volume import read_volume

    rows: dict[str, list] = {k: [] for k in ("dsc", "dsc_tp", "f1", "recall", "precision", "case", "kind")}
    for case in manifest.cases:
        if case.id not in masks:
            continue
        pred, ref = masks[case.id], read_volume(manifest.label_path(case)).array != 0
        obj = object_metrics(pred, ref)
        rows["case"].append(case.id)
        rows["kind"].append(case.tumour_kind or "n/a")  # the phantom records each tumour's kind
        rows["dsc"].append(dice(pred, ref))
        for k in ("dsc_tp", "f1", "recall", "precision"):
            rows[k].append(float(obj[k]))
    return rows


def score_student(model: Path, manifest_path: Path, out: Path, device: str = "cpu") -> dict:
    """The student's test scores as segmented (hole filling only), and with the clean-up chosen on the
    validation split (:func:`cmedl.evaluation.postprocess_choice.choose_postprocess`: small components,
    lung filter, largest component) under ``"chosen"``."""
    from cmedl.data.manifest import Manifest
    from cmedl.evaluation.postprocess_choice import choose_postprocess
    from cmedl.io.volume import read_volume, write_volume

    m = Manifest.load(manifest_path)
    by_id = {c.id: c for c in m.cases}

    def case_of(path: Path):
        return by_id[path.name.removesuffix(".nii.gz")]

    val_masks, _ = _predict(model, manifest_path, "val", out / "val", device)
    val_cases = [case_of(p) for p in val_masks]
    best, val_scores = choose_postprocess(
        [read_volume(out / "val" / f"{c.id}_prob.nii.gz") for c in val_cases],
        [read_volume(m.label_path(c)).array != 0 for c in val_cases],
        images=[read_volume(m.image_path(c)) for c in val_cases])
    test_masks, per_volume = _predict(model, manifest_path, "test", out, device)
    rows = _score_rows({case_of(p).id: read_volume(p).array != 0 for p in test_masks}, m)
    chosen = {}
    for p in test_masks:
        case = case_of(p)
        mask = best.apply(read_volume(out / f"{case.id}_prob.nii.gz"), image=read_volume(m.image_path(case)))
        write_volume(read_volume(p).with_array(mask), out / "chosen" / f"{case.id}.nii.gz")
        chosen[case.id] = mask != 0
    rows["chosen"] = _score_rows(chosen, m)
    rows["postprocess"] = {"chosen": best.label, "val_dsc": val_scores}
    rows["seconds_per_volume"] = [per_volume]
    return rows


def run_scenario(sc: Scenario, args: argparse.Namespace) -> dict:
    from cmedl.inference.pseudo_label import pseudo_label_files

    out = args.out / sc.name
    manifest = make_cohort(sc, out, args.shape, args.seed)
    common = [f"data.samples_per_epoch={args.steps_per_epoch}", f"training.seed={args.seed}",
              f"training.device={args.device}", "training.progress=false", "training.image_grid=false"]
    steps = [*common, f"training.max_epochs={args.epochs}", *args.set]
    teacher_steps = [*common, f"training.max_epochs={args.teacher_epochs or args.epochs}", *args.set]
    result: dict = {"scenario": sc.__dict__, "teachers": {}, "students": {}, "train_seconds": {}, "runs": {}}
    models = {}
    for method in TEACHERS:
        models[method], result["train_seconds"][method] = train_run(
            method, args.teacher_config, manifest, out / "runs" / method, teacher_steps)
        result["runs"][method] = run_summary(out / "runs" / method)
        result["teachers"][method] = score_teacher(models[method], manifest, "test", method, device=args.device)
    pseudo_dir = out / "pseudo"
    if not (pseudo_dir / "manifest.json").exists():
        pseudo_label_files(models["box-teacher"], manifest, pseudo_dir, device=args.device, progress=False)
    result["pseudo_label_dsc"] = score_teacher(models["box-teacher"], manifest, "train", "box-teacher", hidden=True,
                                               device=args.device)
    for method in STUDENTS:
        data = manifest if method == "ts-baseline" else pseudo_dir / "manifest.json"
        model, result["train_seconds"][method] = train_run(method, args.student_config, data, out / "runs" / method,
                                                           steps)
        result["runs"][method] = run_summary(out / "runs" / method)
        result["students"][method] = score_student(model, manifest, out / "pred" / method, device=args.device)
    (out / "results.json").write_text(json.dumps(result, indent=1))
    return result


def print_tables(results: list[dict]) -> None:
    for res in results:
        sc = res["scenario"]
        print(f"\n## {sc['name']}: {sc['strong']} strong + {sc['box']} box-only train cases, {sc['val']} val, "
              f"{sc['test']} test (phantom)")
        print("\nTeachers (Table 2/4 equivalent): DSC % on the test cases, mean ± SD")
        print("| Model | DSC |\n|---|---|")
        for m in TEACHERS:
            print(f"| {LABELS[m]} | {mean_sd(res['teachers'][m])} |")
        print(f"\nPseudo labels (box teacher) vs the hidden phantom masks of the box-only cases: DSC "
              f"{mean_sd(res['pseudo_label_dsc'])}")
        print("\nStudents (Table 3/5 equivalent): %, mean ± SD over test cases (objects: >= 25 % overlap)")
        print("| Model | DSC | DSC-TP | F1 | Recall | Precision | s/volume |\n|---|---|---|---|---|---|---|")
        for m in STUDENTS:
            r = res["students"][m]
            cells = " | ".join(mean_sd(r[k]) for k in ("dsc", "dsc_tp", "f1", "recall", "precision"))
            print(f"| {LABELS[m]} | {cells} | {r['seconds_per_volume'][0]:.1f} |")
        if all("chosen" in res["students"][m] for m in STUDENTS):
            print("\nStudents with the clean-up each chose on the validation split (best mean validation DSC)")
            print("| Model | clean-up | val DSC | DSC | DSC-TP | F1 | Recall | Precision |\n|---|---|---|---|---|---|---|---|")
            for m in STUDENTS:
                r, pp = res["students"][m]["chosen"], res["students"][m]["postprocess"]
                cells = " | ".join(mean_sd(r[k]) for k in ("dsc", "dsc_tp", "f1", "recall", "precision"))
                print(f"| {LABELS[m]} | {pp['chosen']} | {100 * pp['val_dsc'][pp['chosen']]:.1f} "
                      f"(none {100 * pp['val_dsc']['none']:.1f}) | {cells} |")
        kinds = sorted(set(res["students"][STUDENTS[0]].get("kind", [])))
        if kinds:
            print("\nStudents' DSC % per tumour kind (phantom), mean ± SD")
            counts = [res["students"][STUDENTS[0]]["kind"].count(k) for k in kinds]
            print("| Model | " + " | ".join(f"{k} (n={n})" for k, n in zip(kinds, counts)) + " |")
            print("|---|" + "---|" * len(kinds))
            for m in STUDENTS:
                variants = [("", res["students"][m])]
                if "chosen" in res["students"][m]:
                    variants.append((f", {res['students'][m]['postprocess']['chosen']}", res["students"][m]["chosen"]))
                for suffix, r in variants:
                    print(f"| {LABELS[m]}{suffix} | " + " | ".join(
                        mean_sd([d for d, k in zip(r["dsc"], r["kind"]) if k == kind]) for kind in kinds) + " |")
        secs = ", ".join(f"{k} {v:.0f} s" for k, v in res["train_seconds"].items() if not math.isnan(v))
        print(f"\ntraining time: {secs or 'reused runs'}")
        print("runs (best checkpoint by validation Dice): " + ", ".join(
            f"{k} {r['steps']} steps, best epoch {r['best_epoch']}/{r['epochs']} (val {r['best_val_dice']:.3f})"
            for k, r in res.get("runs", {}).items()))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--vast", type=_pair, default=(8, 12), help="strong,box train cases of the vast scenario")
    p.add_argument("--scarce", type=_pair, default=(1, 20), help="strong,box train cases of the scarce scenario")
    p.add_argument("--val", type=int, default=2)
    p.add_argument("--test", type=int, default=6)
    p.add_argument("--shape", type=_shape, default=(32, 64, 64), help="phantom voxels z,y,x")
    p.add_argument("--scenarios", default="vast,scarce")
    p.add_argument("--teacher-config", default="cpu-ts-teacher")
    p.add_argument("--student-config", default="cpu-ts")
    p.add_argument("--steps-per-epoch", type=int, default=40, help="data.samples_per_epoch (batch 1)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--teacher-epochs", type=int, default=0, help="epochs of the teachers (0: --epochs)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], help="extra section.key=value for every run")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    return p.parse_args(argv)


def _shape(text: str) -> tuple[int, int, int]:
    z, y, x = (int(v) for v in text.split(","))
    return z, y, x


def main(argv: list[str] | None = None) -> list[dict]:
    import torch

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    chosen = {"vast": Scenario("vast", *args.vast, args.val, args.test),
              "scarce": Scenario("scarce", *args.scarce, args.val, args.test)}
    results = [run_scenario(chosen[name], args) for name in args.scenarios.split(",")]
    print_tables(results)
    return results


if __name__ == "__main__":
    main()
