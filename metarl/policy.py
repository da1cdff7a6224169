"""Gaussian MLP policy used functionally through a dict of parameters.

Parameters may be *shared* (each tensor has the module's own shape) or *stacked* per task
(each tensor has a leading task dimension ``n``). The same forward handles both: with
stacked parameters the input must be ``[n, M, obs_dim]`` and every layer is one batched
matmul, so a whole meta-batch with per-task adapted parameters is one forward pass.
"""

from __future__ import annotations

import math
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


def is_stacked(params: Params) -> bool:
    """True if the parameters carry a leading per-task dimension."""
    return params["log_std"].dim() == 2
