"""Phantom cases and cohorts: seeding, grids, file writing, the manifest.

Every case is drawn from its own ``numpy`` generator seeded with
``SeedSequence([seed, modality_code, index])``, so case ``k`` of a modality is byte-identical
whatever the cohort size, and CT/CBCT/MRI patients are independent (unpaired) draws whose ids
(``ct_P000``, ``cbct_P000``, ``mr_P000``) never coincide.

Default geometry (``shape`` ``(z, y, x)`` = ``(48, 128, 128)``): CT/CBCT field of view
346 x 346 x 144 mm (spacing 2.70 x 2.70 x 3.0 mm, an adult thorax); MRI spacing scaled from the
CMEDL papers' ratio (MRI 1.1 x 0.97 x 2.5 mm vs CT 0.98 x 0.98 x 3 mm, i.e. x1.12, x0.99, x0.83)
to 3.03 x 2.68 x 2.5 mm, and a field of view shifted by up to 15 mm per case.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from cmedl.data.box_manifest import choose_box_only
from cmedl.data.boxes import boxes_from_mask, write_boxes
from cmedl.data.manifest import Case, Manifest, split_by_patient
from cmedl.data.phantom.anatomy import Anatomy, Grid, TumourInfo, build_anatomy, sample_patient
from cmedl.data.phantom.cbct import render_cbct
from cmedl.data.phantom.ct import render_ct
from cmedl.data.phantom.mri import render_mr
from cmedl.data.phantom.options import PhantomOptions
from cmedl.data.phantom.staging import MANIFEST, check_destination, commit, staging_folder
from cmedl.errors import InputError, did_you_mean
from cmedl.io.volume import Volume, write_volume

MODALITY_CODES = {"ct": 1, "cbct": 2, "mr": 3}
DEFAULT_SHAPE = (48, 128, 128)
#: CT field of view (x, y, z) in mm used to derive the spacing when none is given.
DEFAULT_FOV_MM = (346.0, 346.0, 144.0)
#: MRI spacing / CT spacing, (x, y, z), from the papers (1.1/0.98, 0.97/0.98, 2.5/3.0).
MR_SPACING_RATIO = (1.1 / 0.98, 0.97 / 0.98, 2.5 / 3.0)
#: most voxels of one image (2**31: 4 GiB as int16; rendering needs several float copies of it)
MAX_VOXELS = 2**31
#: folder of the paired-oracle MRIs (CT patients' own anatomy as MRI on the CT grid)
PAIRED_MR_DIR = "paired_mr"
#: folder of the box files (``PhantomOptions.box_only_share``)
BOXES_DIR = "boxes"


@dataclass
class PhantomCase:
    """One generated case: image, exact tumour mask and tissue labels on one grid."""

    case_id: str
    patient_id: str
    modality: str
    image: Volume  #: CT/CBCT in HU (int16) or T2w MRI (int16, arbitrary units)
    mask: Volume  #: uint8 union of the tumours
    labels: Volume  #: uint8 :class:`~cmedl.data.phantom.anatomy.Tissue` map
    tumours: list[TumourInfo]
    #: the same anatomy as T2w MRI on the CT/CBCT grid (``PhantomOptions.paired_oracle``), else None
    paired_mr: Volume | None = None

    @property
    def tumour_kind(self) -> str | None:
        """The dominant (first) tumour's kind."""
        return self.tumours[0].kind if self.tumours else None


def default_spacing(shape: Sequence[int]) -> tuple[float, float, float]:
    """CT spacing (x, y, z mm) that makes ``shape`` ``(z, y, x)`` cover :data:`DEFAULT_FOV_MM`."""
    nz, ny, nx = shape
    return (DEFAULT_FOV_MM[0] / nx, DEFAULT_FOV_MM[1] / ny, DEFAULT_FOV_MM[2] / nz)


def _check_geometry(shape: Sequence[int], spacing: Sequence[float] | None, what: str) -> None:
    """Shape ``(z, y, x)``: integers, z >= 4, y, x >= 16, at most :data:`MAX_VOXELS` voxels;
    spacing ``(x, y, z)``: three finite positive numbers."""
    if len(shape) != 3 or any(int(s) != s or s < 4 for s in shape) or shape[1] < 16 or shape[2] < 16:
        raise InputError(
            f"{what}: shape must be 3 integers (z, y, x) with z >= 4 and y, x >= 16, got {tuple(shape)}"
        )
    voxels = math.prod(int(s) for s in shape)
    if voxels > MAX_VOXELS:
        raise InputError(f"{what}: shape (z, y, x) {tuple(shape)} has {voxels:.3g} voxels per image; "
                         f"at most {MAX_VOXELS} (2**31) are allowed")
    if spacing is not None and (len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing)):
        raise InputError(
            f"{what}: spacing must be 3 finite positive numbers (x, y, z) in mm, got {tuple(spacing)}"
        )


