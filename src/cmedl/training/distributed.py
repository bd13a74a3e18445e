"""Data-parallel training over processes: ``torchrun --nproc_per_node N -m cmedl train ...``.

torchrun starts N processes with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` set; :func:`init_from_env` joins them (NCCL on CUDA, gloo on CPU) and gives each its
device (``cuda:LOCAL_RANK``; pick the GPUs with ``CUDA_VISIBLE_DEVICES``). ``training.batch_size`` stays
the GLOBAL batch B; each of the W ranks trains on B/W samples per step. What the trainer does with W > 1:

- **data**: rank r takes items ``[s*B + r*B/W, s*B + (r+1)*B/W)`` of step s (:func:`rank_batches`),
  i.e. exactly the items a one-process run at batch B puts in its batch; items are drawn from
  (seed, epoch, index), so a run is reproducible for a given world size;
- **gradients**: before EVERY optimiser step (CMEDL's G, S and D steps alike) the gradients of that
  optimiser's parameters are averaged over the ranks (:func:`gradient_sync`, one flat all-reduce per
  step), so all ranks take the same step and keep the same weights. Segmentation losses are pooled over
  the global batch (:meth:`cmedl.methods.base.Method.seg_loss`); ``training.sync_batchnorm`` normalises
  batch-norm layers over the global batch too (:func:`convert_sync_batchnorm`);
- **losses, validation**: step losses are averaged over ranks every step (identical logs, NaN checks
  and early-stopping decisions on every rank); validation cases are sharded and their sums all-reduced
  (every rank takes part in every collective);
- **outputs**: checkpoints, ``log.csv``, TensorBoard and image grids come from rank 0 only
  (:func:`main_only`: the other ranks wait, and a failed write stops every rank with its message);
- **randomness**: networks are built from the same seed on every rank (then broadcast from rank 0); the
  global RNGs are reseeded every epoch from (seed, epoch, rank) (dropout, sampled positions), and each
  rank's method extras (image pools) are saved in the checkpoint, so resuming with the same world size
  continues exactly.

Why not ``torch.nn.parallel.DistributedDataParallel``: its reducer assumes one backward pass per
forward that reaches every trainable parameter of the wrapped module. CMEDL shares one forward between
the G and S steps and runs two backward passes restricted with ``inputs=`` (the teacher/student get no
gradient in the first), freezes the discriminators by ``requires_grad`` in the G forward, calls the
teacher twice per step, and has data-dependent terms; DDP would need ``find_unused_parameters`` and
still hang or fail on such steps. Averaging each optimiser's gradients just before its step is what DDP
computes (an average of the per-rank gradients), for any method without per-method code; it only gives
up DDP's overlap of communication with the backward pass (one all-reduce of the gradients per step:
~50 MB for a paper-size U-Net, about a millisecond on NVLink).

Rule for methods: every rank must run the same collectives in the same order, i.e. the same
``seg_loss`` calls and (with SyncBatchNorm) the same train-mode forward passes; a data-dependent branch
decides on :func:`cmedl.methods.base.any_rank`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import random
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from cmedl.errors import CmedlError, ConfigError
from cmedl.methods.base import AllReduceSum, Method

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: how long a collective may wait for the other ranks (a rank that died is noticed by torchrun first)
TIMEOUT = timedelta(minutes=30)


class RankFailed(CmedlError, RuntimeError):
    """Another rank (rank 0, writing outputs) failed; its message follows."""


# ------------------------------------------------------------------------------ process group
def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True on rank 0 (and in a one-process run): the process that writes the run's outputs."""
    return rank() == 0


def backend() -> str:
    """``nccl``, ``gloo`` or ``none`` (one process)."""
    return str(dist.get_backend()) if world_size() > 1 else "none"


def _env_world() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def init_from_env(device_name: str) -> tuple[torch.device | None, bool]:
    """Join the process group torchrun describes in the environment (``WORLD_SIZE`` > 1).

    Returns ``(device, owned)``: the device of this rank (None: one process, use ``device_name``) and
    whether this call created the group (the trainer destroys it at the end then). A group that already
    exists (an outer launcher, tests) is used as it is.

    Raises:
        ConfigError: ``training.device`` names one GPU (``cuda:N``) under torchrun (each rank takes
            ``cuda:LOCAL_RANK``), or CUDA is asked for where there is none.
    """
    if world_size() == 1 and _env_world() <= 1:
        return None, False
    name = str(device_name).strip().lower()
    if name.startswith("cuda:"):
        raise ConfigError(f"training.device: '{name}' names one GPU, but under torchrun each process uses "
                          "cuda:LOCAL_RANK; use training.device=cuda (choose GPUs with CUDA_VISIBLE_DEVICES)")
    use_cuda = name == "cuda" or (name == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError("training.device: 'cuda' requested but CUDA is not available here; use cpu or auto")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    owned = False
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if use_cuda else "gloo", init_method="env://", timeout=TIMEOUT)
        owned = True
    return device, owned


