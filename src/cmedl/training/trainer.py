"""The training loop shared by all methods: :func:`train`.

One epoch = ``config.iterations_per_epoch`` optimisation steps on freshly drawn patches (the
slice datasets draw item ``i`` of epoch ``e`` from ``(seed, e, i)``). After every epoch the student
is validated (``training.validation``):

- ``volumes`` (default): the student segments every validation volume whole, exactly as
  ``cmedl segment`` would (slice-wise, or by sliding window for 3D students); ``val_loss`` is the
  mean over volumes of the soft Dice loss of the 3D probability map and ``val_dice`` the mean
  per-volume Dice of the thresholded mask. A false positive anywhere in the scan costs, as it does
  in the evaluation; patch validation cannot see those (it only looks near tumours and at a few
  random patches), so it tends to keep checkpoints that over-segment whole scans.
- ``patches``: a FIXED set of ``data.val_samples`` validation patches (same every epoch:
  ``tumour_fraction`` of them on tumour slices, the rest tumour-free): mean soft-Dice loss and the
  data-set-level hard Dice. Cheaper on big validation sets.

``val_loss`` is the early-stopping criterion and selects ``best.pt``. Methods whose class says
``dims = 3`` (``ct-only-3d``) get 3D patches of ``data.patch_size_3d`` instead
(:class:`cmedl.data.datasets3d.PatchDataset3D`, flips as the only augmentation).

Outputs in ``out_dir``::

    config.yaml          the full configuration
    last.pt, best.pt     checkpoints (atomic writes; best = lowest val_loss)
    log.csv              one row per epoch (train loss means, val_loss, val_dice, time)
    tb/                  TensorBoard events (train/* every log_every steps, epoch/* per epoch)
    images/epoch_NNN.png image grid of validation patches (CT, pMRI, rec. CT, expert, predicted)

``resume=True`` reloads ``last.pt`` and continues with exactly the steps an uninterrupted run
would take: network/optimiser states, image pools, global RNG states, the dataset epoch and the
early-stopping state are restored, and data order depends only on (seed, epoch, index).
A non-finite loss stops the run with :class:`TrainingDiverged`; the last good checkpoints stay.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from cmedl.data.manifest import Manifest
from cmedl.devices import keep_freed_host_memory, resolve_device
from cmedl.errors import CmedlError, ConfigError, InputError
from cmedl.training.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from cmedl.training.config import TrainConfig, save_config
from cmedl.training.logging import TensorBoardLogger, save_image_grid, write_history_csv


logger = logging.getLogger(__name__)


class TrainingDiverged(CmedlError, RuntimeError):
    """A loss became NaN/inf; the message says where and which checkpoint was kept."""


@dataclass
class TrainResult:
    """Summary of a finished (or early-stopped) run."""

    out_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    best_epoch: int
    best_val_loss: float
    best_val_dice: float
    epochs: int
    stopped_early: bool
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)


#: settings that may differ between a run and its resumption (they do not change the steps taken)
RESUMABLE_CHANGES = ("training.max_epochs", "training.patience", "training.min_delta", "training.device",
                     "training.progress", "training.log_every", "training.image_grid", "data.num_workers",
                     "data.cache_dir", "training.channels_last")


# ------------------------------------------------------------------------------------ helpers
def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy's global RNG and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; derive numpy/python seeds from it so that
    # any library RNG use inside workers is reproducible too (the datasets themselves are stateless).
    s = torch.initial_seed() % (2**32)
    np.random.seed(s)
    random.seed(s)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and k not in ("preprocess", "preprocess_mr", "augment_params"):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _check_resume_config(saved: dict[str, Any], config: TrainConfig, ckpt_path: Path) -> None:
    a, b = _flatten(saved), _flatten(config.to_dict())
    resumable = set(RESUMABLE_CHANGES)
    if config.optim.lr_schedule != "constant":  # the decay is spread over max_epochs: changing it changes the steps
        resumable.discard("training.max_epochs")
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in resumable)
    if diff:
        show = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diff[:4])
        raise ConfigError(
            f"cannot resume with a different configuration ({show}); only {', '.join(sorted(resumable))} "
            "may change" + (" (max_epochs is fixed because optim.lr_schedule decays over it)"
                            if "training.max_epochs" in diff else ""), ckpt_path,
        )


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    return torch.utils.data.default_collate(items)


@dataclass
class _Data:
    train: Any
    val: Any  # fixed validation patches (validation=patches; the image grid in both modes)
    student_pp: Any
    mr_pp: Any
    val_cache: Any = None  # the preprocessed validation volumes (validation=volumes)


def build_data(
    config: TrainConfig, manifest: Manifest, mr_manifest: Manifest | None, unpaired: bool, progress: bool,
    dims: int = 2,
) -> _Data:
    """Training dataset (labelled student slices, or unpaired student/MRI) and fixed validation patches.

    ``dims=3``: labelled 3D patches (``data.patch_size_3d``) for volumetric methods; ``augment`` then
    means random flips of every axis with ``augment_params.flip_prob``.
    """
    from cmedl.data.augment import AugmentConfig
    from cmedl.data.datasets import SliceDataset, UnpairedDataset, VolumeCache
    from cmedl.methods import preprocess_configs

    d, seed = config.data, config.training.seed
    student_pp, mr_pp = preprocess_configs(config)
    patch = (d.patch_size, d.patch_size)
    try:
        augment: bool | AugmentConfig = AugmentConfig(**d.augment_params) if d.augment else False
    except TypeError as exc:
        raise ConfigError(f"data.augment_params: {exc}") from None
    src = manifest.root / "manifest.json"

    def cache(m: Manifest, split: str, modality: str, pp: Any, labelled: bool | None) -> VolumeCache:
        cases = m.select(split=split, modality=modality, labelled=labelled)
        if not cases:
            what = "labelled " if labelled else ""
            raise InputError(f"no {what}{modality} cases in split '{split}'", m.root / "manifest.json")
        return VolumeCache.load(m, cases, pp, workers=2, progress=progress)

    student_cases = manifest.select(modality=d.modality)
    if not student_cases:
        raise InputError(f"no {d.modality} cases (data.modality is '{d.modality}')", src)
    if unpaired:  # check the MRI before loading anything
        mr_src = mr_manifest if mr_manifest is not None else manifest
        mr_cases = mr_src.select(modality="mr")
        if not mr_cases:
            raise InputError("no mr cases for the teacher (add MRI to the manifest or give --mr-data)",
                             mr_src.root / "manifest.json")
        shared = sorted({c.patient_id for c in student_cases} & {c.patient_id for c in mr_cases})
        if shared:
            raise InputError(
                f"MRI and {d.modality} cases share patients {', '.join(shared[:5])}; CMEDL needs MRI of other "
                "patients (unpaired)", mr_src.root / "manifest.json",
            )
    if dims == 3:
        if unpaired:
            raise ConfigError("3D training supports labelled (single-modality) methods only")
        from cmedl.data.datasets3d import PatchDataset3D

        flip = augment.flip_prob if isinstance(augment, AugmentConfig) else 0.0
        train3d = PatchDataset3D(cache(manifest, "train", d.modality, student_pp, True), d.patch_size_3d,
                                 d.tumour_fraction, d.samples_per_epoch, flip, seed=seed)
        val_cache = cache(manifest, "val", d.modality, student_pp, True)
        val3d = PatchDataset3D(val_cache, d.patch_size_3d, 0.5, d.val_samples, 0.0, seed=seed + 7919)
        return _Data(train3d, val3d, student_pp, None, val_cache)
    train_ct = SliceDataset(cache(manifest, "train", d.modality, student_pp, True), patch, d.tumour_fraction,
                            d.samples_per_epoch, augment, seed)
    val_cache = cache(manifest, "val", d.modality, student_pp, True)
    val = SliceDataset(val_cache, patch, 0.5, d.val_samples, False, seed + 7919)
    if not unpaired:
        return _Data(train_ct, val, student_pp, None, val_cache)

    mr_train = [c for c in mr_cases if c.split == "train"] or mr_cases  # a separate MRI set may be unsplit
    mr_cache = VolumeCache.load(mr_src, mr_train, mr_pp, workers=2, progress=progress)
    train_mr = SliceDataset(mr_cache, patch, d.tumour_fraction, None, augment, seed + 1)
    return _Data(UnpairedDataset(train_ct, train_mr, seed=seed), val, student_pp, mr_pp, val_cache)


def _loader(dataset: Any, config: TrainConfig, epoch: int, shuffle_seed: int, device: torch.device,
            drop_last: bool) -> DataLoader:
    g = torch.Generator().manual_seed(shuffle_seed * 100003 + epoch)
    n = config.data.num_workers
    return DataLoader(
        dataset, batch_size=config.training.batch_size, shuffle=False, drop_last=drop_last, num_workers=n,
        worker_init_fn=_seed_worker if n > 0 else None, generator=g, collate_fn=_collate,
        pin_memory=device.type == "cuda",
    )


def _validate(method: Any, val_loader: DataLoader) -> tuple[dict[str, float], dict[str, Any] | None]:
    tot = {"loss": 0.0, "n": 0.0, "intersection": 0.0, "pred_sum": 0.0, "label_sum": 0.0}
    first = None
    for batch in val_loader:
        if first is None:
            first = batch
        out = method.validation_step(batch)
        tot["loss"] += out["loss"] * out["n"]
        for k in ("n", "intersection", "pred_sum", "label_sum"):
            tot[k] += out[k]
    n = max(tot["n"], 1.0)
    denom = tot["pred_sum"] + tot["label_sum"]
    dice = 2.0 * tot["intersection"] / denom if denom > 0 else 1.0
    return {"val_loss": tot["loss"] / n, "val_dice": dice}, first


def lr_factor(schedule: str, progress: float, decay_start: float = 0.5) -> float:
    """Multiplier of the base learning rate at ``progress`` = fraction of all steps already taken."""
    if schedule == "constant" or progress <= decay_start:
        return 1.0
    t = min((progress - decay_start) / (1.0 - decay_start), 1.0)
    if schedule == "linear":
        return 1.0 - t
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    raise ConfigError(f"optim.lr_schedule: unknown schedule {schedule!r}")


def _set_learning_rates(method: Any, factor: float) -> None:
    for opt in method.optimizers.values():
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * factor


def _validate_volumes(method: Any, cache: Any, config: TrainConfig, device: torch.device) -> dict[str, float]:
    """Segment every validation volume whole with the student (as ``cmedl segment`` does, on the
    working grid) and return the mean per-volume soft Dice loss and hard Dice."""
    from cmedl.evaluation.metrics import dice
    from cmedl.inference.segment import inference_copy, predict_slices, predict_volume_3d

    bf16 = method.precision == "bf16"
    net = inference_copy(method.student, device)  # BN folded, eval mode; the training net is untouched
    losses, dices = [], []
    for case in cache.cases:
        pad = float(case.prepared.pad_value)
        if int(getattr(method, "dims", 2)) == 3:
            prob = predict_volume_3d(net, case.image, config.data.patch_size_3d, device=device, amp_bf16=bf16,
                                     pad_value=pad)
        else:
            prob, _ = predict_slices(net, case.image, device=device, amp_bf16=bf16, pad_value=pad)
        p, y = prob.astype(np.float64), case.label.astype(np.float64)
        eps = 1e-6
        losses.append(1.0 - float((2.0 * (p * y).sum() + eps) / (p.sum() + y.sum() + eps)))
        dices.append(dice(prob > 0.5, case.label > 0))
    return {"val_loss": float(np.mean(losses)), "val_dice": float(np.mean(dices))}


def _as_manifest(m: Manifest | str | Path | None) -> Manifest | None:
    if m is None or isinstance(m, Manifest):
        return m
    return Manifest.load(m)


# ------------------------------------------------------------------------------------ train
def train(
    config: TrainConfig,
    data_manifest: Manifest | str | Path,
    mr_manifest: Manifest | str | Path | None = None,
    out_dir: str | Path = "runs/train",
    resume: bool = False,
    *,
    step_callback: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train ``config.training.method`` on the manifests and write checkpoints and logs to ``out_dir``.

    Args:
        config: the full training configuration.
        data_manifest: manifest (or its path) with the student-modality cases (train/val splits) and,
            for ``cmedl``, possibly the MRI cases too (from other patients).
        mr_manifest: a separate manifest of MRI cases (its ``train`` split, or all cases if unsplit).
        out_dir: run folder. Without ``resume`` it must not already hold a run.
        resume: continue the run in ``out_dir`` from ``last.pt``.
        step_callback: called as ``step_callback(global_step, losses)`` after every step (tests, demo).

    Raises:
        InputError: bad manifests, MRI of the same patients, an existing run without ``resume``.
        ConfigError: invalid settings, or a resumed run whose settings differ.
        TrainingDiverged: a non-finite loss (the last good checkpoint is kept).
    """
    from cmedl.methods import build_method

    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    ckpt: dict[str, Any] | None = None
    if resume:
        ckpt = load_checkpoint(last_path)
        _check_resume_config(ckpt["config"], config, last_path)
    elif last_path.exists():
        raise InputError("already holds a training run (last.pt); use --resume or another --out", out_dir)

    tc = config.training
    device = resolve_device(tc.device)
    if device.type == "cpu":
        keep_freed_host_memory()  # ~10 % faster CPU steps (no page faults on every step's buffers)
    manifest = _as_manifest(data_manifest)
    assert manifest is not None
    mr_m = _as_manifest(mr_manifest)

    seed_everything(tc.seed)
    method = build_method(config, device)
    if tc.precision == "auto":
        logger.info("training.precision auto: %s on %s", method.precision, device)
    data = build_data(config, manifest, mr_m, method.batch_kind == "unpaired", tc.progress,
                      dims=int(getattr(method, "dims", 2)))
    if len(data.train) < tc.batch_size:
        raise ConfigError(f"data.samples_per_epoch ({len(data.train)}) is smaller than the batch size")

    history: list[dict[str, Any]] = []
    start_epoch, global_step = 0, 0
    best = {"epoch": 0, "val_loss": math.inf, "val_dice": 0.0, "epochs_since_best": 0}
    if ckpt is not None:
        method.load_state_dict(ckpt)
        history = list(ckpt.get("history", []))
        start_epoch, global_step = int(ckpt["epoch"]), int(ckpt["global_step"])
        best = {**best, **ckpt.get("best", {})}
        restore_rng_state(ckpt["rng"])
    method.global_step = global_step
    for opt in method.optimizers.values():  # base rates of the schedule (restored with the optimiser state)
        for group in opt.param_groups:
            group.setdefault("initial_lr", group["lr"])
    total_steps = tc.max_epochs * (len(data.train) // tc.batch_size)

    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, out_dir / "config.yaml")
    tb = TensorBoardLogger(out_dir / "tb", purge_step=global_step if resume else None)
    preprocess = {"student": data.student_pp.to_dict(), "mr": data.mr_pp.to_dict() if data.mr_pp else None}
    from tqdm.auto import tqdm

    stopped_early = best["epochs_since_best"] >= tc.patience
    epoch = start_epoch
    try:
        while epoch < tc.max_epochs and not stopped_early:
            t_epoch = time.perf_counter()
            data.train.set_epoch(epoch)
            method.train()
            sums: dict[str, float] = {}
            n_steps = 0
            loader = _loader(data.train, config, epoch, tc.seed, device, drop_last=True)
            bar = tqdm(loader, total=len(loader), desc=f"{method.name} epoch {epoch + 1}/{tc.max_epochs}",
                       disable=not tc.progress, leave=False, dynamic_ncols=True)
            for batch in bar:
                if config.optim.lr_schedule != "constant":
                    _set_learning_rates(method, lr_factor(config.optim.lr_schedule, global_step / total_steps,
                                                          config.optim.lr_decay_start))
                losses = method.training_step(batch)
                global_step += 1
                bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
                if bad:
                    kept = f"last good checkpoint kept: {last_path}" if last_path.exists() else "no checkpoint yet"
                    raise TrainingDiverged(
                        f"non-finite loss {', '.join(f'{k}={v}' for k, v in bad.items())} at epoch {epoch + 1}, "
                        f"step {global_step}; training stopped ({kept}); try a lower learning rate or "
                        "training.precision=fp32"
                    )
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + v
                n_steps += 1
                if step_callback is not None:
                    step_callback(global_step, losses)
                if global_step % tc.log_every == 0:
                    tb.scalars("train", losses, global_step)
                if tc.progress:
                    bar.set_postfix({k: f"{sums[k] / n_steps:.3f}" for k in list(sums)[:6]}, refresh=False)
            bar.close()

            val_loader = _loader(data.val, config, 0, tc.seed, device, drop_last=False)
            if tc.validation == "volumes":
                val = _validate_volumes(method, data.val_cache, config, device)
                first_val = next(iter(val_loader), None) if tc.image_grid else None
            else:
                val, first_val = _validate(method, val_loader)
            if not math.isfinite(val["val_loss"]):
                raise TrainingDiverged(f"non-finite validation loss at epoch {epoch + 1}; last good checkpoint "
                                       f"kept: {last_path}")
            epoch += 1
            improved = val["val_loss"] < best["val_loss"] - tc.min_delta
            if improved:
                best.update(epoch=epoch, val_loss=val["val_loss"], val_dice=val["val_dice"], epochs_since_best=0)
            else:
                best["epochs_since_best"] += 1
            stopped_early = best["epochs_since_best"] >= tc.patience
            row: dict[str, Any] = {"epoch": epoch, "step": global_step}
            row.update({f"train_{k}": v / max(n_steps, 1) for k, v in sums.items()})
            row.update(val)
            row["best"] = int(improved)
            row["time_s"] = round(time.perf_counter() - t_epoch, 3)
            history.append(row)

            if tc.image_grid and first_val is not None:
                png = save_image_grid(out_dir / "images" / f"epoch_{epoch:03d}.png", method.visuals(first_val),
                                      title=f"{method.name} epoch {epoch}: val Dice {val['val_dice']:.3f}")
                tb.image("val/grid", png, global_step)
            tb.scalars("epoch", {k: v for k, v in row.items() if k not in ("epoch", "step")}, global_step)

            payload = {
                "method": method.name, "config": config.to_dict(), "preprocess": preprocess,
                **method.state_dict(), "epoch": epoch, "global_step": global_step,
                "metrics": dict(val), "best": dict(best), "history": history, "rng": capture_rng_state(),
            }
            # best before last: a crash in between never leaves a last.pt whose "best" names weights
            # that best.pt does not hold
            if improved:
                save_checkpoint(best_path, payload)
            save_checkpoint(last_path, payload)
            write_history_csv(out_dir / "log.csv", history)
            if tc.progress:
                tqdm.write(
                    f"{method.name} epoch {epoch}: " + " ".join(f"{k}={row[k]:.4f}" for k in row
                                                                if k.startswith(("train_loss", "val_")))
                    + f" ({row['time_s']:.1f} s){' *' if improved else ''}"
                )
    finally:
        tb.close()

    if not best_path.exists():  # e.g. resumed a finished run whose best.pt was deleted
        raise InputError("no best checkpoint was written", out_dir)
    return TrainResult(
        out_dir=out_dir, best_checkpoint=best_path, last_checkpoint=last_path, best_epoch=int(best["epoch"]),
        best_val_loss=float(best["val_loss"]), best_val_dice=float(best["val_dice"]), epochs=epoch,
        stopped_early=stopped_early, seconds=time.perf_counter() - t_start, history=history,
    )


__all__ = ["TrainResult", "TrainingDiverged", "build_data", "resolve_device", "seed_everything", "train"]
