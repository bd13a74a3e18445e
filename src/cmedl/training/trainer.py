"""The training loop shared by all methods: :func:`train`.

One epoch = ``config.iterations_per_epoch`` optimisation steps on freshly drawn samples of the
method's batch kind (:mod:`cmedl.training.data`). After every epoch the student is validated
(:mod:`cmedl.training.validation`); ``val_loss`` is the early-stopping criterion and selects ``best.pt``.

Outputs in ``out_dir``::

    config.yaml          the full configuration (common sections + the method's sections)
    last.pt, best.pt     checkpoints (atomic writes; best = lowest val_loss)
    log.csv              one row per epoch (train loss means, val_loss, val_dice, time)
    tb/                  TensorBoard events (train/* every log_every steps, epoch/* per epoch)
    images/epoch_NNN.png image grid of validation patches (CT, pMRI, rec. CT, expert, predicted)

The run folder is checked before any work (:func:`cmedl.io.outputs.check_output_folder`: not a file,
not under a file, writable, no output file that is an input manifest); a write that fails later
(disk full) is one :class:`~cmedl.errors.InputError` line naming the file, and the checkpoints
already written stay.

``resume=True`` reloads ``last.pt`` and continues with exactly the steps an uninterrupted run
would take (:mod:`cmedl.training.resume`). A non-finite loss stops the run with
:class:`TrainingDiverged`; the last good checkpoints stay.

Started by ``torchrun`` (``WORLD_SIZE`` > 1), the run is data-parallel over the processes
(:mod:`cmedl.training.distributed`): each rank trains on its share of every global batch, gradients are
averaged before every optimiser step, validation is sharded, and rank 0 alone writes the outputs.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

import cmedl.training.distributed as ddp
from cmedl.config import TrainConfig, save_config
from cmedl.data.manifest import Manifest
from cmedl.devices import keep_freed_host_memory, resolve_device
from cmedl.errors import CmedlError, ConfigError, InputError
from cmedl.io.outputs import check_output_folder, writing
from cmedl.methods import build_method
from cmedl.methods.base import Method
from cmedl.training.checkpoint import capture_rng_state, save_checkpoint
from cmedl.training.data import TrainingData, build_training_data
from cmedl.training.loaders import make_loader
from cmedl.training.logging import TensorBoardLogger, save_image_grid, write_history_csv
from cmedl.training.resume import RunState, load_resume_checkpoint, restore_run, seed_everything
from cmedl.training.schedule import apply_lr_schedule
from cmedl.training.validation import validate_patches, validate_volumes

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


@dataclass
class _Run:
    """What one epoch needs besides the config: the method, its data, where it writes."""

    config: TrainConfig
    method: Method
    data: TrainingData
    device: Any
    out_dir: Path
    state: RunState
    tb: TensorBoardLogger
    total_steps: int
    step_callback: Callable[[int, dict[str, float]], None] | None
    world: int = 1  #: processes of a data-parallel run (torchrun)
    rank: int = 0
    owns_group: bool = False  #: this run joined the process group (and leaves it at the end)

    @property
    def last_path(self) -> Path:
        return self.out_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.out_dir / "best.pt"


# ------------------------------------------------------------------------------ one epoch
def _check_finite(losses: dict[str, float], run: _Run, epoch: int) -> None:
    bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
    if bad:
        kept = f"last good checkpoint kept: {run.last_path}" if run.last_path.exists() else "no checkpoint yet"
        raise TrainingDiverged(
            f"non-finite loss {', '.join(f'{k}={v}' for k, v in bad.items())} at epoch {epoch + 1}, "
            f"step {run.state.global_step}; training stopped ({kept}); try a lower learning rate or "
            "training.precision=fp32"
        )


def _train_epoch(run: _Run, epoch: int) -> tuple[dict[str, float], int]:
    """The optimisation steps of one epoch; returns the summed losses and the number of steps."""
    tc, method = run.config.training, run.method
    run.data.train.set_epoch(epoch)
    method.train()
    if run.world > 1:  # dropout, sampled positions ...: per rank, reproducible on resume
        ddp.reseed_rank(tc.seed, epoch, run.rank)
    sums: dict[str, float] = {}
    n_steps = 0
    loader = make_loader(run.data.train, run.config, epoch, run.device, drop_last=True, world=run.world,
                         rank=run.rank)
    bar = tqdm(loader, total=len(loader), desc=f"{method.name} epoch {epoch + 1}/{tc.max_epochs}",
               disable=not (tc.progress and run.rank == 0), leave=False, dynamic_ncols=True)
    for batch in bar:
        apply_lr_schedule(method, run.config.optim, run.state.global_step / run.total_steps)
        losses = ddp.mean_over_ranks(method.training_step(batch))  # every rank: the global batch's losses
        run.state.global_step += 1
        _check_finite(losses, run, epoch)
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v
        n_steps += 1
        if run.step_callback is not None:
            run.step_callback(run.state.global_step, losses)
        if run.state.global_step % tc.log_every == 0:
            run.tb.scalars("train", losses, run.state.global_step)
        if tc.progress and run.rank == 0:
            bar.set_postfix({k: f"{sums[k] / n_steps:.3f}" for k in list(sums)[:6]}, refresh=False)
    bar.close()
    if run.world > 1:  # batch-norm running statistics: rank 0's (as DDP's buffer broadcast) for validation
        ddp.broadcast_networks(method, buffers_only=True)
    return sums, n_steps


def _validate(run: _Run, epoch: int) -> tuple[dict[str, float], dict[str, Any] | None]:
    tc = run.config.training
    val_loader = make_loader(run.data.val, run.config, 0, run.device, drop_last=False, world=run.world,
                             rank=run.rank)
    if tc.validation == "volumes":
        val = validate_volumes(run.method, run.data.val_cache, run.device)
        first_val = next(iter(val_loader), None) if tc.image_grid and run.rank == 0 else None
    else:
        val, first_val = validate_patches(run.method, val_loader)
    if not math.isfinite(val["val_loss"]):
        raise TrainingDiverged(f"non-finite validation loss at epoch {epoch + 1}; last good checkpoint "
                               f"kept: {run.last_path}")
    return val, first_val


def _finish_epoch(run: _Run, epoch: int, sums: dict[str, float], n_steps: int, val: dict[str, float],
                  first_val: dict[str, Any] | None, seconds: float) -> None:
    """Early-stopping bookkeeping, logs, image grid and checkpoints after epoch ``epoch`` (1-based)."""
    tc, state = run.config.training, run.state
    improved = state.record(epoch, val, tc.min_delta)
    row: dict[str, Any] = {"epoch": epoch, "step": state.global_step}
    row.update({f"train_{k}": v / max(n_steps, 1) for k, v in sums.items()})
    row.update(val)
    row["best"] = int(improved)
    row["time_s"] = round(seconds, 3)
    if run.world > 1 or any("world_size" in r for r in state.history):
        row["world_size"] = run.world
    state.history.append(row)
    # each rank's method extras (image pools), for an exact resume with the same world size (a collective)
    ranks_extra = ddp.gather_to_main(run.method.extra_state()) if run.world > 1 else None
    ddp.main_only(lambda: _write_epoch(run, epoch, row, val, improved, first_val, ranks_extra))


def _payload(run: _Run, epoch: int, val: dict[str, float], ranks_extra: list[Any] | None) -> dict[str, Any]:
    method, state = run.method, run.state
    preprocess = {"student": run.data.student_pp.to_dict(), "mr": run.data.mr_pp.to_dict() if run.data.mr_pp else None}
    # hook: a method's own preprocessing beside student/mr (teacher-student methods: {"ts": ...})
    preprocess.update(getattr(method, "checkpoint_preprocess", dict)())
    payload = {
        "method": method.name, "config": run.config.to_dict(), "preprocess": preprocess,
        **method.state_dict(), "epoch": epoch, "global_step": state.global_step,
        "metrics": dict(val), "best": dict(state.best), "history": state.history, "rng": capture_rng_state(),
        "world_size": run.world,
    }
    if ranks_extra is not None:
        payload["method_state_ranks"] = ranks_extra
    return payload


def _write_epoch(run: _Run, epoch: int, row: dict[str, Any], val: dict[str, float], improved: bool,
                 first_val: dict[str, Any] | None, ranks_extra: list[Any] | None) -> None:
    """Rank 0's writes after an epoch: image grid, TensorBoard, checkpoints, log.csv."""
    tc, state, method = run.config.training, run.state, run.method
    if tc.image_grid and first_val is not None:
        png = run.out_dir / "images" / f"epoch_{epoch:03d}.png"
        visuals = method.visuals(first_val)
        with writing(png):
            save_image_grid(png, visuals, title=f"{method.name} epoch {epoch}: val Dice {val['val_dice']:.3f}")
        run.tb.image("val/grid", png, state.global_step)
    run.tb.scalars("epoch", {k: v for k, v in row.items() if k not in ("epoch", "step", "world_size")},
                   state.global_step)
    payload = _payload(run, epoch, val, ranks_extra)
    # best before last: a crash in between never leaves a last.pt whose "best" names weights that best.pt lacks
    if improved:
        with writing(run.best_path):
            save_checkpoint(run.best_path, payload)
    with writing(run.last_path):
        save_checkpoint(run.last_path, payload)
    with writing(run.out_dir / "log.csv"):
        write_history_csv(run.out_dir / "log.csv", state.history)
    if tc.progress:
        tqdm.write(f"{method.name} epoch {epoch}: "
                   + " ".join(f"{k}={row[k]:.4f}" for k in row if k.startswith(("train_loss", "val_")))
                   + f" ({row['time_s']:.1f} s){' *' if improved else ''}")