def shutdown(owned: bool) -> None:
    """Leave the process group if :func:`init_from_env` created it."""
    if owned and dist.is_initialized():
        dist.destroy_process_group()


def _comm_device() -> torch.device:
    """Where collective tensors live: the rank's GPU for NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def main_only(fn: Callable[[], T]) -> T | None:
    """Run ``fn`` (a write) on rank 0 only; the other ranks wait for it. A failure on rank 0 is raised
    on every rank (rank 0: the original error; the others: :class:`RankFailed` with its message), so no
    rank is left waiting at a collective that rank 0 never reaches."""
    if world_size() == 1:
        return fn()
    result, error = None, None
    if is_main():
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - re-raised below, after telling the other ranks
            error = exc
    message = [None if error is None else (str(error) or type(error).__name__)]
    dist.broadcast_object_list(message, src=0)
    if error is not None:
        raise error
    if message[0] is not None:
        raise RankFailed(f"rank 0 failed: {message[0]}")
    return result


def all_reduce_sums(values: dict[str, float]) -> dict[str, float]:
    """Sum each value over the ranks (float64; the same keys on every rank); a no-op in one process."""
    if world_size() == 1:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist(), strict=True))


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """The mean of each value over the ranks (every rank gets the same numbers)."""
    w = world_size()
    if w == 1:
        return values
    return {k: v / w for k, v in all_reduce_sums(values).items()}


def gather_to_main(obj: Any) -> list[Any] | None:
    """``[obj of rank 0, obj of rank 1, ...]`` on rank 0 (tensors moved to the CPU first), None elsewhere."""
    obj = _to_cpu(obj)
    if world_size() == 1:
        return [obj]
    out: list[Any] | None = [None] * world_size() if is_main() else None
    if dist.get_backend() == "nccl":  # NCCL has no gather of objects: every rank receives them
        every: list[Any] = [None] * world_size()
        dist.all_gather_object(every, obj)
        return every if is_main() else None
    dist.gather_object(obj, out, dst=0)
    return out


def _to_cpu(obj: Any) -> Any:
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


# ------------------------------------------------------------------------------ data
def rank_batches(n_items: int, batch_size: int, world: int, rank_: int, drop_last: bool = True) -> list[list[int]]:
    """Rank ``rank_``'s share of every global batch: items ``[s*B + r*B/W, s*B + (r+1)*B/W)`` of step s.

    With ``drop_last=False`` (validation patches) whole global batches are dealt round-robin instead
    (batch k to rank k mod W), the last one possibly short."""
    if drop_last:
        per = batch_size // world
        return [list(range(s * batch_size + rank_ * per, s * batch_size + (rank_ + 1) * per))
                for s in range(n_items // batch_size)]
    starts = range(0, n_items, batch_size)
    return [list(range(a, min(a + batch_size, n_items))) for k, a in enumerate(starts) if k % world == rank_]


def check_world(batch_size: int, world: int) -> None:
    if batch_size % world:
        raise ConfigError(f"training.batch_size: {batch_size} (the global batch) is not a multiple of the "
                          f"{world} processes; use a multiple of {world}")


def reseed_rank(seed: int, epoch: int, rank_: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) from (seed, epoch, rank): the per-rank RNG of a
    distributed run, reproducible on resume without storing every rank's RNG state."""

    s = int(np.random.SeedSequence([seed, epoch, rank_, 0x5EED]).generate_state(1, np.uint64)[0] >> 1)
    random.seed(s)
    np.random.seed(s % (2**32))
    torch.manual_seed(s)


# ------------------------------------------------------------------------------ networks and gradients
def broadcast_networks(method: Method, buffers_only: bool = False) -> None:
    """Copy rank 0's parameters (unless ``buffers_only``) and buffers (batch-norm statistics) to every rank."""
    if world_size() == 1:
        return
    dev = _comm_device()
    with torch.no_grad():
        for net in method.networks.values():
            for t in (list(net.buffers()) if buffers_only else [*net.parameters(), *net.buffers()]):
                direct = t.is_contiguous() and t.device == dev
                tmp = t.detach() if direct else t.detach().contiguous().to(dev)
                dist.broadcast(tmp, src=0)
                if not direct:
                    t.copy_(tmp)


