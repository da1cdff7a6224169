"""The MAML family: what each algorithm is, and the pieces every loss (regression, classification, RL) shares.

One config key, ``maml.algorithm``, picks the algorithm; everything it implies is decided here:

- which loss families it applies to (:data:`ALGORITHMS`, :func:`check_config`) and whether its
  meta-gradient is first or second order (:func:`first_order_at`);
- which parameters the inner loop adapts (``maml.adapt_params``; :func:`adapted_names`);
- the step sizes it learns (:class:`LearnedStepSizes`: Meta-SGD's per-parameter α, MAML++'s
  per-layer per-step LSLR) and the schedules of the MAML++ and Reptile papers
  (:func:`multi_step_loss_weights`, :func:`cosine_lr`, :func:`linear_anneal`);
- the *inner rule* (:class:`InnerRule`): step sizes, adapted subset, inner optimiser and
  derivative order, built by one function from a config and a checkpoint's learned state
  (:func:`inner_rule`, :func:`checkpoint_inner_rule`), used by training, ``metarl evaluate``,
  rendering and the benchmarks alike;
- one outer step for any inner and query loss (:class:`MetaLearner`): the gradient-based
  meta-objective (:func:`meta_loss`) with Adam, or Reptile's interpolation.

The inner loop itself is :func:`metarl.maml.adapt_steps`, the only one: every algorithm here
runs it on task-stacked parameters (no Python loop over tasks).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch
from torch import Tensor, nn

from metarl.errors import CheckpointError, ConfigError
from metarl.maml import AdaptationSettings, InnerAdam, InnerLoss, StepSize, adapt_steps
from metarl.policy import Params

if TYPE_CHECKING:
    from metarl.checkpoint import Checkpoint
    from metarl.config import Config, MamlConfig

LossFamily = Literal["supervised", "rl"]
"""``rl`` for ``maml.loss: pg``; ``supervised`` for every supervised loss (regression, classification)."""

QueryLoss = Callable[[Params], Tensor]
"""``(stacked adapted params) -> each task's query (outer) loss, [n]``."""


@dataclass(frozen=True)
class AlgorithmSpec:
    """What an algorithm of the family is, as the rest of metarl needs to know it."""

    name: str
    families: frozenset[str]
    """The loss families it is implemented for (:data:`LossFamily`)."""
    order: Literal["second", "first", "annealed"]
    """Its meta-gradient by default: second order, first order, or first then second (MAML++)."""
    order_fixed: bool
    """Whether the order is part of the algorithm (then ``maml.first_order`` may only agree with it)."""
    step_sizes: Literal["fixed", "per_parameter", "per_layer_per_step"]
    """``maml.inner_lr`` at every step, or learned sizes (:class:`LearnedStepSizes`)."""
    adapt: Literal["all", "head"]
    """Which parameters adapt when ``maml.adapt_params`` is null."""
    reference: str
    outer: Literal["trpo", "adam"] = "trpo"
    """Its outer step with the policy-gradient loss when ``outer.optimizer`` is null (:func:`outer_optimizer`)."""


