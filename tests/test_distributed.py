"""Data-parallel training (``torchrun``; :mod:`cmedl.training.distributed`) on CPU with gloo.

One spawn of 2 processes (each joins through the torchrun environment variables, as under torchrun)
runs, one after another: ct-only and cmedl with per-rank batch B/2, a ct-only run that rank 0 breaks off
mid-epoch (rank 1 must not hang), and its resumption. The parent process trains the same configs in one
process at batch B and compares the weights: equal up to float rounding (batch norm over the global
batch with ``training.sync_batchnorm``, segmentation losses pooled over the global batch). The slow test
kills a real ``torchrun ... -m cmedl train`` with SIGKILL and resumes it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml

from cmedl.methods import load_config
from cmedl.training import train
from cmedl.training.distributed import rank_batches

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = [
    "model.seg_base_width=4", "cyclegan.gen_base_width=4", "cyclegan.gen_n_blocks=1", "cyclegan.disc_base_width=4",
    "cyclegan.disc_n_layers=2", "data.patch_size=32", "data.val_samples=4", "cyclegan.contextual_layers=[conv1_2]",
    "cyclegan.contextual_max_positions=4096",  # exact contextual loss: no random positions (global RNG per rank)
    "cyclegan.contextual_max_images=4",  # every image: the cap applies per process (cpu-demo: first 2 of each)
    "training.device=cpu", "training.precision=fp32", "training.progress=false", "augmentation.elastic_prob=0.0",
    "training.image_grid=false", "training.validation=patches", "training.batch_size=4",
    "training.sync_batchnorm=true",
    "model.dropout=0.0",  # each rank draws its own dropout masks (reseed_rank): no 1-process equivalent
    # the window the movement-vs-difference check was calibrated with; cpu-demo's soft-tissue window
    # gives smaller first steps on this tiny phantom (max move 0.0019 vs a 2-process difference of 7e-5)
    "preprocessing.student.window=[-1000,500]",
]
#: the equivalence runs: 2 steps at global batch 4 (B/2 = 2 per rank)
RUNS = {
    "ct-only": ["training.method=ct-only", "data.samples_per_epoch=8", "training.max_epochs=1"],
    "cmedl": ["training.method=cmedl", "data.samples_per_epoch=8", "training.max_epochs=1"],
}
#: the interrupted and resumed run: 2 epochs of 2 steps
STOP = ["training.method=ct-only", "data.samples_per_epoch=8", "training.max_epochs=2"]
#: the equivalence tolerance on any weight (fp32 summation order of 2 x B/2 vs B, over 2-4 Adam steps)
TOL = 1e-4
#: Adam's eps in the equivalence runs. With the default 1e-8, Adam turns rounding-level gradients into
#: steps of +-lr: the biases of convolutions followed by batch norm have a true gradient of 0 and got
#: |g| ~ 1e-9 of rounding noise that differs between 1 x B and 2 x B/2 (all other gradients agreed to
#: < 1e-3 relative), so after one step at lr 0.01 those biases differed by up to 0.016. eps = 1e-3
#: keeps such noise at ~1e-6 lr while gradients above 1e-3 still take Adam's normalised steps.
ADAM_EPS = 1e-3
#: the max weight difference between two ONE-process runs of ``STOP`` (4 steps) that differ only in
#: memory layout (``training.channels_last`` auto vs false), measured 2.1e-4: rounding differences
#: grow quickly in these tiny batch-norm networks, so a run resumed with another world size is held
#: to that scale, not to :data:`TOL` (after 2 steps the same comparison gives 2.5e-6)
LAYOUT_FLOOR_4_STEPS = 2.2e-4


def _conditioned_adam(method_cls: type) -> object:
    """``Method.adam`` with eps :data:`ADAM_EPS` (test only)."""
    original = method_cls.adam

    def adam(self, params, lr, betas):  # noqa: ANN001, ANN202 - same signature as Method.adam
        opt = original(self, params, lr, betas)
        for group in opt.param_groups:
            group["eps"] = ADAM_EPS
        return opt

    return adam


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Stop(RuntimeError):
    pass


def _worker(rank: int, world: int, phantom: str, jobs: list[tuple[list[str], str, bool, int, int, str]]) -> None:
    """One rank: the torchrun environment, then every job ``(overrides, out, resume, stop_at, port, copy_to)``
    (``stop_at``: rank 0 raises after that step; ``copy_to``: rank 0 copies the run folder there after)."""
    from cmedl.methods.base import Method

    Method.adam = _conditioned_adam(Method)
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    for overrides, out, resume, stop_at, port, copy_to in jobs:
        os.environ["MASTER_PORT"] = str(port)
        cfg = load_config("cpu-demo", [*TINY, *overrides])

        def stop(step: int, losses: dict[str, float], at: int = stop_at) -> None:
            if rank == 0 and step == at:
                raise _Stop(f"rank 0 stopped at step {step}")

        try:
            train(cfg, phantom, out_dir=out, resume=resume, step_callback=stop if stop_at else None)
        except Exception as exc:  # noqa: BLE001 - the interrupted job: every rank must come back
            if not stop_at:
                raise
            Path(out, f"stopped_rank{rank}.txt").write_text(f"{type(exc).__name__}: {exc}")
        if copy_to and rank == 0:
            shutil.copytree(out, copy_to)


def _spawn(world: int, phantom: Path, jobs: list, timeout: float = 600.0) -> None:
    ctx = mp.start_processes(_worker, args=(world, str(phantom), jobs), nprocs=world, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the {world}-process run did not finish within {timeout:.0f} s (a rank hangs)")


def _weights(path: Path) -> dict[str, torch.Tensor]:
    ck = torch.load(path, weights_only=True)
    return {f"{n}.{k}": v for n, sd in ck["networks"].items() for k, v in sd.items() if v.is_floating_point()}


def _initial_weights(method: str) -> dict[str, torch.Tensor]:
    """The weights a run starts from (networks built from the seed, as the trainer does)."""
    from cmedl.methods import build_method
    from cmedl.training.resume import seed_everything

    cfg = load_config("cpu-demo", [*TINY, *RUNS[method]])
    seed_everything(cfg.training.seed)
    m = build_method(cfg, "cpu")
    return {f"{n}.{k}": v for n, net in m.networks.items() for k, v in net.state_dict().items()
            if v.is_floating_point()}


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cmedl.data.phantom import generate_cohort

    return generate_cohort(tmp_path_factory.mktemp("phantom"), n_ct=5, n_cbct=0, n_mr=3, seed=0,
                           shape=(12, 48, 48), workers=1)


def test_rank_batches_split_every_global_batch() -> None:
    # rank r of W takes items [s*B + r*B/W, s*B + (r+1)*B/W) of step s: together the one-process batches
    assert rank_batches(10, 4, 2, 0) == [[0, 1], [4, 5]]
    assert rank_batches(10, 4, 2, 1) == [[2, 3], [6, 7]]
    assert rank_batches(12, 6, 3, 2) == [[4, 5], [10, 11]]
    # validation (no drop_last): whole batches round-robin, the short last one included
    assert rank_batches(10, 4, 2, 0, drop_last=False) == [[0, 1, 2, 3], [8, 9]]
    assert rank_batches(10, 4, 2, 1, drop_last=False) == [[4, 5, 6, 7]]


def test_two_processes_match_one_process_and_resume(phantom: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from cmedl.methods.base import Method

    monkeypatch.setattr(Method, "adam", _conditioned_adam(Method))
    manifest = phantom  # generate_cohort returns the manifest path
    two, stopped, stop = tmp_path / "two", tmp_path / "two" / "stopped", STOP
    jobs = [
        (RUNS["ct-only"], str(two / "ct-only"), False, 0, _free_port(), ""),
        (RUNS["cmedl"], str(two / "cmedl"), False, 0, _free_port(), ""),
        (stop, str(two / "full"), False, 0, _free_port(), ""),  # uninterrupted
        # rank 0 breaks off in epoch 2; the run folder as it was then is copied; the run is resumed
        (stop, str(stopped), False, 3, _free_port(), str(tmp_path / "stopped_w1")),
        (stop, str(stopped), True, 0, _free_port(), ""),
    ]
    t0 = time.perf_counter()
    _spawn(2, manifest, jobs)
    t_spawn = time.perf_counter() - t0
    # the interrupted run: both ranks came back (rank 1 did not hang), epoch 1's checkpoint stayed
    assert (stopped / "stopped_rank0.txt").read_text().startswith("_Stop")
    assert (stopped / "stopped_rank1.txt").exists()
    assert torch.load(tmp_path / "stopped_w1" / "last.pt", weights_only=True)["epoch"] == 1

    t0 = time.perf_counter()
    for name, overrides in RUNS.items():  # the same runs in one process, batch B
        train(load_config("cpu-demo", [*TINY, *overrides]), manifest, out_dir=tmp_path / "one" / name)
    t_one = time.perf_counter() - t0
    ref = {n: _weights(tmp_path / "one" / n / "last.pt") for n in RUNS}
    diffs = {n: _max_diff(ref[n], _weights(two / n / "last.pt")) for n in RUNS}
    params = {n: {k: v for k, v in ref[n].items() if ".running_" not in k} for n in RUNS}  # not BN statistics
    moved = {n: _max_diff(params[n], {k: v for k, v in _initial_weights(n).items() if k in params[n]}) for n in RUNS}
    print(f"\nmax |w_2proc - w_1proc| after 2 steps: {diffs}; the steps moved the weights by up to {moved}; "
          f"2-process spawn {t_spawn:.1f} s, 1-process runs {t_one:.1f} s")
    for n in RUNS:
        assert diffs[n] < TOL, (n, diffs[n])
        assert diffs[n] < moved[n] / 100, (n, moved[n])  # the steps moved the weights far more than that

    # the logs hold the global batch's losses: the same as the one-process run's up to rounding
    one_ck = torch.load(tmp_path / "one" / "cmedl" / "last.pt", weights_only=True)
    two_ck = torch.load(two / "cmedl" / "last.pt", weights_only=True)
    for key in ("train_loss_g", "train_loss_s", "train_loss_d", "train_seg_ct", "val_loss"):
        assert two_ck["history"][0][key] == pytest.approx(one_ck["history"][0][key], rel=1e-4, abs=1e-6), key
    assert two_ck["world_size"] == 2 and two_ck["history"][0]["world_size"] == 2 and len(two_ck["method_state_ranks"]) == 2
    assert (two / "cmedl" / "config.yaml").read_text().startswith("# data-parallel run: world size 2")
    assert yaml.safe_load((two / "cmedl" / "config.yaml").read_text())["training"]["batch_size"] == 4

    # resumed with the same world size: exactly the uninterrupted 2-process run
    resumed, full = torch.load(stopped / "last.pt", weights_only=True), _weights(two / "full" / "last.pt")
    assert resumed["epoch"] == 2 and _max_diff(_weights(stopped / "last.pt"), full) == 0.0
    assert [r["epoch"] for r in resumed["history"]] == [1, 2]
    # resumed with another world size (1 process, batch B): the same run up to rounding here
    train(load_config("cpu-demo", [*TINY, *stop]), manifest, out_dir=tmp_path / "stopped_w1", resume=True)
    w1 = torch.load(tmp_path / "stopped_w1" / "last.pt", weights_only=True)
    assert [r.get("world_size") for r in w1["history"]] == [2, 1] and w1["epoch"] == 2
    w1_diff = _max_diff(_weights(tmp_path / "stopped_w1" / "last.pt"), full)
    print(f"resumed in 1 process instead of 2: max weight difference {w1_diff:.3g}")
    assert w1_diff < 10 * LAYOUT_FLOOR_4_STEPS


@pytest.mark.slow
def test_torchrun_killed_and_resumed(phantom: Path, tmp_path: Path) -> None:
    """``torchrun --nproc_per_node 2 -m cmedl train``, SIGKILLed after epoch 1's checkpoint, resumed with
    ``--resume``: the same weights as the uninterrupted torchrun run."""
    sets = [*TINY, "training.method=ct-only", "data.samples_per_epoch=16", "training.max_epochs=3"]

    def cmd(out: Path, resume: bool) -> list[str]:
        args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                str(_free_port()), "-m", "cmedl", "train", "--data", str(phantom), "--out",
                str(out), "--config", "cpu-demo", "--quiet"]
        for s in sets:
            args += ["--set", s]
        return args + (["--resume"] if resume else [])

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd(tmp_path / "full", False), check=True, env=env, timeout=900, capture_output=True)
    proc = subprocess.Popen(cmd(tmp_path / "killed", False), env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not (tmp_path / "killed" / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks, mid-epoch 2
    proc.wait()
    assert torch.load(tmp_path / "killed" / "last.pt", weights_only=True)["epoch"] < 3
    subprocess.run(cmd(tmp_path / "killed", True), check=True, env=env, timeout=900, capture_output=True)
    assert _max_diff(_weights(tmp_path / "killed" / "last.pt"), _weights(tmp_path / "full" / "last.pt")) == 0.0
    assert "world size 2" in (tmp_path / "full" / "config.yaml").read_text()
