"""Base class of training methods: a method owns its networks and optimisers.

A method is one module under ``cmedl/methods/`` with one :class:`Method` subclass, listed in
:mod:`cmedl.methods.registry`. The class declares (class attributes):

- ``name`` and a one-line ``description`` (``cmedl methods`` prints them);
- ``batch_kind``: the :class:`~cmedl.data.batches.BatchKind` it trains on (2D labelled slices,
  unpaired CT + MRI slices, 3D patches); its ``dims`` must match ``model.arch``;
- ``config_section``: the dataclass of its own config section (named like the method), or None,
  and :meth:`config_sections`, every section it reads (its own, its translator's);
- :meth:`build_networks`: its networks by checkpoint name (``student_ct``, ``teacher_mr``,
  ``g_ct2mr`` ...), built in a fixed order from the config (training and checkpoint loading both use it);
- ``recipe``: its :class:`~cmedl.methods.recipe.TestTimeRecipe` (which networks run at test time);
  ``translators``: direction (``ct2mr``/``mr2ct``) -> generator network, for ``cmedl translate``;
- :meth:`training_step` (one optimisation step on a batch of its kind, returns every loss term).

The trainer also uses ``validation_step``, ``visuals``, ``student`` (the network validated during
training) and ``state_dict()/load_state_dict()`` (networks, optimisers, method extras; tensors only).
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import nn

from cmedl.config import TrainConfig
from cmedl.data.batches import BatchKind
from cmedl.devices import resolve_precision
from cmedl.errors import ConfigError, InputError
from cmedl.losses import soft_dice_loss
from cmedl.methods.recipe import STUDENT, TestTimeRecipe
from cmedl.nets import build_segmentation_net
from cmedl.nets.registry import SEGMENTATION_NETS_2D, SEGMENTATION_NETS_3D, segmentation_net_class

#: segmentation threshold on the student's sigmoid probability
THRESHOLD = 0.5


def set_requires_grad(nets: Iterable[nn.Module], flag: bool) -> None:
    """Freeze (``False``) or unfreeze the parameters of ``nets``; activations still carry gradients."""
    for net in nets:
        for p in net.parameters():
            p.requires_grad_(flag)


def parameters_of(nets: Iterable[nn.Module]) -> list[nn.Parameter]:
    return [p for net in nets for p in net.parameters()]


def segmentation_net_dims(arch: str) -> int:
    """2 or 3: the dimensions of the registered segmentation network ``arch``."""
    return segmentation_net_class(arch).dims


def archs_of_dims(dims: int) -> tuple[str, ...]:
    """The registered segmentation networks of ``dims`` dimensions."""
    return SEGMENTATION_NETS_3D if dims == 3 else SEGMENTATION_NETS_2D


def build_segmenter(config: TrainConfig, hint_layers: str = "high", in_channels: int = 1) -> nn.Module:
    """The configured segmentation network (``model.arch``, width, dropout): every student and teacher."""
    m = config.model
    return build_segmentation_net(m.arch, in_channels=in_channels, out_channels=1, base_width=m.seg_base_width,
                                  hint_layers=hint_layers, dropout=m.dropout)


#: networks that ``training.channels_last: auto`` puts in channels_last on CPU: the segmentation nets,
#: 22-31 % faster that way in fp32 (forward + backward, batch 8 at 64 px, widths 16, 2-core CPU:
#: unet 66 -> 52 ms, densefcn57 218 -> 150 ms, mrrn 130 -> 97 ms). The CycleGAN networks are not
#: (their reflection padding and instance norm are slower in that layout).
AUTO_CHANNELS_LAST = ("student_ct", "teacher_mr", "seg_pmri", "seg_fused")


@contextlib.contextmanager
def batch_statistics_only(net: nn.Module) -> Iterator[None]:
    """Inside the block, the batch-norm layers of ``net`` (in training mode) normalise with the batch
    statistics but leave their running statistics and ``num_batches_tracked`` untouched: torch's
    batch norm does exactly that when ``track_running_stats`` is off (its running buffers are then
    not passed to the kernel). Used by CMEDL so that its teacher's running statistics (what runs at
    test time in ``pmri-cmedl``) come from pseudo-MRI only, not from the real MRI it also sees."""
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in bns:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in bns:
            m.track_running_stats = True


def _match_state_layouts(opt: torch.optim.Optimizer) -> None:
    """Give every per-parameter state tensor (Adam moments) its parameter's strides.

    A checkpoint written with another ``training.channels_last`` holds moments in the other layout;
    the fused Adam kernel walks parameter, gradient and moments as flat memory and would silently
    mix up elements (checked), while the for-loop implementation is layout-agnostic."""
    for p, st in opt.state.items():
        for key, v in st.items():
            if torch.is_tensor(v) and v.shape == p.shape and v.stride() != p.stride():
                st[key] = torch.empty_like(p, dtype=v.dtype).copy_(v)


# ------------------------------------------------------------------------------ data-parallel runs
def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def any_rank(flag: bool, device: torch.device) -> bool:
    """``flag`` on any process of a data-parallel run (``cmedl.training.distributed``); ``flag`` itself in
    one process. A data-dependent branch that runs a network or a loss decides on it, so that every rank
    makes the same collective calls (pooled losses, SyncBatchNorm)."""
    if _world() == 1:
        return flag
    t = torch.tensor([float(flag)], device=device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t)
    return bool(t.item() > 0)


class AllReduceSum(torch.autograd.Function):
    """Differentiable sum over the ranks: the backward pass sums the incoming gradients over the ranks too
    (each rank's share feeds every rank's loss). ``torch.distributed.nn.functional.all_reduce`` does the
    same but is deprecated (torch 2.13)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out