def case_id(modality: str, index: int) -> str:
    """The case (and patient) id of case ``index`` of ``modality``: ``ct_P000`` etc."""
    return f"{modality}_P{index:03d}"


def generate_case(
    modality: str,
    index: int,
    seed: int = 0,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] | None = None,
    mr_spacing: Sequence[float] | None = None,
    return_anatomy: bool = False,
    options: PhantomOptions | None = None,
) -> PhantomCase | tuple[PhantomCase, Anatomy]:
    """Generate case ``index`` of ``modality`` (``ct``, ``cbct`` or ``mr``).

    Args:
        shape: voxels ``(z, y, x)``; MRI uses the same voxel counts on its own spacing.
        spacing: CT/CBCT spacing ``(x, y, z)`` mm (default: :func:`default_spacing`).
        mr_spacing: MRI spacing ``(x, y, z)`` mm (default: CT spacing x :data:`MR_SPACING_RATIO`).
        return_anatomy: also return the :class:`Anatomy` (label map, texture, parameters).
        options: tumour sizes and kinds, the CT cue, the paired oracle (default: the cue cohort,
            :class:`~cmedl.data.phantom.options.PhantomOptions`).
    """
    if modality not in MODALITY_CODES:
        raise InputError(did_you_mean(modality, MODALITY_CODES, "modality"))
    shape = tuple(int(s) for s in shape)
    _check_geometry(shape, spacing, "CT grid")
    _check_geometry(shape, mr_spacing, "MRI grid")
    options = options or PhantomOptions()
    ss = np.random.SeedSequence([int(seed), MODALITY_CODES[modality], int(index)])
    anat_rng, render_rng, grid_rng, oracle_rng = (np.random.default_rng(s) for s in ss.spawn(4))
    grid = _case_grid(modality, shape, spacing, mr_spacing, grid_rng)  # type: ignore[arg-type]
    patient = sample_patient(anat_rng, options, int(index))
    anatomy = build_anatomy(patient, grid, anat_rng)
    if modality == "ct":
        img = render_ct(anatomy, render_rng)
    elif modality == "cbct":
        img = render_cbct(anatomy, render_rng)
    else:
        img = render_mr(anatomy, render_rng)
    paired_mr = None
    if options.paired_oracle and modality != "mr":
        paired_mr = grid.volume(np.rint(render_mr(anatomy, oracle_rng)).astype(np.int16))
    image = grid.volume(np.rint(img).astype(np.int16))
    cid = case_id(modality, index)
    image.meta.update(
        {"phantom_modality": modality, "phantom_seed": str(seed), "phantom_index": str(index)}
    )
    case = PhantomCase(
        cid,
        cid,
        modality,
        image,
        grid.volume(anatomy.mask),
        grid.volume(anatomy.labels),
        anatomy.tumours,
        paired_mr,
    )
    return (case, anatomy) if return_anatomy else case


def _case_grid(
    modality: str,
    shape: tuple[int, int, int],
    spacing: Sequence[float] | None,
    mr_spacing: Sequence[float] | None,
    grid_rng: np.random.Generator,
) -> Grid:
    """The image grid of a case: CT/CBCT centred on the body axis; MRI on its own spacing with a
    field of view shifted by a draw from ``grid_rng`` (up to 15 mm)."""
    ct_sp = tuple(float(s) for s in spacing) if spacing is not None else default_spacing(shape)
    if modality != "mr":
        return Grid.centred(shape, ct_sp)  # type: ignore[arg-type]
    sp = (
        tuple(float(s) for s in mr_spacing)
        if mr_spacing is not None
        else tuple(c * r for c, r in zip(ct_sp, MR_SPACING_RATIO))
    )
    shift = (grid_rng.uniform(-15, 15), grid_rng.uniform(-10, 10), grid_rng.uniform(-10, 10))
    return Grid.centred(shape, sp, shift)  # type: ignore[arg-type]