def average_gradients(opt: torch.optim.Optimizer) -> None:
    """Replace the gradient of every parameter of ``opt`` by its mean over the ranks (one all-reduce).

    A parameter without a gradient on a rank counts as zero there; one without a gradient on every
    rank keeps none (the optimiser skips it, as a one-process run over the global batch would)."""
    w = world_size()
    params = [p for g in opt.param_groups for p in g["params"]]
    if w == 1 or not params:
        return
    dev = _comm_device()
    flat = [(p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1).to(dev, torch.float32)
            for p in params]
    has = torch.tensor([float(p.grad is not None) for p in params], device=dev)
    buf = torch.cat([*flat, has])
    dist.all_reduce(buf)
    buf[:-len(params)].div_(w)
    offset = 0
    counts = buf[-len(params):].tolist()
    for p, n_has in zip(params, counts, strict=True):
        n = p.numel()
        if n_has > 0:
            mean = buf[offset:offset + n].view(p.shape).to(p.device, p.dtype)
            if p.grad is None:
                p.grad = torch.empty_like(p)
            p.grad.copy_(mean)  # copy_ keeps the gradient's memory layout (channels_last)
        offset += n


@contextlib.contextmanager
def gradient_sync(method: Method) -> Iterator[None]:
    """Inside the block, every ``step()`` of one of ``method.optimizers`` first averages its gradients over
    the ranks (a global optimiser pre-step hook: optimisers a method creates later are covered too)."""
    if world_size() == 1:
        yield
        return

    def hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if any(opt is o for o in method.optimizers.values()):
            average_gradients(opt)

    handle = register_optimizer_step_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


# ------------------------------------------------------------------------------ SyncBatchNorm
class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm over the global batch of all ranks, for CPU processes (gloo): torch's
    ``nn.SyncBatchNorm`` refuses CPU tensors. Mean and variance (two passes, as torch's kernel) come
    from differentiable all-reduces of the per-rank sums, so the gradients are those of batch norm over
    the global batch. In eval mode, or in one process, it is plain batch norm."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and world_size() > 1):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()
        local_n = torch.tensor([float(xf.numel() // xf.shape[1])], device=xf.device)
        first = AllReduceSum.apply(torch.cat([xf.sum(dims), local_n]))
        n = first[-1].detach()
        mean = first[:-1] / n
        centred = xf - mean.view(shape)
        var = AllReduceSum.apply((centred * centred).sum(dims)) / n
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1).clamp_min(1)), alpha=m)
        return y.to(x.dtype)


def convert_sync_batchnorm(net: nn.Module, device: torch.device) -> nn.Module:
    """Replace the batch-norm layers of ``net`` in place by synchronised ones (torch's ``SyncBatchNorm`` on
    CUDA, :class:`CPUSyncBatchNorm` on CPU), keeping their parameters (optimisers stay valid) and buffers."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(net)
    for name, child in list(net.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, CPUSyncBatchNorm):
            new = CPUSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats)
            if child.affine:
                new.weight, new.bias = child.weight, child.bias
            new.running_mean, new.running_var = child.running_mean, child.running_var
            new.num_batches_tracked = child.num_batches_tracked
            new.train(child.training)
            setattr(net, name, new)
        else:
            convert_sync_batchnorm(child, device)
    return net


def plain_batchnorm(net: nn.Module, dims: int) -> nn.Module:
    """A copy of ``net`` whose synchronised batch-norm layers are plain ``BatchNorm{dims}d`` again (for
    inference copies, which fold conv + batch norm into the conv); ``net`` itself when it has none."""

    sync = (nn.SyncBatchNorm, CPUSyncBatchNorm)
    if not any(isinstance(m, sync) for m in net.modules()):
        return net
    out = copy.deepcopy(net)
    cls = nn.BatchNorm3d if dims == 3 else nn.BatchNorm2d
    for module in list(out.modules()):
        for name, bn in list(module.named_children()):
            if isinstance(bn, sync):
                plain = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
                plain.load_state_dict(bn.state_dict())
                device = next(iter([*bn.buffers(), *bn.parameters()]), torch.empty(0)).device
                setattr(module, name, plain.to(device).train(bn.training))
    return out


__all__ = ["CPUSyncBatchNorm", "RankFailed", "all_reduce_sums", "average_gradients", "backend", "barrier",
           "broadcast_networks", "check_world", "convert_sync_batchnorm", "gather_to_main", "gradient_sync",
           "init_from_env", "is_main", "main_only", "mean_over_ranks", "plain_batchnorm", "rank", "rank_batches",
           "reseed_rank", "shutdown", "world_size"]