def global_soft_dice(logits: torch.Tensor, target: torch.Tensor, sample_mask: torch.Tensor | None,
                     pooled: bool, smooth: float = 1.0) -> torch.Tensor:
    """:func:`cmedl.losses.soft_dice_loss` over the GLOBAL batch of a data-parallel run (``batch``: one
    Dice of the sums pooled over every rank's labelled samples; else the mean over every rank's labelled
    samples), from differentiable all-reduces of the per-rank sums. Its value is the global loss on every
    rank; its gradient, once the trainer averages gradients over the W ranks, is the global loss's."""
    prob, tgt = torch.sigmoid(logits.float()).flatten(1), target.float().flatten(1)
    inter, denom = (prob * tgt).sum(1), prob.sum(1) + tgt.sum(1)
    w = torch.ones_like(inter) if sample_mask is None else sample_mask.reshape(-1).to(inter.device, inter.dtype)
    if pooled:
        s = AllReduceSum.apply(torch.stack([(w * inter).sum(), (w * denom).sum(), w.sum()]))
        return (1.0 - (2.0 * s[0] + smooth) / (s[1] + smooth)) * (s[2] > 0).to(s.dtype)
    per = 1.0 - (2.0 * inter + smooth) / (denom + smooth)
    s = AllReduceSum.apply(torch.stack([(w * per).sum(), w.sum()]))
    return s[0] / s[1].clamp_min(1.0)