# ------------------------------------------------------------------------------ train
def _start(config: TrainConfig, data_manifest: Manifest | str | Path, mr_manifest: Manifest | str | Path | None,
           out_dir: Path, resume: bool, step_callback: Callable[[int, dict[str, float]], None] | None) -> _Run:
    """Check the run folder, build method and data, restore a resumed run; nothing is written before."""
    manifests = [m for m in (data_manifest, mr_manifest) if isinstance(m, (str, Path))]
    check_output_folder(out_dir, inputs=[*manifests, *(Path(m) / "manifest.json" for m in manifests)],
                        planned=[out_dir / n for n in ("config.yaml", "last.pt", "best.pt", "log.csv")])
    if not resume and (out_dir / "last.pt").exists():
        raise InputError("already holds a training run (last.pt); use --resume or another --out", out_dir)
    ckpt = load_resume_checkpoint(out_dir / "last.pt", config) if resume else None
    tc = config.training
    ddp_device, owned = ddp.init_from_env(tc.device)  # torchrun: join the other processes
    try:
        return _build_run(config, data_manifest, mr_manifest, out_dir, resume, step_callback, ckpt, ddp_device, owned)
    except BaseException:
        ddp.shutdown(owned)
        raise


def _build_run(config: TrainConfig, data_manifest: Manifest | str | Path, mr_manifest: Manifest | str | Path | None,
               out_dir: Path, resume: bool, step_callback: Callable[[int, dict[str, float]], None] | None,
               ckpt: dict[str, Any] | None, ddp_device: Any, owned: bool) -> _Run:
    tc = config.training
    world, rank = ddp.world_size(), ddp.rank()
    ddp.check_world(tc.batch_size, world)
    device = ddp_device if ddp_device is not None else resolve_device(tc.device)
    if device.type == "cpu":
        keep_freed_host_memory()  # ~10 % faster CPU steps (no page faults on every step's buffers)
    seed_everything(tc.seed)
    method = build_method(config, device)
    if world > 1 and tc.sync_batchnorm:
        for net in method.networks.values():
            ddp.convert_sync_batchnorm(net, device)
    if tc.precision == "auto":
        logger.info("training.precision auto: %s on %s", method.precision, device)
    data = build_training_data(config, method.batch_kind, data_manifest, mr_manifest, tc.progress)
    if len(data.train) < tc.batch_size:
        raise ConfigError(f"data.samples_per_epoch ({len(data.train)}) is smaller than the batch size")
    state = restore_run(method, ckpt, world, rank)
    ddp.broadcast_networks(method)  # the same weights on every rank (they are already: same seed or checkpoint)
    total_steps = tc.max_epochs * (len(data.train) // tc.batch_size)
    if world > 1:
        logger.info("data-parallel run: world size %d (%s), rank %d on %s; global batch %d, %d per process",
                    world, ddp.backend(), rank, device, tc.batch_size, tc.batch_size // world)

    def write_config() -> None:
        with writing(out_dir / "config.yaml"):
            out_dir.mkdir(parents=True, exist_ok=True)
            save_config(config, out_dir / "config.yaml", world_size=world)

    ddp.main_only(write_config)
    tb = TensorBoardLogger(out_dir / "tb", purge_step=state.global_step if resume else None, enabled=rank == 0)
    return _Run(config, method, data, device, out_dir, state, tb, total_steps, step_callback, world, rank, owned)


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
            for methods that need MRI, possibly the MRI cases too (from other patients).
        mr_manifest: a separate manifest of MRI cases (its ``train`` split, or all cases if unsplit).
        out_dir: run folder. Without ``resume`` it must not already hold a run.
        resume: continue the run in ``out_dir`` from ``last.pt``.
        step_callback: called as ``step_callback(global_step, losses)`` after every step (tests, demo).

    Raises:
        InputError: bad manifests, MRI of the same patients, an existing run without ``resume``, a run
            folder that is a file or cannot be written, a failed write (disk full) naming the file.
        ConfigError: invalid settings, or a resumed run whose settings differ.
        TrainingDiverged: a non-finite loss (the last good checkpoint is kept).
    """
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    run = _start(config, data_manifest, mr_manifest, out_dir, resume, step_callback)
    tc, state = config.training, run.state
    epoch = state.epoch
    try:
        with ddp.gradient_sync(run.method):  # data-parallel: gradients averaged before every optimiser step
            while epoch < tc.max_epochs and not state.stopped(tc.patience):
                t_epoch = time.perf_counter()
                sums, n_steps = _train_epoch(run, epoch)
                val, first_val = _validate(run, epoch)
                epoch += 1
                _finish_epoch(run, epoch, sums, n_steps, val, first_val, time.perf_counter() - t_epoch)
    finally:
        run.tb.close()
        ddp.shutdown(run.owns_group)
    if run.rank == 0 and not run.best_path.exists():  # e.g. resumed a finished run whose best.pt was deleted
        raise InputError("no best checkpoint was written", out_dir)
    best = state.best
    return TrainResult(
        out_dir=out_dir, best_checkpoint=run.best_path, last_checkpoint=run.last_path, best_epoch=int(best["epoch"]),
        best_val_loss=float(best["val_loss"]), best_val_dice=float(best["val_dice"]), epochs=epoch,
        stopped_early=state.stopped(tc.patience), seconds=time.perf_counter() - t_start, history=state.history,
    )


__all__ = ["TrainResult", "TrainingDiverged", "train"]