def _init_worker() -> None:
    """Pool worker set-up: one ITK thread per process (the pool provides the parallelism)."""
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def _write_case(args: tuple) -> dict:
    """Worker: generate one case and write ``images/<id>.nii.gz`` and ``labels/<id>.nii.gz``."""
    modality, index, seed, shape, spacing, mr_spacing, with_label, options, out_dir = args
    case = generate_case(modality, index, seed, shape, spacing, mr_spacing, options=options)
    assert isinstance(case, PhantomCase)
    out = Path(out_dir)
    img_rel = f"images/{case.case_id}.nii.gz"
    write_volume(case.image, out / img_rel)
    lab_rel = None
    if with_label:
        lab_rel = f"labels/{case.case_id}.nii.gz"
        write_volume(case.mask, out / lab_rel)
    boxes_rel = None
    if options.box_only_share and modality == "ct":  # box files only when asked: outputs unchanged otherwise
        boxes_rel = f"{BOXES_DIR}/{case.case_id}.json"
        write_boxes(out / boxes_rel, boxes_from_mask(case.mask.array, case.image))
    paired_rel = None
    if case.paired_mr is not None:
        paired_rel = f"{PAIRED_MR_DIR}/{case.case_id}.nii.gz"
        write_volume(case.paired_mr, out / paired_rel)
    return {
        "id": case.case_id,
        "patient_id": case.patient_id,
        "modality": modality,
        "image": img_rel,
        "label": lab_rel,
        "paired_mr": paired_rel,
        "boxes": boxes_rel,
        "tumour_kind": case.tumour_kind if modality != "mr" or with_label else None,
        "tumours": [t.__dict__ for t in case.tumours],
    }


def generate_cohort(
    out_dir: str | Path,
    n_ct: int,
    n_cbct: int,
    n_mr: int,
    seed: int = 0,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] | None = None,
    mr_spacing: Sequence[float] | None = None,
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    mr_labels: bool = True,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool | Callable[[int, int], None] = False,
    options: PhantomOptions | None = None,
) -> Path:
    """Write a phantom cohort to ``out_dir`` and return the path of its ``manifest.json``.

    Files: ``images/<id>.nii.gz`` (CT/CBCT int16 HU, MRI int16 a.u.), ``labels/<id>.nii.gz``
    (uint8 tumour mask on the image grid; for MRI only if ``mr_labels``), ``manifest.json``
    (:class:`~cmedl.data.manifest.Manifest`, split by patient with ``fractions`` and ``seed``)
    and ``tumours.json`` (kind, centre, diameter of every tumour); with ``options.paired_oracle``
    also ``paired_mr/<id>.nii.gz`` per CT/CBCT case (its own anatomy as MRI on its grid). The manifest
    records each case's ``tumour_kind`` (the dominant tumour's) and ``paired_mr``.

    Args:
        shape: voxels ``(z, y, x)`` of every image; spacing/mr_spacing: ``(x, y, z)`` mm.
        workers: processes (default ``min(2, cpu count)``; 1 = in this process).
        overwrite: replace an existing cohort in ``out_dir`` (else an existing manifest is an error).
        progress: show a rich progress bar (True) or call ``progress(done, total)``.
        options: tumour sizes and kinds, the CT cue (default: the cue cohort; the negative control
            is ``PhantomOptions.control()``), the paired oracle (:mod:`~cmedl.data.phantom.options`).

    Raises:
        InputError: bad counts/geometry, ``out_dir`` already holds a manifest (or a cohort file)
            without ``overwrite``, or a folder stands where a cohort file goes. The cohort is
            written beside ``out_dir`` and moved in only when complete
            (:mod:`cmedl.data.phantom.staging`): on any error or interrupt ``out_dir`` is unchanged.
    """
    out = Path(out_dir)
    counts = _check_counts(n_ct, n_cbct, n_mr)
    shape = tuple(int(s) for s in shape)
    _check_geometry(shape, spacing, "CT grid")
    _check_geometry(shape, mr_spacing, "MRI grid")
    options = options or PhantomOptions()
    jobs = _cohort_jobs(counts, seed, shape, spacing, mr_spacing, mr_labels, options)
    files = [f"images/{case_id(j[0], j[1])}.nii.gz" for j in jobs]
    files += [f"labels/{case_id(j[0], j[1])}.nii.gz" for j in jobs if j[6]]  # j[6]: with a label
    if options.paired_oracle:
        files += [f"{PAIRED_MR_DIR}/{case_id(j[0], j[1])}.nii.gz" for j in jobs if j[0] != "mr"]
    if options.box_only_share:
        files += [f"{BOXES_DIR}/{case_id(j[0], j[1])}.json" for j in jobs if j[0] == "ct"]
    files += ["tumours.json", MANIFEST]  # the manifest last: it is what makes the cohort
    check_destination(out, files, overwrite)
    n_workers = min(2, os.cpu_count() or 1) if workers is None else max(1, int(workers))
    n_workers = min(n_workers, len(jobs))
    results: dict[str, dict] = {}
    reporter = _ProgressReporter(progress, len(jobs))

    def done(res: dict) -> None:
        results[res["id"]] = res
        reporter.advance(len(results))

    try:
        with staging_folder(out) as stage:
            _run_jobs([(*j, str(stage)) for j in jobs], n_workers, done)
            ordered = [results[case_id(j[0], j[1])] for j in jobs]
            manifest = _cohort_manifest(ordered, counts, shape, seed, fractions, options)
            (stage / "tumours.json").write_text(
                json.dumps({r["id"]: r["tumours"] for r in ordered}, indent=1) + "\n"
            )
            manifest.save(stage / MANIFEST)
            commit(stage, out, files)
    finally:
        reporter.stop()
    return out / MANIFEST


