"""Few-shot image classifiers used functionally, with shared or per-task stacked parameters.

Two models, selected by the config's ``classifier.model``:

* :class:`ConvClassifier`: the 4-block convolutional network of the MAML paper (Finn et al.
  2017, after Vinyals et al. 2016): each block a 3x3 convolution with ``filters`` (64)
  channels, per-task batch normalisation (or none), ReLU, and a 2x downsampling (a stride-2
  convolution as in the MAML code's Omniglot model, or 2x2 max-pooling); then the mean over
  the remaining pixels and a linear layer to the ``ways`` logits.
* :class:`MLPClassifier`: the MAML paper's MLP (hidden layers 256-128-64-64, each with
  per-task batch normalisation and ReLU) on the flattened image.

**Shared or stacked parameters.** As for the policy (:mod:`metarl.policy`), ``forward(x,
params)`` takes a dict of parameters that are either shared (the module's own shapes) or
stacked per task (a leading task dimension ``n``); the input is ``[n, M, C, H, W]`` either
way (``M`` images per task). With stacked parameters every convolution is ONE grouped
convolution over the tasks (``groups = n``: the tasks' images side by side along the channel
dimension), and every linear layer one batched matmul, so a meta-batch with per-task adapted
parameters is one forward pass with no loop over tasks. (A ``torch.func.vmap`` over tasks of
the plain forward gives the same values; grouped convolution measured faster on CPU:
``benchmarks/bench_conv_forward.py``, results/conv_forward.md.)

**Batch normalisation, per task.** ``norm: batch`` normalises every channel with the mean
and variance of that channel over the images (and pixels) *of one task* in the current
forward pass, then applies a learned scale and shift (adapted in the inner loop like every
other parameter). There are no running statistics, so nothing is carried from one task, or
one batch, to another: training and evaluation compute the same function. As in the MAML
code, this is transductive within a task: the query images of a task are normalised
together (a query prediction depends on the other query images of the same task, never on
another task's). ``norm: none`` drops the normalisation (and its parameters) altogether.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metarl.policy import GaussianMLPPolicy, Params, linear, stack_params

if TYPE_CHECKING:
    from metarl.config import ClassifierConfig

Norm = Literal["batch", "none"]
Downsample = Literal["stride", "maxpool"]
EPS = 1e-5
"""Added to the variance in batch normalisation."""


def task_batch_norm(x: Tensor, weight: Tensor, bias: Tensor, task_dim: int = 0) -> Tensor:
    """Normalise every channel per task over the task's images (and pixels), then scale and shift.

    ``x`` is ``[n, M, F, ...]`` (``task_dim=0``) or ``[M, n, F, ...]`` (``task_dim=1``): tasks, images,
    channels, then any pixel dimensions. ``weight``/``bias`` are ``[F]`` (shared) or ``[n, F]``
    (stacked per task).
    """
    dims = tuple(d for d in range(x.dim()) if d not in (task_dim, 2))
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, keepdim=True, unbiased=False)
    shape = [1] * x.dim()
    shape[2] = weight.shape[-1]
    if weight.dim() == 2:
        shape[task_dim] = weight.shape[0]
    return (x - mean) * torch.rsqrt(var + EPS) * weight.reshape(shape) + bias.reshape(shape)


def check_input(x: Tensor, reference: Tensor, own_dims: int) -> tuple[int, bool]:
    """``(n, stacked)`` for images ``x [n, M, C, H, W]`` and a parameter with ``own_dims`` dimensions when shared.

    Stacked parameters (one more dimension) must hold ``n`` tasks.
    """
    if x.dim() != 5:
        raise ValueError(f"input must be [tasks, images, channels, height, width], got shape {tuple(x.shape)}")
    stacked = reference.dim() == own_dims + 1
    if stacked and reference.shape[0] != x.shape[0]:
        raise ValueError(f"stacked parameters hold {reference.shape[0]} tasks, the input {x.shape[0]}")
    return x.shape[0], stacked


def glorot_init(model: nn.Module, generator: torch.Generator) -> None:
    """Glorot-uniform weights (fan-in and fan-out include the kernel's pixels), zero biases; batch-norm
    (``bn.*``) scales 1 and shifts 0. Draws only from ``generator``, in parameter order."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("bn."):
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                receptive = p[0, 0].numel() if p.dim() > 2 else 1
                bound = math.sqrt(6.0 / (p.shape[1] * receptive + p.shape[0] * receptive))
                p.copy_(torch.rand(p.shape, generator=generator, dtype=p.dtype) * 2 * bound - bound)


class ConvClassifier(nn.Module):
    """The MAML paper's 4-block conv net, used functionally (see the module docstring)."""

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        ways: int,
        filters: int = 64,
        blocks: int = 4,
        downsample: Downsample = "stride",
        norm: Norm = "batch",
    ) -> None:
        super().__init__()
        if ways < 2 or filters < 1 or blocks < 1:
            raise ValueError(f"need ways >= 2, filters >= 1 and blocks >= 1, got {ways}, {filters}, {blocks}")
        if downsample not in ("stride", "maxpool") or norm not in ("batch", "none"):
            raise ValueError(f"need downsample 'stride'/'maxpool', norm 'batch'/'none'; got {downsample!r}, {norm!r}")
        channels, height, width = input_shape
        size = min(height, width)
        for _ in range(blocks):
            size = (size + 1) // 2 if downsample == "stride" else size // 2
        if size < 1:
            raise ValueError(f"{blocks} downsampling blocks leave nothing of a {height}x{width} image")
        self.input_shape = (int(channels), int(height), int(width))
        self.obs_dim = channels * height * width
        self.act_dim = ways
        self.filters, self.blocks, self.downsample, self.norm = filters, blocks, downsample, norm
        self.conv = nn.ModuleList(
            nn.Conv2d(channels if i == 0 else filters, filters, 3, stride=2 if downsample == "stride" else 1, padding=1)
            for i in range(blocks)
        )
        self.bn = nn.ModuleList(
            nn.BatchNorm2d(filters, track_running_stats=False) for _ in range(blocks if norm == "batch" else 0)
        )
        self.head = nn.Linear(filters, ways)

    @classmethod
    def from_config(cls, config: ClassifierConfig, input_shape: tuple[int, int, int], ways: int) -> ConvClassifier:
        """The conv net a config's ``classifier`` section describes."""
        return cls(input_shape, ways, config.filters, config.blocks, config.downsample, config.norm)

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Glorot-uniform convolution and head weights with zero biases (as the MAML code's Xavier init);
        batch-norm scale 1, shift 0. Draws only from ``generator``."""
        glorot_init(self, generator)

    def params(self) -> Params:
        """The module's own parameters as a dict (shared, not stacked)."""
        return dict(self.named_parameters())

    def head_names(self) -> list[str]:
        """The last layer's parameter names: the head that ANIL adapts (``maml.adapt_params: head``)."""
        return ["head.weight", "head.bias"]

    def forward(self, x: Tensor, params: Params | None = None) -> Tensor:
        """Logits ``[n, M, ways]`` of images ``x [n, M, C, H, W]`` under shared or stacked ``params``."""
        p = self.params() if params is None else params
        n, stacked = check_input(x, p["conv.0.weight"], 4)
        if not stacked:  # one code path: shared parameters as n views of themselves
            p = stack_params(p, n)
        m = x.shape[1]
        stride = 2 if self.downsample == "stride" else 1
        h = x.transpose(0, 1).reshape(m, n * x.shape[2], *x.shape[3:])  # tasks side by side along the channels
        for i in range(self.blocks):
            weight, bias = p[f"conv.{i}.weight"], p[f"conv.{i}.bias"]
            h = F.conv2d(h, weight.reshape(-1, *weight.shape[2:]), bias.reshape(-1), stride, 1, groups=n)
            if self.norm == "batch":  # channel (task i, filter f) over the task's M images and pixels: per task
                scale, shift = p[f"bn.{i}.weight"].reshape(-1), p[f"bn.{i}.bias"].reshape(-1)
                h = F.batch_norm(h, None, None, scale, shift, training=True, eps=EPS)
            h = torch.relu(h)
            if self.downsample == "maxpool":
                h = F.max_pool2d(h, 2)
        features = h.mean(dim=(2, 3)).view(m, n, self.filters).transpose(0, 1)  # [n, M, F]
        return linear(features, p["head.weight"], p["head.bias"])


class MLPClassifier(nn.Module):
    """The MAML paper's MLP classifier on flattened images, used functionally (see the module docstring)."""

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        ways: int,
        hidden_sizes: tuple[int, ...] | list[int] = (256, 128, 64, 64),
        norm: Norm = "batch",
    ) -> None:
        super().__init__()
        if ways < 2 or not hidden_sizes or min(hidden_sizes) < 1:
            raise ValueError(f"need ways >= 2 and positive hidden sizes, got {ways} and {list(hidden_sizes)}")
        if norm not in ("batch", "none"):
            raise ValueError(f"norm must be 'batch' or 'none', got {norm!r}")
        self.input_shape = tuple(int(s) for s in input_shape)
        self.obs_dim = math.prod(self.input_shape)
        self.act_dim = ways
        self.norm = norm
        sizes = [self.obs_dim, *hidden_sizes]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.bn = nn.ModuleList(
            nn.BatchNorm1d(s, track_running_stats=False) for s in (hidden_sizes if norm == "batch" else [])
        )
        self.head = nn.Linear(sizes[-1], ways)

    @classmethod
    def from_config(cls, config: ClassifierConfig, input_shape: tuple[int, int, int], ways: int) -> MLPClassifier:
        """The MLP a config's ``classifier`` section describes."""
        return cls(input_shape, ways, config.hidden_sizes, config.norm)

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Glorot-uniform weights, zero biases, batch-norm scale 1 and shift 0; draws only from ``generator``."""
        glorot_init(self, generator)

    def params(self) -> Params:
        """The module's own parameters as a dict (shared, not stacked)."""
        return dict(self.named_parameters())

    def head_names(self) -> list[str]:
        """The last layer's parameter names: the head that ANIL adapts (``maml.adapt_params: head``)."""
        return ["head.weight", "head.bias"]

    def forward(self, x: Tensor, params: Params | None = None) -> Tensor:
        """Logits ``[n, M, ways]`` of images ``x [n, M, C, H, W]`` under shared or stacked ``params``."""
        p = self.params() if params is None else params
        check_input(x, p["layers.0.weight"], 2)
        h = x.flatten(2)
        for i in range(len(self.layers)):
            h = linear(h, p[f"layers.{i}.weight"], p[f"layers.{i}.bias"])
            if self.norm == "batch":
                h = task_batch_norm(h, p[f"bn.{i}.weight"], p[f"bn.{i}.bias"])
            h = torch.relu(h)
        return linear(h, p["head.weight"], p["head.bias"])


Classifier = ConvClassifier | MLPClassifier
"""A few-shot classifier model."""

Model = GaussianMLPPolicy | ConvClassifier | MLPClassifier
"""Any model a run meta-learns: a policy (RL, regression) or a classifier; what a checkpoint holds."""


def build_classifier(
    config: ClassifierConfig, input_shape: tuple[int, int, int], ways: int, seed: int, dtype: torch.dtype
) -> Classifier:
    """The configured classifier for ``ways`` classes of ``input_shape`` images, initialised from ``seed``."""
    model: Classifier
    if config.model == "conv":
        model = ConvClassifier.from_config(config, input_shape, ways)
    else:
        model = MLPClassifier.from_config(config, input_shape, ways)
    model.reset_parameters(torch.Generator().manual_seed(seed))
    return model.to(dtype)