ALGORITHMS: dict[str, AlgorithmSpec] = {
    spec.name: spec
    for spec in (
        AlgorithmSpec(
            "maml", frozenset({"supervised", "rl"}), "second", False, "fixed", "all", "Finn, Abbeel & Levine 2017"
        ),
        AlgorithmSpec(
            "fomaml", frozenset({"supervised", "rl"}), "first", True, "fixed", "all", "Finn, Abbeel & Levine 2017"
        ),
        AlgorithmSpec("reptile", frozenset({"supervised"}), "first", True, "fixed", "all", "Nichol et al. 2018"),
        AlgorithmSpec(
            "metasgd", frozenset({"supervised", "rl"}), "second", False, "per_parameter", "all", "Li et al. 2017"
        ),
        AlgorithmSpec("anil", frozenset({"supervised", "rl"}), "second", False, "fixed", "head", "Raghu et al. 2020"),
        AlgorithmSpec(
            "mamlpp", frozenset({"supervised"}), "annealed", True, "per_layer_per_step", "all", "Antoniou et al. 2019"
        ),
        # MAML-VPG (vpg; the baseline of Rothfuss et al. 2019, ProMP, their vpg_maml.py): MAML's objective, the mean
        # over tasks of the post-adaptation return after maml.num_inner_steps REINFORCE steps of maml.inner_lr, with
        # the plain policy-gradient outer step: one Adam step (outer.lr) per sampled meta-batch on the gradient of the
        # post-adaptation surrogate (ratio 1), taken through the inner steps (second order unless maml.first_order;
        # the inner loss's form, hence its Hessian, is maml.inner_estimator). It is trainer.PolicyGradientMAML's
        # Adam path, outer.optimizer: adam, under its own name; outer.optimizer: trpo contradicts it.
        AlgorithmSpec("vpg", frozenset({"rl"}), "second", False, "fixed", "all", "Rothfuss et al. 2019", "adam"),
        # ProMP (promp; Rothfuss et al. 2019; metarl.promp documents the objective): promp.num_steps Adam steps
        # (outer.lr) per sampled meta-batch on PPO's clipped post-adaptation surrogate (promp.clip_eps) plus the
        # inner steps' KLs weighted by coefficients that start at promp.init_kl_coeff and, with promp.adaptive_kl,
        # track promp.target_kl; the inner loop re-run at every step with the importance-weighted LVC objective.
        AlgorithmSpec("promp", frozenset({"rl"}), "second", False, "fixed", "all", "Rothfuss et al. 2019", "adam"),
    )
}
"""Every algorithm ``maml.algorithm`` names."""

MSL_FLOOR = 0.03
"""MAML++'s multi-step loss: the smallest weight of a non-final step is ``MSL_FLOOR / K`` (the paper's code)."""


def loss_family(loss: str) -> LossFamily:
    """``rl`` for the policy-gradient loss, ``supervised`` for every other (regression, classification)."""
    return "rl" if loss == "pg" else "supervised"


def check_config(config: Config) -> None:
    """Refuse combinations of keys that contradict each other, with one :class:`ConfigError` line.

    An algorithm that is not implemented for the configured loss, a ``maml.first_order`` that
    contradicts the algorithm, ``outer.optimizer: trpo`` for an algorithm whose outer step is Adam
    (vpg, promp), promp with an inner estimator other than lvc, and ``anil`` told to adapt everything.
    """
    m = config.maml
    spec = ALGORITHMS[m.algorithm]
    family = loss_family(m.loss)
    if family not in spec.families:
        usable = ", ".join(name for name, s in ALGORITHMS.items() if family in s.families)
        raise ConfigError(
            f"config key 'maml.algorithm': {m.algorithm!r} does not apply to maml.loss={m.loss!r}; "
            f"with maml.loss={m.loss!r} use one of: {usable}"
        )
    if m.first_order is not None and spec.order_fixed:
        if spec.order == "annealed":
            raise ConfigError(
                f"config key 'maml.first_order': maml.algorithm={m.algorithm!r} anneals the derivative order itself "
                "(first order for mamlpp.first_order_iterations, then second); leave maml.first_order unset (null)"
            )
        if m.first_order != (spec.order == "first"):
            raise ConfigError(
                f"config key 'maml.first_order': {str(m.first_order).lower()} contradicts "
                f"maml.algorithm={m.algorithm!r}, which is {spec.order} order; leave maml.first_order unset (null)"
            )
    if family == "rl" and spec.outer == "adam" and config.outer.optimizer == "trpo":
        raise ConfigError(
            f"config key 'outer.optimizer': 'trpo' contradicts maml.algorithm={m.algorithm!r}, whose outer step is "
            "Adam; leave outer.optimizer unset (null), or use maml.algorithm=maml for MAML-TRPO"
        )
    if m.algorithm == "promp" and m.inner_estimator not in ("log", "lvc"):
        raise ConfigError(
            f"config key 'maml.inner_estimator': {m.inner_estimator!r} contradicts maml.algorithm='promp', whose inner "
            "objective is the importance-weighted lvc; set maml.inner_estimator=lvc or leave it at its default"
        )
    if m.algorithm == "anil" and m.adapt_params == "all":
        raise ConfigError(
            "config key 'maml.adapt_params': 'all' contradicts maml.algorithm='anil', which adapts a subset "
            "(use maml.algorithm=maml to adapt every parameter)"
        )