def _check_counts(n_ct: int, n_cbct: int, n_mr: int) -> dict[str, int]:
    """Case counts per modality; each a non-negative integer, not all 0."""
    counts = {"ct": n_ct, "cbct": n_cbct, "mr": n_mr}
    for mod, n in counts.items():
        if int(n) != n or n < 0:
            raise InputError(f"number of {mod} cases must be a non-negative integer, got {n}")
    if sum(counts.values()) == 0:
        raise InputError("nothing to generate: all case counts are 0")
    return counts


def _cohort_jobs(
    counts: dict[str, int],
    seed: int,
    shape: tuple[int, ...],
    spacing: Sequence[float] | None,
    mr_spacing: Sequence[float] | None,
    mr_labels: bool,
    options: PhantomOptions,
) -> list[tuple]:
    """Arguments of :func:`_write_case` but the output folder, for every case: CT, then CBCT, then
    MRI, by index."""
    return [
        (mod, k, int(seed), shape, spacing, mr_spacing, mod != "mr" or mr_labels, options)
        for mod in ("ct", "cbct", "mr")
        for k in range(int(counts[mod]))
    ]


class _ProgressReporter:
    """Reports finished cases: a rich progress bar (``progress=True``, started at once), a
    ``progress(done, total)`` callback, or nothing."""

    def __init__(self, progress: bool | Callable[[int, int], None], total: int) -> None:
        self._callback = progress if callable(progress) else None
        self._total = total
        self._bar = None
        self._task = None
        if progress is True:
            # lazy: rich's progress machinery is only needed when a bar is shown
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("phantom cases"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TimeElapsedColumn(),
                transient=False,
            )
            self._task = self._bar.add_task("phantom", total=total)
            self._bar.start()

    def advance(self, done: int) -> None:
        if self._bar is not None:
            self._bar.advance(self._task)  # type: ignore[arg-type]
        elif self._callback is not None:
            self._callback(done, self._total)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _run_jobs(jobs: list[tuple], n_workers: int, done: Callable[[dict], None]) -> None:
    """Run :func:`_write_case` on every job, in this process (``n_workers <= 1``) or in a spawned
    process pool, calling ``done(result)`` as each finishes; on error, cancels pending jobs."""
    if n_workers <= 1:
        for job in jobs:
            done(_write_case(job))
        return
    with ProcessPoolExecutor(
        n_workers, mp_context=get_context("spawn"), initializer=_init_worker
    ) as pool:
        futures = [pool.submit(_write_case, job) for job in jobs]
        try:
            for fut in as_completed(futures):
                done(fut.result())
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def _cohort_manifest(
    ordered: list[dict],
    counts: dict[str, int],
    shape: tuple[int, ...],
    seed: int,
    fractions: tuple[float, float, float],
    options: PhantomOptions,
) -> Manifest:
    """The cohort's manifest: the written cases (in job order), split by patient."""
    cases = [
        Case(r["id"], r["patient_id"], r["modality"], r["image"], r["label"],
             tumour_kind=r["tumour_kind"], paired_mr=r["paired_mr"])
        for r in ordered
    ]
    cases = split_by_patient(cases, fractions, seed=int(seed))
    if options.box_only_share:
        boxes = {r["id"]: r["boxes"] for r in ordered}
        pool = [c.id for c in cases if c.modality == "ct" and c.split == "train" and c.tumour_kind is not None]
        box_only = set(choose_box_only(pool, options.box_only_share, None, int(seed)))
        cases = [dataclasses.replace(c, boxes=boxes[c.id], label=None if c.id in box_only else c.label)
                 for c in cases]
    nz, ny, nx = shape
    return Manifest(
        cases,
        name="phantom",
        description=(
            f"synthetic thoracic phantom: {counts['ct']} CT, {counts['cbct']} CBCT, "
            f"{counts['mr']} T2w MRI (unpaired patients), "
            f"{nx}x{ny}x{nz} voxels, seed {seed}; labels = tumour masks"
            + f"; {options.describe()}"
        ),
        seed=int(seed),
    )
