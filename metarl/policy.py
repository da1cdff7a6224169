"""Gaussian MLP policy used functionally through a dict of parameters.

Parameters may be *shared* (each tensor has the module's own shape) or *stacked* per task
(each tensor has a leading task dimension ``n``). The same forward handles both: with
stacked parameters the input must be ``[n, M, obs_dim]`` and every layer is one batched
matmul, so a whole meta-batch with per-task adapted parameters is one forward pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from metarl.config import PolicyConfig

Params = dict[str, Tensor]
"""Policy parameters by name (the module's ``named_parameters`` names)."""

ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}
INITS = ("glorot", "fan_in")
"""Weight initialisations :meth:`GaussianMLPPolicy.reset_parameters` knows."""


class GaussianMLPPolicy(nn.Module):
    """Diagonal Gaussian policy: an MLP gives the mean; a state-independent log-std is learned."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden_sizes: tuple[int, ...] | list[int] = (64, 64),
        activation: Literal["tanh", "relu"] = "tanh",
        init_std: float = 1.0,
        init: Literal["glorot", "fan_in"] = "glorot",
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if init_std <= 0:
            raise ValueError(f"init_std must be > 0, got {init_std}")
        if init not in INITS:
            raise ValueError(f"init must be one of {list(INITS)}, got {init!r}")
        sizes = [obs_dim, *hidden_sizes, act_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.log_std = nn.Parameter(torch.full((act_dim,), math.log(init_std)))
        self.activation = activation
        self.init = init
        self.obs_dim = obs_dim
        self.act_dim = act_dim

    @classmethod
    def from_config(cls, config: PolicyConfig, obs_dim: int, act_dim: int) -> GaussianMLPPolicy:
        """The policy a config's ``policy`` section describes (weights as constructed; see :meth:`reset_parameters`)."""
        return cls(obs_dim, act_dim, config.hidden_sizes, config.activation, config.init_std, config.init)

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Re-initialise the MLP from ``generator`` (no global RNG); the log-std is left as it is.

        ``"glorot"``: weights ~ U(±sqrt(6 / (fan_in + fan_out))), biases 0 (rllab and
        pytorch-maml-rl, the MAML-RL references). ``"fan_in"``: weights and biases
        ~ U(±1 / sqrt(fan_in)) (``torch.nn.Linear``'s default).
        """
        with torch.no_grad():
            for layer in self.layers:
                assert isinstance(layer, nn.Linear)
                tensors: tuple[Tensor, ...]
                if self.init == "glorot":
                    bound = math.sqrt(6.0 / (layer.in_features + layer.out_features))
                    layer.bias.zero_()
                    tensors = (layer.weight,)
                else:
                    bound = 1.0 / math.sqrt(layer.in_features)
                    tensors = (layer.weight, layer.bias)
                for p in tensors:
                    p.copy_(torch.rand(p.shape, generator=generator, dtype=p.dtype) * 2 * bound - bound)

    def params(self) -> Params:
        """The module's own parameters as a dict (shared, not stacked)."""
        return dict(self.named_parameters())

    def head_names(self) -> list[str]:
        """The last layer's parameter names: the head that ANIL adapts (``maml.adapt_params: head``)."""
        last = len(self.layers) - 1
        return [f"layers.{last}.weight", f"layers.{last}.bias"]

    def forward(self, obs: Tensor, params: Params | None = None) -> tuple[Tensor, Tensor]:
        """Mean and log-std of the action distribution.

        ``obs`` is ``[..., obs_dim]`` with shared params, ``[n, M, obs_dim]`` with stacked ones.
        The log-std is broadcast to the mean's shape.
        """
        p = self.params() if params is None else params
        act = ACTIVATIONS[self.activation]
        x = obs
        last = len(self.layers) - 1
        for i in range(len(self.layers)):
            x = linear(x, p[f"layers.{i}.weight"], p[f"layers.{i}.bias"])
            if i < last:
                x = act(x)
        log_std = p["log_std"]
        if log_std.dim() == 2:  # stacked: [n, act] -> [n, 1, act]
            log_std = log_std.unsqueeze(1)
        return x, log_std.expand_as(x)


def linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``x @ W^T + b`` for shared ``W [out, in]`` or stacked ``W [n, out, in]`` (x: ``[n, M, in]``)."""
    if weight.dim() == 2:
        return torch.nn.functional.linear(x, weight, bias)
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


def log_prob(mean: Tensor, log_std: Tensor, actions: Tensor) -> Tensor:
    """Log-density of ``actions`` under the diagonal Gaussian, summed over the action dim."""
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def kl_divergence(mean_p: Tensor, log_std_p: Tensor, mean_q: Tensor, log_std_q: Tensor) -> Tensor:
    """KL(p || q) between diagonal Gaussians, summed over the action dim."""
    var_p = torch.exp(2 * log_std_p)
    var_q = torch.exp(2 * log_std_q)
    return (log_std_q - log_std_p + (var_p + (mean_p - mean_q).pow(2)) / (2 * var_q) - 0.5).sum(-1)


def stack_params(params: Params, n: int) -> Params:
    """Expand shared params to ``n`` per-task copies (a view; gradients flow back to ``params``)."""
    return {k: v.unsqueeze(0).expand(n, *v.shape) for k, v in params.items()}


def copy_parameters(source: nn.Module, target: nn.Module) -> None:
    """Copy ``source``'s parameter values into ``target``'s, in place (e.g. a learner replica on another device)."""
    with torch.no_grad():
        for s, t in zip(source.parameters(), target.parameters(), strict=True):
            t.copy_(s)


def detach_params(params: Params) -> Params:
    """Detached copies (no graph) of every parameter tensor."""
    return {k: v.detach() for k, v in params.items()}


def flatten(tensors: Params | list[Tensor]) -> Tensor:
    """Concatenate tensors (dict values in order) into one flat vector."""
    values = tensors.values() if isinstance(tensors, dict) else tensors
    return torch.cat([t.reshape(-1) for t in values])


def unflatten(vector: Tensor, like: Params) -> Params:
    """Split a flat vector into tensors shaped like ``like`` (inverse of :func:`flatten`)."""
    out: Params = {}
    offset = 0
    for k, v in like.items():
        out[k] = vector[offset : offset + v.numel()].view_as(v)
        offset += v.numel()
    if offset != vector.numel():
        raise ValueError(f"vector has {vector.numel()} elements, parameters need {offset}")
    return out


def learner_device(name: str) -> torch.device:
    """The device ``train.device`` names: ``cpu``, ``cuda`` (an error without a CUDA device), or ``auto``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from metarl.errors import ConfigError

        raise ConfigError(
            f"config key 'train.device': cuda, but torch {torch.__version__} sees no CUDA device "
            "(use cpu, or auto to take a GPU only when there is one)"
        )
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu, cuda or auto, got {name!r}")
    return torch.device(name)


def is_stacked(params: Params) -> bool:
    """True if the parameters carry a leading per-task dimension."""
    return params["log_std"].dim() == 2


# --------------------------------------------------------------------------- closed-form derivatives
#
# The meta-update differentiates the policy's mean network with stacked per-task parameters
# (``[c, out, in]`` weights for a chunk of ``c`` tasks) and inputs ``[c, M, obs_dim]``. These
# functions do it by hand, without autograd: a forward pass that keeps what the derivatives
# need, the vector-Jacobian product (backward), the Jacobian-vector product (forward tangent)
# and the second-order backward (Pearlmutter's R-operator) that turns a backward into a
# Hessian-vector product. Every pass is a few batched matmuls per layer plus in-place
# elementwise updates: no graph, no saved copies. Layer ``l`` computes
# ``a_l = h_{l-1} W_l^T + b_l``, ``h_l = phi(a_l)`` (``h_0`` the observation; the last layer's
# ``a`` is the mean). They run under ``torch.no_grad``.


@dataclass
class MLPCache:
    """A forward pass of the mean network, kept for its derivatives."""

    inputs: list[Tensor]
    """``inputs[l]``: the input ``h_{l-1}`` of layer ``l``, ``[c, M, in_l]`` (``inputs[0]`` is the observation)."""
    slopes: list[Tensor]
    """``slopes[l]``: ``phi'(a_l)`` of hidden layer ``l``, ``[c, M, out_l]``."""
    mean: Tensor
    """The action mean, ``[c, M, act_dim]``."""


@dataclass
class MLPBackward:
    """A backward pass: the parameter gradients and what a later Hessian-vector product reuses."""

    grads: Params
    """Gradients of the weights and biases (stacked), by parameter name."""
    outputs: list[Tensor]
    """``outputs[l]``: the gradient w.r.t. ``a_l`` of every layer."""
    curvature: list[Tensor | None]
    """tanh: ``g_{h_l} * h_l`` per hidden layer (``phi''(a) Ra = -2 h Rh``); relu: ``None`` (``phi'' = 0``)."""


def _weight(i: int) -> str:
    return f"layers.{i}.weight"


def _bias(i: int) -> str:
    return f"layers.{i}.bias"


def _affine(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``x @ W^T + b`` per task: ``x [c, M, in]``, ``W [c, out, in]``, ``b [c, out]``.

    The product, then the bias added in place: faster than ``baddbmm``, which first copies the
    broadcast bias into the output.
    """
    return torch.bmm(x, weight.transpose(1, 2)).add_(bias.unsqueeze(1))


@torch.no_grad()
def mlp_forward(policy: GaussianMLPPolicy, params: Params, obs: Tensor) -> MLPCache:
    """The mean network on ``obs [c, M, obs_dim]`` with stacked ``params``, keeping layer inputs and slopes."""
    last = len(policy.layers) - 1
    inputs: list[Tensor] = [obs]
    slopes: list[Tensor] = []
    x = obs
    for i in range(last + 1):
        a = _affine(x, params[_weight(i)], params[_bias(i)])
        if i == last:
            return MLPCache(inputs, slopes, a)
        if policy.activation == "tanh":
            x = a.tanh_()
            slopes.append(torch.addcmul(torch.ones((), dtype=x.dtype, device=x.device), x, x, value=-1.0))  # 1 - h^2
        else:
            x = a.clamp_min_(0.0)
            slopes.append(torch.sign(x))  # 1 where a > 0, else 0
        inputs.append(x)
    raise AssertionError("unreachable")


@torch.no_grad()
def mlp_mean(policy: GaussianMLPPolicy, params: Params, obs: Tensor) -> Tensor:
    """The action mean alone (stacked ``params``), computed in place layer by layer."""
    last = len(policy.layers) - 1
    x = obs
    for i in range(last + 1):
        x = _affine(x, params[_weight(i)], params[_bias(i)])
        if i < last:
            x = x.tanh_() if policy.activation == "tanh" else x.clamp_min_(0.0)
    return x


@torch.no_grad()
def mlp_backward(
    policy: GaussianMLPPolicy, params: Params, cache: MLPCache, grad_mean: Tensor, keep: bool = False
) -> MLPBackward:
    """Gradients of the weights and biases for the gradient ``grad_mean [c, M, act_dim]`` w.r.t. the mean.

    ``keep`` keeps what :func:`mlp_hvp` needs (``grad_mean`` is then kept too, not modified).
    """
    count = len(policy.layers)
    grads: Params = {}
    outputs: list[Tensor] = [grad_mean] * count
    curvature: list[Tensor | None] = [None] * (count - 1)
    g = grad_mean
    for i in reversed(range(count)):
        outputs[i] = g
        grads[_weight(i)] = torch.bmm(g.transpose(1, 2), cache.inputs[i])
        grads[_bias(i)] = g.sum(1)
        if i > 0:
            gh = torch.bmm(g, params[_weight(i)])
            if keep and policy.activation == "tanh":
                curvature[i - 1] = gh * cache.inputs[i]
            g = gh.mul_(cache.slopes[i - 1])
    return MLPBackward({k: grads[k] for k in _order(count)}, outputs, curvature)


@torch.no_grad()
def mlp_jvp(policy: GaussianMLPPolicy, params: Params, cache: MLPCache, tangent: Params) -> tuple[Tensor, list[Tensor]]:
    """The mean's tangent ``J v`` for the parameter tangent ``v`` (stacked), and each hidden layer's tangent."""
    last = len(policy.layers) - 1
    hidden: list[Tensor] = []
    for i in range(last + 1):
        ra = _affine(cache.inputs[i], tangent[_weight(i)], tangent[_bias(i)])
        if i > 0:
            ra.baddbmm_(hidden[-1], params[_weight(i)].transpose(1, 2))
        if i == last:
            return ra, hidden
        hidden.append(ra.mul_(cache.slopes[i]))
    raise AssertionError("unreachable")


@torch.no_grad()
def mlp_hvp(
    policy: GaussianMLPPolicy,
    params: Params,
    tangent: Params,
    cache: MLPCache,
    backward: MLPBackward,
    hidden: list[Tensor],
    r_grad_mean: Tensor,
) -> Params:
    """The tangent of the parameter gradient of :func:`mlp_backward` (kept) along ``tangent``.

    ``hidden`` are the hidden tangents of :func:`mlp_jvp` along ``tangent``, and ``r_grad_mean``
    the tangent of ``grad_mean``. With ``grad_mean`` the gradient of a loss w.r.t. the mean,
    this is the loss's Hessian-vector product (the R-operator of the backward pass).
    """
    count = len(policy.layers)
    out: Params = {}
    rg = r_grad_mean
    for i in reversed(range(count)):
        rw = torch.bmm(rg.transpose(1, 2), cache.inputs[i])
        if i > 0:
            rw.baddbmm_(backward.outputs[i].transpose(1, 2), hidden[i - 1])
        out[_weight(i)] = rw
        out[_bias(i)] = rg.sum(1)
        if i > 0:
            rgh = torch.bmm(rg, params[_weight(i)]).baddbmm_(backward.outputs[i], tangent[_weight(i)])
            rg = rgh.mul_(cache.slopes[i - 1])
            curvature = backward.curvature[i - 1]
            if curvature is not None:
                rg.addcmul_(curvature, hidden[i - 1], value=-2.0)
    return {k: out[k] for k in _order(count)}


def _order(count: int) -> list[str]:
    return [name for i in range(count) for name in (_weight(i), _bias(i))]