def outer_optimizer(config: Config) -> Literal["trpo", "adam"]:
    """The outer step a config takes: ``outer.optimizer`` if set, else the algorithm's own.

    With ``maml.loss: pg``: ``trpo`` for maml, fomaml, metasgd and anil, ``adam`` for vpg and promp
    (:attr:`AlgorithmSpec.outer`); supervised losses: ``adam`` (Reptile takes neither).
    """
    if config.outer.optimizer is not None:
        return config.outer.optimizer
    if loss_family(config.maml.loss) == "supervised":
        return "adam"
    return ALGORITHMS[config.maml.algorithm].outer


def algorithm_name(maml: MamlConfig) -> str:
    """The name runs are labelled with: ``maml.algorithm``, where first-order MAML is ``fomaml`` however it was set."""
    if maml.algorithm == "maml" and maml.first_order:
        return "fomaml"
    return maml.algorithm


def static_first_order(maml: MamlConfig) -> bool:
    """The derivative order a config fixes for the whole run: ``maml.first_order`` if set, else the algorithm's.

    (MAML++ anneals it: see :func:`first_order_at`; here it counts as second order.)
    """
    if maml.first_order is not None:
        return maml.first_order
    return ALGORITHMS[maml.algorithm].order == "first"


def first_order_iterations(config: Config) -> int:
    """MAML++'s derivative-order annealing: the first-order iterations (default a third of the run, as the paper)."""
    n = config.mamlpp.first_order_iterations
    return config.train.iterations // 3 if n is None else n


def multi_step_loss_iterations(config: Config) -> int:
    """MAML++'s multi-step loss: the iterations its weights anneal over (default a tenth of the run, as the paper)."""
    n = config.mamlpp.multi_step_loss_iterations
    return config.train.iterations // 10 if n is None else n


def first_order_at(config: Config, iteration: int) -> bool:
    """Whether meta-iteration ``iteration`` takes a first-order meta-gradient."""
    if ALGORITHMS[config.maml.algorithm].order == "annealed":
        return iteration < first_order_iterations(config)
    return static_first_order(config.maml)


# --------------------------------------------------------------------------- schedules


def multi_step_loss_weights(num_steps: int, iteration: int, anneal_iterations: int) -> list[float]:
    """MAML++'s per-step query-loss weights at ``iteration`` (the paper's code, with epochs read as iterations).

    Uniform ``1/K`` at iteration 0; every non-final weight then falls by ``1/(K * anneal_iterations)``
    per iteration down to ``0.03/K`` while the final one rises by as much as they lose (the
    weights sum to 1); from ``anneal_iterations`` on only the final step counts (weight 1).
    """
    if num_steps < 1 or iteration < 0 or anneal_iterations < 0:
        raise ValueError(
            f"need num_steps >= 1, iteration >= 0, anneal_iterations >= 0; got {num_steps}, {iteration}, "
            f"{anneal_iterations}"
        )
    k = num_steps
    if k == 1 or iteration >= anneal_iterations:
        return [0.0] * (k - 1) + [1.0]
    decay = 1.0 / k / anneal_iterations
    floor = MSL_FLOOR / k
    early = max(1.0 / k - iteration * decay, floor)
    final = min(1.0 / k + iteration * (k - 1) * decay, 1.0 - (k - 1) * floor)
    return [early] * (k - 1) + [final]


def cosine_lr(base: float, minimum: float, iteration: int, total: int) -> float:
    """Cosine annealing (MAML++'s outer learning rate): ``base`` at iteration 0 down to ``minimum`` at ``total``."""
    progress = min(max(iteration / max(total, 1), 0.0), 1.0)
    return minimum + 0.5 * (base - minimum) * (1.0 + math.cos(math.pi * progress))


def linear_anneal(start: float, end: float, iteration: int, total: int) -> float:
    """Linear from ``start`` at iteration 0 toward ``end`` at ``total`` (Reptile's outer step size ε)."""
    progress = min(max(iteration / max(total, 1), 0.0), 1.0)
    return start + (end - start) * progress