class Method(abc.ABC):
    """A training method: :attr:`networks` come from :meth:`build_networks`; subclasses add their
    :attr:`optimizers` in ``__init__`` after calling ``super().__init__``."""

    name: ClassVar[str] = "method"
    description: ClassVar[str] = ""
    batch_kind: ClassVar[BatchKind] = BatchKind.LABELLED_SLICES
    #: dataclass of the method's own config section (``config.section(name)``), or None
    config_section: ClassVar[type | None] = None
    recipe: ClassVar[TestTimeRecipe] = STUDENT
    #: translation direction -> generator network (``cmedl translate``); empty: no translator
    translators: ClassVar[dict[str, str]] = {}
    #: other methods whose checkpoints this method's recipe can run (``pmri-cmedl``: ``cmedl``), see
    #: :func:`cmedl.methods.checkpoint_as.checkpoint_as_method`
    runs_checkpoints_of: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: TrainConfig, device: torch.device | str = "cpu") -> None:
        self.config = config
        self.device = torch.device(device)
        #: ``fp32`` or ``bf16``: ``training.precision`` with ``auto`` resolved for this device and dims
        self.precision = resolve_precision(config.training.precision, self.device, self.dims())
        self.networks: dict[str, nn.Module] = self.build_networks(config)
        self._finish_networks()
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.global_step = 0

    # ------------------------------------------------------------------ declarations
    @classmethod
    def dims(cls) -> int:
        """Spatial dimensions of the batches and networks (2 or 3)."""
        return cls.batch_kind.dims

    @classmethod
    def config_sections(cls, config: TrainConfig) -> tuple[str, ...]:
        """Names of the method/translator config sections this method reads with ``config``."""
        return (cls.name,) if cls.config_section is not None else ()

    @classmethod
    def check_config(cls, config: TrainConfig) -> None:
        """Raise ConfigError for settings this method cannot train with (called when a config is
        parsed for it). The base checks that ``model.arch`` has the method's dimensions."""
        arch = config.model.arch
        net_dims = segmentation_net_dims(arch)
        if net_dims != cls.dims():
            raise ConfigError(
                f"model.arch: '{arch}' is a {net_dims}D network but method '{cls.name}' trains "
                f"{cls.dims()}D networks (choices: {', '.join(archs_of_dims(cls.dims()))}; e.g. "
                f"--set model.arch={archs_of_dims(cls.dims())[0]})"
            )

    @classmethod
    def check_reused_checkpoint(cls, ckpt: dict[str, Any], source: Any = None) -> None:
        """Called when a checkpoint of one of :attr:`runs_checkpoints_of` is run with this method's
        recipe: raise InputError if it cannot be, log a warning if it can with a caveat."""

    @classmethod
    @abc.abstractmethod
    def build_networks(cls, config: TrainConfig, names: Sequence[str] | None = None) -> dict[str, nn.Module]:
        """The method's networks by checkpoint name, initialised from the current torch seed in a fixed
        order; ``names`` limits them to those (checkpoint loading needs only the test-time ones)."""

    @classmethod
    def section_of(cls, config: TrainConfig) -> Any:
        """The method's own config section."""
        return config.section(cls.name)

    # ------------------------------------------------------------------ helpers
    @property
    def student(self) -> nn.Module:
        """The CT/CBCT segmentation network validated after every epoch (at test time the method's
        :attr:`recipe` says what runs; for most methods, this network alone)."""
        return self.networks["student_ct"]

    @property
    def memory_format(self) -> torch.memory_format:
        """Layout of the input batches (and of every network with ``training.channels_last: true``)."""
        if self.config.training.channels_last is not True:
            return torch.contiguous_format
        return torch.channels_last_3d if self.dims() == 3 else torch.channels_last  # 5D tensors: the 3D layout

    def memory_format_of(self, name: str) -> torch.memory_format:
        """Layout of network ``name``: :attr:`memory_format`, or with ``training.channels_last: auto``
        channels_last for the 2D segmentation networks on CPU (see :data:`AUTO_CHANNELS_LAST`)."""
        if self.config.training.channels_last == "auto":
            auto = self.device.type == "cpu" and name in AUTO_CHANNELS_LAST and self.dims() == 2
            return torch.channels_last if auto else torch.contiguous_format
        return self.memory_format

    def _finish_networks(self) -> None:
        """Move every network to the device (and its memory format) after construction."""
        for name, net in self.networks.items():
            net.to(self.device, memory_format=self.memory_format_of(name))

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast when the (resolved) precision is bf16 (weights stay fp32), else a no-op."""
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """Move an image batch ``[B,C,H,W]`` to the device as float32 in the configured memory format."""
        return x.to(self.device, dtype=torch.float32, non_blocking=True).contiguous(memory_format=self.memory_format)

    def train(self) -> None:
        for net in self.networks.values():
            net.train()

    def eval(self) -> None:
        for net in self.networks.values():
            net.eval()

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """Eval mode + no_grad inside the block; the previous train/eval modes are restored after."""
        modes = {k: n.training for k, n in self.networks.items()}
        self.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            for k, n in self.networks.items():
                n.train(modes[k])

    def parameter_counts(self) -> dict[str, int]:
        return {k: sum(p.numel() for p in n.parameters()) for k, n in self.networks.items()}

    # ------------------------------------------------------------------ steps
    @abc.abstractmethod
    def training_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """One optimisation step on ``batch``; returns every loss term as a float."""

    def seg_loss(self, logits: torch.Tensor, label: torch.Tensor, sample_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Soft Dice loss with the configured reduction (``loss.dice_reduction``: batch or sample)."""
        mode = self.config.loss.dice_reduction
        if _world() > 1 and torch.is_grad_enabled():  # data-parallel training: the loss of the global batch
            return global_soft_dice(logits, label, sample_mask, pooled=mode == "batch")
        return soft_dice_loss(logits.float(), label, sample_mask=sample_mask,
                              reduction="batch" if mode == "batch" else "mean")

    def validation_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """Student soft-Dice loss on a labelled batch ``{"image", "label"}`` (eval mode, no grad).

        Returns ``loss`` (mean soft Dice loss of the batch), ``n`` (batch size) and the pixel counts
        ``intersection``, ``pred_sum``, ``label_sum`` of the thresholded prediction for a global Dice.
        """

        image = self.to_device(batch["image"])
        label = self.to_device(batch["label"])
        with self.evaluating(), self.autocast():
            logits = self.student(image).float()
            loss = self.seg_loss(logits, label)
        pred = (logits > 0).float()  # sigmoid(logit) > 0.5
        return {
            "loss": float(loss),
            "n": float(image.shape[0]),
            "intersection": float((pred * label).sum()),
            "pred_sum": float(pred.sum()),
            "label_sum": float(label.sum()),
        }

    def visuals(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Images ``[B,1,H,W]`` (CPU, float) for the per-epoch grid, computed in eval mode."""
        image = self.to_device(batch["image"])
        with self.evaluating(), self.autocast():
            pred = (self.student(image).float() > 0).float()
        return {"CT": image.cpu(), "expert": batch["label"].float().cpu(), "predicted": pred.cpu()}

    # ------------------------------------------------------------------ state
    def extra_state(self) -> dict[str, Any]:
        """Method-specific state beyond networks and optimisers (tensors/ints only)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`extra_state`."""

    def state_dict(self) -> dict[str, Any]:
        """``{"networks": {name: state_dict}, "optimizers": {name: state_dict}, "method_state": {...}}``."""
        return {
            "networks": {k: n.state_dict() for k, n in self.networks.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "method_state": {"global_step": self.global_step, **self.extra_state()},
        }

    def adam(self, params: Iterable[nn.Parameter], lr: float, betas: Iterable[float]) -> torch.optim.Adam:
        """Adam with ``optim.weight_decay``. On CPU the fused kernel (one pass over every tensor: 2.6 vs
        8.2 ms for the ~2.3 M parameters of a cpu-demo CMEDL, ~1 % of its step); elsewhere PyTorch's
        default implementation. The fused kernel needs each state tensor in its parameter's memory
        layout, which :meth:`load_state_dict` ensures."""
        return torch.optim.Adam(list(params), lr=lr, betas=tuple(betas), weight_decay=self.config.optim.weight_decay,
                                fused=True if self.device.type == "cpu" else None)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore networks, optimisers (if present) and extras; missing networks are an error."""
        missing = sorted(set(self.networks) - set(state.get("networks", {})))
        if missing:
            raise InputError(f"checkpoint lacks networks {missing} needed by method '{self.name}'")
        for k, net in self.networks.items():
            net.load_state_dict(state["networks"][k])
        for k, opt in self.optimizers.items():
            if k in state.get("optimizers", {}):
                opt.load_state_dict(state["optimizers"][k])
                _match_state_layouts(opt)
        extra = dict(state.get("method_state", {}))
        self.global_step = int(extra.pop("global_step", 0))
        self.load_extra_state(extra)