# --------------------------------------------------------------------------- adapted parameters


class FunctionalModel(Protocol):
    """A model metarl adapts (an ``nn.Module`` called with an explicit parameter dict).

    It may also name its head, ``head_names() -> list[str]``, for ``maml.adapt_params: head``.
    """

    def params(self) -> Params:
        """The model's own (shared) parameters by name."""
        ...

    def parameters(self) -> Iterator[nn.Parameter]:
        """Its parameters (``nn.Module.parameters``)."""
        ...

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Its parameters by name (``nn.Module.named_parameters``)."""
        ...


def head_names(model: Any) -> list[str]:
    """The model's head (``model.head_names()``); :class:`ConfigError` if it names none."""
    names = getattr(model, "head_names", None)
    if names is None:
        raise ConfigError(
            f"config key 'maml.adapt_params': {type(model).__name__} names no head (no head_names()); "
            "list the parameters to adapt instead"
        )
    return list(names())


def adapted_names(config: Config, model: FunctionalModel) -> frozenset[str] | None:
    """The parameters the inner loop adapts (``None``: all of them), from ``maml.adapt_params`` and the algorithm.

    An entry of a list is a parameter name or a layer prefix (``layers.2`` selects
    ``layers.2.weight`` and ``layers.2.bias``); one that matches nothing is a :class:`ConfigError`
    naming the model's parameters.
    """
    choice = config.maml.adapt_params
    if choice is None:
        choice = ALGORITHMS[config.maml.algorithm].adapt
    names = list(model.params())
    if choice == "all":
        return None
    if choice == "head":
        selected = head_names(model)
    else:
        selected = []
        for entry in choice:
            matches = [n for n in names if n == entry or n.startswith(entry + ".")]
            if not matches:
                raise ConfigError(
                    f"config key 'maml.adapt_params': {entry!r} names no parameter of the model "
                    f"(its parameters: {', '.join(names)})"
                )
            selected += matches
    if set(selected) == set(names):
        return None
    return frozenset(selected)


# --------------------------------------------------------------------------- learned step sizes


class LearnedStepSizes(nn.Module):
    """Inner step sizes meta-learned with θ by the outer optimiser.

    ``per_parameter`` (Meta-SGD, Li et al. 2017): a tensor α of θ's shape for every adapted
    parameter, the same at every inner step; update ``θ - α ⊙ ∇L``. ``per_layer_per_step``
    (MAML++'s LSLR, Antoniou et al. 2019): one scalar per adapted parameter tensor (a layer's
    weight or bias) and inner step. Both start at ``init`` (``maml.inner_lr``) and are not
    constrained in sign, as in the papers.
    """

    def __init__(
        self,
        kind: Literal["per_parameter", "per_layer_per_step"],
        shapes: Mapping[str, Sequence[int]],
        num_steps: int,
        init: float,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if kind not in ("per_parameter", "per_layer_per_step"):
            raise ValueError(f"kind must be 'per_parameter' or 'per_layer_per_step', got {kind!r}")
        if num_steps < 1 or not shapes:
            raise ValueError(f"need num_steps >= 1 and at least one parameter, got {num_steps}, {list(shapes)}")
        self.kind = kind
        self.names = list(shapes)
        self.num_steps = num_steps
        self.values = nn.ParameterList(
            nn.Parameter(torch.full(tuple(shapes[n]) if kind == "per_parameter" else (num_steps,), init, dtype=dtype))
            for n in self.names
        )

    def sizes(self) -> tuple[dict[str, Tensor], ...]:
        """One step-size dict per inner step (Meta-SGD: one, used at every step); carries the graph."""
        if self.kind == "per_parameter":
            return (dict(zip(self.names, self.values, strict=True)),)
        return tuple({n: v[j] for n, v in zip(self.names, self.values, strict=True)} for j in range(self.num_steps))

    def state(self) -> dict[str, Any]:
        """Plain data for a checkpoint's extra state."""
        return {
            "kind": self.kind,
            "num_steps": self.num_steps,
            "values": {n: v.detach().clone() for n, v in zip(self.names, self.values, strict=True)},
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state` in place; :class:`CheckpointError` if it was written for other step sizes."""
        values = state.get("values") if isinstance(state, Mapping) else None
        if (
            not isinstance(values, Mapping)
            or state.get("kind") != self.kind
            or list(values) != self.names
            or any(tuple(values[n].shape) != tuple(v.shape) for n, v in zip(self.names, self.values, strict=True))
        ):
            raise CheckpointError(
                f"the checkpoint's learned step sizes do not fit this run ({self.kind}, {self.num_steps} steps, "
                f"parameters {self.names}); resume with the run's own config.yaml"
            )
        with torch.no_grad():
            for n, v in zip(self.names, self.values, strict=True):
                v.copy_(values[n])

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> LearnedStepSizes:
        """Rebuild from :meth:`state` (a checkpoint's)."""
        try:
            values = state["values"]
            kind = state["kind"]
            first = next(iter(values.values()))
            shapes = {n: tuple(v.shape) for n, v in values.items()}
            module = cls(kind, shapes, int(state["num_steps"]), 0.0, first.dtype)
        except (KeyError, TypeError, ValueError, StopIteration, AttributeError) as exc:
            raise CheckpointError(f"the checkpoint's learned step sizes are malformed ({exc!r})") from None
        module.load_state(state)
        return module


def learned_step_sizes(config: Config, model: FunctionalModel) -> LearnedStepSizes | None:
    """The step sizes the config's algorithm learns for ``model``'s adapted parameters, at ``maml.inner_lr``
    (``None`` for an algorithm with a fixed step size)."""
    spec = ALGORITHMS[config.maml.algorithm]
    if spec.step_sizes == "fixed":
        return None
    params = model.params()
    adapted = adapted_names(config, model)
    shapes = {n: tuple(p.shape) for n, p in params.items() if adapted is None or n in adapted}
    dtype = next(iter(params.values())).dtype
    return LearnedStepSizes(spec.step_sizes, shapes, config.maml.num_inner_steps, config.maml.inner_lr, dtype)


# --------------------------------------------------------------------------- the inner rule


def mean_step_size(sizes: Mapping[str, Tensor]) -> float:
    """One step's learned step sizes as one number: the mean over every adapted element."""
    return float(torch.cat([t.detach().reshape(-1) for t in sizes.values()]).double().mean())


@dataclass(frozen=True)
class InnerRule:
    """How a model adapts to a task: everything the inner loop needs besides the loss.

    ``step_sizes`` holds one entry per inner step (a number, or a tensor per parameter name);
    a longer adaptation than that repeats the last entry (Meta-SGD's one α at every step; LSLR's
    last trained step beyond the trained number). ``adapted``: the parameters that adapt
    (``None``: all). ``optimizer``: Adam instead of gradient descent (Reptile's option).
    """

    step_sizes: tuple[StepSize, ...]
    adapted: frozenset[str] | None = None
    first_order: bool = True
    optimizer: InnerAdam | None = None

    def lrs(self, num_steps: int) -> list[StepSize]:
        """The step size of each of ``num_steps`` inner steps."""
        if not self.step_sizes:
            raise ValueError("an inner rule needs at least one step size")
        return [self.step_sizes[min(j, len(self.step_sizes) - 1)] for j in range(num_steps)]

    def steps(
        self, loss_fn: InnerLoss, params: Params, num_tasks: int, num_steps: int, stacked: bool | None = False
    ) -> Iterator[Params]:
        """:func:`metarl.maml.adapt_steps` with this rule: the stacked parameters after each of ``num_steps`` steps."""
        return adapt_steps(
            loss_fn, params, num_tasks, self.lrs(num_steps), self.first_order, self.adapted, stacked, self.optimizer
        )

    def detached(self) -> InnerRule:
        """The same rule with learned sizes as plain tensors and first-order steps (for evaluation)."""
        sizes = tuple(
            s if isinstance(s, float | int) else {n: t.detach() for n, t in s.items()} for s in self.step_sizes
        )
        return replace(self, step_sizes=sizes, first_order=True)

    def mean_step_sizes(self, num_steps: int) -> list[float]:
        """Each step's step size as one number (the mean over every adapted element), for tables and plots."""
        return [float(s) if isinstance(s, float | int) else mean_step_size(s) for s in self.lrs(num_steps)]

    def describe(self) -> str:
        """One line, e.g. ``SGD, step 0.01`` or ``SGD, learned per-parameter step sizes (mean 0.012); adapts ...``."""
        how = "Adam" if self.optimizer is not None else "SGD"
        first = self.step_sizes[0]
        if len(self.step_sizes) == 1 and isinstance(first, float | int):
            text = f"{how}, step {first:g}"
        else:
            means = ", ".join(f"{m:.4g}" for m in self.mean_step_sizes(len(self.step_sizes)))
            if len(self.step_sizes) == 1:
                text = f"{how}, learned per-parameter step sizes (mean {means})"
            else:
                text = f"{how}, learned per-layer step sizes of steps 1..{len(self.step_sizes)} (means {means}; "
                text += "the last one beyond)"
        if self.adapted is not None:
            text += f"; adapts {', '.join(sorted(self.adapted))}"
        return text


def inner_rule(
    config: Config,
    model: FunctionalModel,
    extra: Mapping[str, Any] | None = None,
    step_sizes: LearnedStepSizes | None = None,
    iteration: int | None = None,
) -> InnerRule:
    """The inner rule of a config's algorithm for ``model``: the one function from a run to how it adapts.

    Learned step sizes come from ``step_sizes`` (training: live, differentiable) or from a
    checkpoint's ``extra`` state (evaluation: plain tensors); an algorithm that learns them and
    gets neither raises :class:`CheckpointError`. ``iteration`` sets the derivative order of
    that meta-iteration (training); without it the rule is first order (evaluation).
    """
    spec = ALGORITHMS[config.maml.algorithm]
    adapted = adapted_names(config, model)
    sizes: tuple[StepSize, ...]
    if spec.step_sizes == "fixed":
        sizes = (config.maml.inner_lr,)
    else:
        if step_sizes is None:
            state = (extra or {}).get("step_sizes")
            if state is None:
                raise CheckpointError(
                    f"maml.algorithm={config.maml.algorithm!r} adapts with learned step sizes, but the checkpoint "
                    "holds none (it was not written by that algorithm's training)"
                )
            step_sizes = LearnedStepSizes.from_state(state)
            step_sizes.requires_grad_(False)
        expected = sorted(adapted if adapted is not None else model.params())
        if sorted(step_sizes.names) != expected:
            raise CheckpointError(
                f"the learned step sizes are for {sorted(step_sizes.names)}, but the config adapts {expected}"
            )
        sizes = step_sizes.sizes()
    optimizer = None
    if spec.name == "reptile" and config.reptile.inner_optimizer == "adam":
        optimizer = InnerAdam(beta1=config.reptile.adam_beta1)
    first_order = True if iteration is None else first_order_at(config, iteration)
    return InnerRule(sizes, adapted, first_order, optimizer)


def with_rule(adaptation: AdaptationSettings, rule: InnerRule) -> AdaptationSettings:
    """The policy-gradient inner-loop settings with ``rule``'s adapted parameters and learned step sizes
    (a rule of fixed step sizes keeps ``adaptation.inner_lr``, and with it the evaluation's α, α/2 protocol)."""
    learned = any(not isinstance(s, float | int) for s in rule.step_sizes)
    return replace(adaptation, step_sizes=rule.step_sizes if learned else None, adapted=rule.adapted)


def checkpoint_inner_rule(checkpoint: Checkpoint) -> InnerRule:
    """How a checkpoint's model adapts: its algorithm's adapted subset and its learned step sizes."""
    return inner_rule(checkpoint.config, checkpoint.policy, checkpoint.extra)


# --------------------------------------------------------------------------- the outer step


@dataclass(frozen=True)
class MetaLoss:
    """The meta-objective of one meta-batch and its diagnostics."""

    objective: Tensor
    """What the outer step differentiates: ``sum_j w_j mean_i L_query,i(φ_i after step j)``."""
    pre: Tensor
    """Mean over tasks of the inner loss at θ (the first inner step's loss; detached)."""
    post: Tensor
    """Mean over tasks of the query loss after the last step (detached)."""
    per_step: list[Tensor]
    """Mean query loss after each step 1..k (detached); only the steps with a weight."""


def meta_loss(
    inner_loss: InnerLoss,
    query_loss: QueryLoss,
    params: Params,
    num_tasks: int,
    rule: InnerRule,
    num_steps: int,
    weights: Sequence[float] | None = None,
    stacked: bool | None = False,
) -> MetaLoss:
    """Adapt every task with ``rule`` (``num_steps`` steps) and weigh the query losses: the outer objective.

    ``weights`` (one per step; MAML++'s multi-step loss) weigh the query loss after every step;
    ``None`` counts the last step only (MAML, Meta-SGD, ANIL). Differentiable in ``params`` and
    in learned step sizes through the inner loop (first or second order, as ``rule`` says).
    """
    if num_steps < 1:
        raise ValueError("the meta-objective needs at least one inner step")
    w = [0.0] * (num_steps - 1) + [1.0] if weights is None else list(weights)
    if len(w) != num_steps:
        raise ValueError(f"need one weight per inner step ({num_steps}), got {len(w)}")
    first: list[Tensor] = []

    def recording(p: Params, step: int) -> Tensor:
        loss = inner_loss(p, step)
        if step == 0:
            first.append(loss.detach() / num_tasks)
        return loss

    terms: list[Tensor] = []
    per_step: list[Tensor] = []
    post = torch.zeros(())
    for j, adapted in enumerate(rule.steps(recording, params, num_tasks, num_steps, stacked)):
        if w[j] == 0.0 and j < num_steps - 1:
            continue
        value = query_loss(adapted).mean()
        per_step.append(value.detach())
        if w[j] != 0.0:
            terms.append(w[j] * value)
        if j == num_steps - 1:
            post = value.detach()
    return MetaLoss(torch.stack(terms).sum(), first[0], post, per_step)


class MetaLearner:
    """θ's meta-update for every algorithm of the family, given any inner loss and query loss.

    Owns what the algorithm learns besides θ (:class:`LearnedStepSizes`) and the outer
    optimiser: Adam over θ and the step sizes (``outer.lr``; MAML++ cosine-anneals it), or none
    for Reptile, whose meta-update is ``θ ← θ + ε (mean_i φ_i − θ)`` with ε annealed linearly.
    :meth:`step` runs one meta-iteration on a meta-batch; :meth:`extra_state` is what a
    checkpoint must carry.
    """

    def __init__(self, config: Config, model: FunctionalModel, loss_name: str = "loss") -> None:
        self.config = config
        self.model = model
        self.loss_name = loss_name
        self.spec = ALGORITHMS[config.maml.algorithm]
        self.adapted = adapted_names(config, model)
        self.step_sizes = learned_step_sizes(config, model)
        self.optimizer: torch.optim.Adam | None = None
        if self.spec.name != "reptile":
            groups: list[dict[str, Any]] = [{"params": list(model.parameters()), "base_lr": config.outer.lr}]
            if self.step_sizes is not None:
                base = config.outer.step_size_lr or config.outer.lr
                groups.append({"params": list(self.step_sizes.parameters()), "lr": base, "base_lr": base})
            # the fused kernel: about 3x faster than foreach on these tiny tensors
            self.optimizer = torch.optim.Adam(groups, lr=config.outer.lr, fused=True)

    def rule(self, iteration: int | None = None) -> InnerRule:
        """The inner rule of meta-iteration ``iteration`` (live step sizes; first order where the algorithm says)."""
        return inner_rule(self.config, self.model, step_sizes=self.step_sizes, iteration=iteration)

    def step_weights(self, iteration: int) -> list[float] | None:
        """The multi-step loss weights (MAML++), else ``None`` (the last step only)."""
        if self.spec.name != "mamlpp":
            return None
        k = self.config.maml.num_inner_steps
        return multi_step_loss_weights(k, iteration, multi_step_loss_iterations(self.config))

    def outer_lr(self, iteration: int) -> float:
        """The outer learning rate at ``iteration``: ``outer.lr``, cosine-annealed for MAML++ (to
        ``mamlpp.min_outer_lr``; the step sizes' own rate ``outer.step_size_lr`` in proportion)."""
        lr = self.config.outer.lr
        if self.spec.name == "mamlpp":
            return cosine_lr(lr, self.config.mamlpp.min_outer_lr, iteration, self.config.train.iterations)
        return lr

    def reptile_step_size(self, iteration: int) -> float:
        """Reptile's ε at ``iteration``: from ``reptile.outer_step_size`` to ``reptile.final_outer_step_size``."""
        r = self.config.reptile
        return linear_anneal(r.outer_step_size, r.final_outer_step_size, iteration, self.config.train.iterations)

    def step(self, iteration: int, inner_loss: InnerLoss, query_loss: QueryLoss, num_tasks: int) -> dict[str, float]:
        """One meta-update on a meta-batch; returns ``loss_pre``, ``loss_post`` and the algorithm's scalars.

        Raises :class:`FloatingPointError` if a loss or the meta-gradient is not finite (the
        parameters are then left untouched).
        """
        if self.spec.name == "reptile":
            return self._reptile_step(iteration, inner_loss, query_loss, num_tasks)
        assert self.optimizer is not None
        k = self.config.maml.num_inner_steps
        rule = self.rule(iteration)
        weights = self.step_weights(iteration)
        result = meta_loss(inner_loss, query_loss, self.model.params(), num_tasks, rule, k, weights)
        if not torch.isfinite(result.objective):
            raise FloatingPointError(f"post-adaptation {self.loss_name} is not finite ({result.objective.item()})")
        self.optimizer.zero_grad(set_to_none=True)
        result.objective.backward()
        grads = [p.grad for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        if not torch.isfinite(grad_norm):
            raise FloatingPointError(f"meta-gradient is not finite (norm {grad_norm.item()})")
        lr = self.outer_lr(iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = group.get("base_lr", self.config.outer.lr) * lr / self.config.outer.lr
        self.optimizer.step()
        stats = {"loss_pre": result.pre.item(), "loss_post": result.post.item(), "outer/grad_norm": grad_norm.item()}
        if self.step_sizes is not None:
            means = rule.detached().mean_step_sizes(len(rule.step_sizes))
            stats["inner/step_size_mean"] = sum(means) / len(means)
        if self.spec.name == "mamlpp":
            assert weights is not None
            stats |= {"outer/lr": lr, "mamlpp/final_step_weight": weights[-1], "mamlpp/first_order": rule.first_order}
        return stats

    def _reptile_step(
        self, iteration: int, inner_loss: InnerLoss, query_loss: QueryLoss, num_tasks: int
    ) -> dict[str, float]:
        """Batched Reptile: φ_i = k inner steps from θ on task i's support loss (all tasks at once), then
        ``θ ← θ + ε (mean_i φ_i − θ)``."""
        theta = {n: p.detach() for n, p in self.model.params().items()}
        first: list[Tensor] = []

        def recording(p: Params, step: int) -> Tensor:
            loss = inner_loss(p, step)
            if step == 0:
                first.append(loss.detach() / num_tasks)
            return loss

        phi = theta
        for phi in self.rule(iteration).steps(recording, theta, num_tasks, self.config.maml.num_inner_steps):  # noqa: B007
            pass
        with torch.no_grad():
            post = query_loss(phi).mean()
            if not torch.isfinite(post):
                raise FloatingPointError(f"post-adaptation {self.loss_name} is not finite ({post.item()})")
            epsilon = self.reptile_step_size(iteration)
            for name, p in self.model.named_parameters():
                p.add_(epsilon * (phi[name].detach().mean(0) - p))
        return {"loss_pre": first[0].item(), "loss_post": post.item(), "reptile/outer_step_size": epsilon}

    def extra_state(self) -> dict[str, Any]:
        """What a checkpoint must carry besides θ and the optimiser: the learned step sizes."""
        return {} if self.step_sizes is None else {"step_sizes": self.step_sizes.state()}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`extra_state` on resume; :class:`CheckpointError` if the checkpoint lacks it."""
        if self.step_sizes is None:
            return
        if "step_sizes" not in state:
            raise CheckpointError(
                f"the checkpoint holds no learned step sizes, which maml.algorithm={self.spec.name!r} needs to resume"
            )
        self.step_sizes.load_state(state["step_sizes"])
