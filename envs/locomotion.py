"""MuJoCo goal-velocity and goal-direction locomotion tasks (Finn et al. 2017, section 5.3).

Four task envs on gymnasium's v5 models, each in a single form (a subclass of the v5 env,
whose ``step`` is reused and whose forward-reward term is replaced by the task's) and a
natively vectorised form (:class:`~metarl.envs.base.TaskVectorEnv`):

=========================  ====================  ================================================
env                        task                  forward term (``info["reward_forward"]``)
=========================  ====================  ================================================
``HalfCheetahVelEnv``      ``{"velocity": v}``   ``-|v_x - v|``, v ~ U[0, 2]
``HalfCheetahDirEnv``      ``{"direction": d}``  ``d * v_x``, d = +1 or -1 with equal probability
``AntVelEnv``              ``{"velocity": v}``   ``-|v_x - v|``, v ~ U[0, 3]
``AntDirEnv``              ``{"direction": d}``  ``d * v_x``, d = +1 or -1
=========================  ====================  ================================================

``v_x`` is the v5 envs' forward velocity, ``(x_after - x_before) / dt``. The cheetah's reward
is ``forward_term - 0.05 ||a||^2`` (the paper's control weight; v5 uses 0.1). The ant keeps
every other Ant-v5 part: ``forward_term + healthy_reward - ctrl_cost - contact_cost``, with
termination when the torso leaves ``healthy_z_range``, and the v5 default observation
(105 values: qpos without x/y, qvel, and the clipped external contact forces ``cfrc_ext``
of the 13 bodies). All weights are constructor kwargs with the v5 names; reward parts are in
``info``. By default actions are not clipped (as in gymnasium: MuJoCo clamps the controls
to the actuators' range, and the control cost uses the action as given). With
``clip_actions=True`` the action is clipped to the action space before the physics and the
control cost, as the MAML paper's rllab code did (its ``normalize`` wrapper clipped to the
bounds): a Gaussian policy's exploration noise beyond the bounds then costs nothing.

Control step: the v5 models integrate with a physics timestep of 0.01 s and hold each action
for ``frame_skip`` physics steps (v5 default 5, so dt = 0.05 s). The MAML paper's rllab envs
applied one action per physics step: the cheetah at dt = 0.01 s and the ant at 0.02 s, so
H = 200 was 2 s and 4 s of simulated time, not 10 s. ``frame_skip=1`` (cheetah) and
``frame_skip=2`` (ant) reproduce the paper's control rate on the v5 models. The shipped
configs set them.

rllab options (``reset_noise`` and ``forward_velocity``, both forms; defaults are gymnasium's):

* ``reset_noise="gymnasium"`` (default): v5's ``reset_model``, ``qpos = init_qpos + U(-s, s)`` on
  every coordinate of qpos and ``qvel = init_qvel + s * N(0, 1)``, ``s = reset_noise_scale``
  (0.1), ``init_qpos`` the model's ``qpos0``. ``reset_noise="rllab"``: rllab's
  ``MujocoEnv.reset_mujoco`` (rllab/envs/mujoco/mujoco_env.py, ``reset_mujoco``), ``qpos =
  init_qpos + 0.01 * N(0, 1)`` on every coordinate of qpos and ``qvel = init_qvel + 0.1 * N(0, 1)``
  (``reset_noise_scale`` is not used), where rllab's ``init_qpos`` is the model's ``init_qpos``
  custom numeric when it has one (``MujocoEnv.__init__``): the Ant's XML (rllab's and gymnasium's)
  defines one, the torso at z = 0.55 with the ankles bent into their joint ranges, which gymnasium
  ignores (it starts at ``qpos0``: z = 0.75, every joint at 0). The cheetah has none (``qpos0``).
* ``forward_velocity="torso_fd"`` (default): v5's ``v_x``, the finite difference of the torso's
  position over the control step. ``forward_velocity="subtree_com"``: rllab's
  ``get_body_comvel("torso")[0]`` (rllab/mujoco_py/mjcore.py, ``MjModel._compute_subtree``): the
  linear velocity of the centre of mass of the torso's subtree (for both robots every body but
  the world, so the whole robot's centre of mass), at the state after the step (rllab calls
  ``model.forward()`` after stepping), i.e. the mass-weighted mean of the bodies' centre-of-mass
  velocities (``mj_objectVelocity(mjOBJ_BODY)``) = MuJoCo's ``subtree_linvel`` of the torso. It is
  computed on a separate ``MjData`` (a separate batch in the vector form): the simulation itself
  is untouched. ``info["x_velocity"]`` (and the Ant's ``y_velocity``) is then this velocity.

Identical transitions in both forms: the vector envs draw each episode's reset noise with
``gymnasium.utils.seeding.np_random(seed_i)`` exactly as ``reset(seed=seed_i)`` does, and
step the same physics (see :mod:`metarl.envs.mujoco_batch` for how, and why the Ant's contact forces
need one ``MjData`` per episode).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

import mujoco
import numpy as np
from gymnasium import utils
from gymnasium.envs.mujoco.ant_v5 import AntEnv
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv
from gymnasium.utils import seeding
from metarl.envs.base import Task, TaskVectorEnv, episode_seeds
from metarl.envs.mujoco_batch import BatchPhysics, KinematicsProbe, PerEnvPhysics, resolve_num_threads

# --------------------------------------------------------------------------- task families


class TaskFamily(Protocol):
    """A distribution of one-parameter tasks and the forward-reward term it defines."""

    key: ClassVar[str]

    def default_task(self) -> Task:
        """The task a freshly built env runs."""
        ...

    def sample(self, n: int, rng: np.random.Generator) -> list[Task]:
        """Draw ``n`` tasks using only ``rng``."""
        ...

    def value_of(self, task: Mapping[str, float]) -> float:
        """The task's parameter, validated."""
        ...

    def forward_term(self, x_velocity: Any, value: Any) -> Any:
        """The task's forward-reward term (works on scalars and on arrays)."""
        ...


def _check_count(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"number of tasks must be a non-negative integer, got {n!r}")
    return int(n)


def _task_value(task: Mapping[str, float], key: str) -> float:
    """``task[key]`` as a finite float, or a clear error."""
    if not isinstance(task, Mapping) or set(task) != {key}:
        raise ValueError(f"a task of this env is a mapping with exactly the key {key!r}, got {task!r}")
    value = float(task[key])
    if not math.isfinite(value):
        raise ValueError(f"task[{key!r}] must be finite, got {value}")
    return value


@dataclass(frozen=True)
class GoalVelocityTasks:
    """Goal forward velocities ``v ~ U[low, high]``; forward term ``-|v_x - v|``."""

    low: float
    high: float
    key: ClassVar[str] = "velocity"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low <= self.high):
            raise ValueError(
                f"goal velocity range must be finite with velocity_low <= velocity_high, "
                f"got velocity_low={self.low}, velocity_high={self.high}"
            )

    def default_task(self) -> Task:
        return {self.key: 0.5 * (self.low + self.high)}

    def sample(self, n: int, rng: np.random.Generator) -> list[Task]:
        velocities = rng.uniform(self.low, self.high, size=_check_count(n))
        return [{self.key: float(v)} for v in velocities]

    def value_of(self, task: Mapping[str, float]) -> float:
        return _task_value(task, self.key)

    def forward_term(self, x_velocity: Any, value: Any) -> Any:
        return -np.abs(x_velocity - value)


@dataclass(frozen=True)
class GoalDirectionTasks:
    """Directions ``d`` = +1 or -1 along x with equal probability; forward term ``d * v_x``."""

    key: ClassVar[str] = "direction"

    def default_task(self) -> Task:
        return {self.key: 1.0}

    def sample(self, n: int, rng: np.random.Generator) -> list[Task]:
        directions = 2 * rng.integers(0, 2, size=_check_count(n)) - 1
        return [{self.key: float(d)} for d in directions]

    def value_of(self, task: Mapping[str, float]) -> float:
        value = _task_value(task, self.key)
        if value not in (-1.0, 1.0):
            raise ValueError(f"task['direction'] must be +1 or -1, got {value}")
        return value

    def forward_term(self, x_velocity: Any, value: Any) -> Any:
        return value * x_velocity


# --------------------------------------------------------------------------- single envs


def _check_nonnegative(**values: float) -> None:
    for name, value in values.items():
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be finite and >= 0, got {value}")


def _check_flag(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return bool(value)


def _check_range(name: str, value: tuple[float, float]) -> tuple[float, float]:
    low, high = (float(v) for v in value)
    if not low < high:
        raise ValueError(f"{name} must be (low, high) with low < high, got {value}")
    return low, high


ResetNoise = Literal["gymnasium", "rllab"]
ForwardVelocity = Literal["torso_fd", "subtree_com"]
RESET_NOISES: tuple[str, ...] = ("gymnasium", "rllab")
FORWARD_VELOCITIES: tuple[str, ...] = ("torso_fd", "subtree_com")
RLLAB_QPOS_NOISE = 0.01
"""rllab's ``reset_mujoco``: ``qpos = init_qpos + 0.01 * N(0, 1)``."""
RLLAB_QVEL_NOISE = 0.1
"""rllab's ``reset_mujoco``: ``qvel = init_qvel + 0.1 * N(0, 1)``."""


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return str(value)


def reset_mean_qpos(model: mujoco.MjModel, init_qpos: np.ndarray, reset_noise: str) -> np.ndarray:
    """The qpos that resets perturb: gymnasium's ``init_qpos`` (``qpos0``), or rllab's, the model's
    ``init_qpos`` custom numeric if it has one (rllab's ``MujocoEnv.__init__``), else ``qpos0``."""
    numeric = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_NUMERIC, "init_qpos")
    if reset_noise == "gymnasium" or numeric < 0:
        return np.array(init_qpos, dtype=np.float64)
    values = np.array(model.numeric(numeric).data, dtype=np.float64)
    if values.shape != (model.nq,):
        raise ValueError(f"the model's init_qpos numeric has {values.size} values, the model has nq={model.nq}")
    return values


def draw_initial_state(
    rng: np.random.Generator, reset_noise: str, qpos: np.ndarray, qvel: np.ndarray, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """One reset's ``(qpos, qvel)`` from ``rng``: v5's ``reset_model`` draws (``gymnasium``, noise scale
    ``scale``) or rllab's ``reset_mujoco`` draws (``rllab``), in the same order (qpos first)."""
    if reset_noise == "gymnasium":
        new_qpos = qpos + rng.uniform(low=-scale, high=scale, size=qpos.size)
        new_qvel = qvel + scale * rng.standard_normal(qvel.size)
    else:
        new_qpos = qpos + RLLAB_QPOS_NOISE * rng.standard_normal(qpos.size)
        new_qvel = qvel + RLLAB_QVEL_NOISE * rng.standard_normal(qvel.size)
    return new_qpos, new_qvel


class SubtreeComVelocity:
    """rllab's ``get_body_comvel(body)``: the linear velocity of the centre of mass of ``body``'s subtree.

    rllab (``MjModel._compute_subtree``) takes every body's 6D velocity at its centre of mass in
    world orientation (``mj_objectVelocity(mjOBJ_BODY, flg_local=0)``), weighs the linear part by
    the body's mass, sums the momenta up the tree and divides by the subtree's mass. Here the same
    from the position and velocity stages (``xipos``, ``cvel``, ``subtree_com``, batched
    ``[n, nbody, ...]``): a body's linear velocity at its centre of mass is
    ``cvel_lin + cvel_ang x (xipos - subtree_com[rootid])``. The sum over bodies runs in a fixed
    order, so every row gives the same bits whatever ``n`` is.
    """

    def __init__(self, model: mujoco.MjModel, body: int) -> None:
        parents = model.body_parentid
        members = []
        for b in range(model.nbody):
            a = b
            while a != body and a != 0:
                a = int(parents[a])
            if a == body:
                members.append(b)
        self.body = int(body)
        self.bodies = np.array(members, dtype=np.intp)
        self.roots = np.array(model.body_rootid[self.bodies], dtype=np.intp)
        self.mass = np.array(model.body_mass[self.bodies], dtype=np.float64)
        self.total_mass = float(sum(self.mass.tolist()))
        if not self.total_mass > 0:
            raise ValueError(f"the subtree of body {body} has no mass")

    def __call__(self, xipos: np.ndarray, cvel: np.ndarray, subtree_com: np.ndarray) -> np.ndarray:
        """``[n, 3]`` subtree centre-of-mass velocities from ``[n, nbody, ...]`` stage fields."""
        offset = xipos[:, self.bodies] - subtree_com[:, self.roots]
        velocity = cvel[:, self.bodies]
        linear = velocity[..., 3:] + np.cross(velocity[..., :3], offset)
        momentum = self.mass[0] * linear[:, 0]
        for j in range(1, self.bodies.size):
            momentum = momentum + self.mass[j] * linear[:, j]
        return momentum / self.total_mass


class _TaskMixin:
    """The task protocol on top of a v5 env: a validated ``task`` property and ``sample_tasks``;
    optional clipping of the action to the action space (``clip_actions``); the rllab options
    ``reset_noise`` and ``forward_velocity`` (module docstring)."""

    task_family: TaskFamily
    _task_value: float
    clip_actions: bool = False
    action_space: Any
    model: mujoco.MjModel
    data: mujoco.MjData
    init_qpos: np.ndarray
    init_qvel: np.ndarray
    np_random: np.random.Generator
    reset_noise: str = "gymnasium"
    forward_velocity: str = "torso_fd"
    reset_qpos: np.ndarray
    """The qpos that resets perturb (:func:`reset_mean_qpos`)."""
    velocity_subtree: SubtreeComVelocity | None = None
    """With ``forward_velocity="subtree_com"``: the torso's subtree, whose COM velocity drives the task."""
    _probe: mujoco.MjData | None = None
    _com_velocity: np.ndarray | None = None

    def _setup_rllab_options(self, reset_noise: str, forward_velocity: str, torso: int) -> None:
        """After the v5 constructor: the reset mean and the COM-velocity probe."""
        self.reset_noise, self.forward_velocity = reset_noise, forward_velocity
        self.reset_qpos = reset_mean_qpos(self.model, self.init_qpos, reset_noise)
        if forward_velocity == "subtree_com":
            self.velocity_subtree = SubtreeComVelocity(self.model, torso)
            self._probe = mujoco.MjData(self.model)

    def reset_model(self) -> np.ndarray:
        """v5's ``reset_model``, or rllab's reset draws with ``reset_noise="rllab"``."""
        if self.reset_noise == "gymnasium":
            return super().reset_model()  # type: ignore[misc]
        qpos, qvel = draw_initial_state(self.np_random, self.reset_noise, self.reset_qpos, self.init_qvel, 0.0)
        self.set_state(qpos, qvel)  # type: ignore[attr-defined]
        return self._get_obs()  # type: ignore[attr-defined]

    def subtree_com_velocity(self) -> np.ndarray:
        """The torso subtree's centre-of-mass velocity ``[3]`` at the current state (probe ``MjData``)."""
        assert self._probe is not None and self.velocity_subtree is not None
        probe = self._probe
        probe.qpos[:] = self.data.qpos
        probe.qvel[:] = self.data.qvel
        mujoco.mj_kinematics(self.model, probe)
        mujoco.mj_comPos(self.model, probe)
        mujoco.mj_comVel(self.model, probe)
        return self.velocity_subtree(probe.xipos[None], probe.cvel[None], probe.subtree_com[None])[0]

    def _task_velocity(self, x_velocity: float) -> float:
        """The forward velocity of the task's term: v5's ``x_velocity``, or the subtree COM's (kept for ``info``)."""
        if self.forward_velocity == "torso_fd":
            return x_velocity
        self._com_velocity = self.subtree_com_velocity()
        return float(self._com_velocity[0])

    def step(self, action: np.ndarray) -> Any:
        """The v5 step, on the action clipped to the action space when ``clip_actions``."""
        if self.clip_actions:
            action = np.clip(action, self.action_space.low, self.action_space.high)
        self._com_velocity = None
        result = super().step(action)  # type: ignore[misc]
        if self._com_velocity is not None:
            info = result[-1]
            info["x_velocity"] = float(self._com_velocity[0])
            if "y_velocity" in info:
                info["y_velocity"] = float(self._com_velocity[1])
        return result

    @property
    def task(self) -> Task:
        """The current task; a new value applies from the next ``step``."""
        return {self.task_family.key: self._task_value}

    @task.setter
    def task(self, task: Mapping[str, float]) -> None:
        self._task_value = self.task_family.value_of(task)

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[Task]:
        """Draw ``n`` tasks from the env's task distribution using only ``rng``."""
        return self.task_family.sample(n, rng)


@dataclass(frozen=True)
class CheetahParams:
    """Reward and reset parameters of the cheetah tasks (read by the vector env)."""

    forward_reward_weight: float
    ctrl_cost_weight: float
    reset_noise_scale: float
    reset_noise: str = "gymnasium"
    forward_velocity: str = "torso_fd"


class _HalfCheetahTaskEnv(_TaskMixin, HalfCheetahEnv):
    """HalfCheetah-v5 with the forward reward replaced by a task family's term."""

    def __init__(
        self,
        task_family: TaskFamily,
        *,
        forward_reward_weight: float = 1.0,
        ctrl_cost_weight: float = 0.05,
        reset_noise_scale: float = 0.1,
        clip_actions: bool = False,
        reset_noise: ResetNoise = "gymnasium",
        forward_velocity: ForwardVelocity = "torso_fd",
        **kwargs: Any,
    ) -> None:
        _check_nonnegative(
            forward_reward_weight=forward_reward_weight,
            ctrl_cost_weight=ctrl_cost_weight,
            reset_noise_scale=reset_noise_scale,
        )
        self.clip_actions = _check_flag("clip_actions", clip_actions)
        reset_noise = _check_choice("reset_noise", reset_noise, RESET_NOISES)  # type: ignore[assignment]
        forward_velocity = _check_choice("forward_velocity", forward_velocity, FORWARD_VELOCITIES)  # type: ignore[assignment]
        super().__init__(
            forward_reward_weight=forward_reward_weight,
            ctrl_cost_weight=ctrl_cost_weight,
            reset_noise_scale=reset_noise_scale,
            **kwargs,
        )
        self.task_family = task_family
        self.params = CheetahParams(
            forward_reward_weight, ctrl_cost_weight, reset_noise_scale, reset_noise, forward_velocity
        )
        # the torso: the body of the root's x slide joint, whose position v5 differentiates
        self._setup_rllab_options(reset_noise, forward_velocity, int(self.model.jnt_bodyid[0]))
        self.task = task_family.default_task()

    def _get_rew(self, x_velocity: float, action: np.ndarray) -> tuple[float, dict[str, float]]:
        x_velocity = self._task_velocity(x_velocity)
        forward_reward = self.params.forward_reward_weight * self.task_family.forward_term(x_velocity, self._task_value)
        ctrl_cost = self.control_cost(action)
        return forward_reward - ctrl_cost, {"reward_forward": forward_reward, "reward_ctrl": -ctrl_cost}


class HalfCheetahVelEnv(_HalfCheetahTaskEnv):
    """HalfCheetah running at a goal velocity ``v ~ U[velocity_low, velocity_high]``.

    Args:
        velocity_low, velocity_high: goal velocity range (paper: [0, 2]).
        forward_reward_weight: weight of ``-|v_x - v|``.
        ctrl_cost_weight: weight of ``||a||^2`` (paper: 0.05).
        reset_noise_scale: as in HalfCheetah-v5.
        clip_actions: clip the action to [-1, 1] before the physics and the control cost
            (the paper's code; default False, as gymnasium).
        reset_noise: ``"gymnasium"`` (default) or ``"rllab"``'s reset draws (module docstring).
        forward_velocity: ``"torso_fd"`` (default, v5) or ``"subtree_com"`` (rllab; module docstring).
        **kwargs: other HalfCheetah-v5 arguments (``frame_skip``, ``xml_file``, ``render_mode``, ...).
    """

    def __init__(self, velocity_low: float = 0.0, velocity_high: float = 2.0, **kwargs: Any) -> None:
        super().__init__(GoalVelocityTasks(float(velocity_low), float(velocity_high)), **kwargs)
        utils.EzPickle.__init__(self, velocity_low=velocity_low, velocity_high=velocity_high, **kwargs)


class HalfCheetahDirEnv(_HalfCheetahTaskEnv):
    """HalfCheetah running forward (+1) or backward (-1); reward ``d * v_x - 0.05 ||a||^2``.

    Args: as :class:`HalfCheetahVelEnv`, without the velocity range.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(GoalDirectionTasks(), **kwargs)
        utils.EzPickle.__init__(self, **kwargs)


@dataclass(frozen=True)
class AntParams:
    """Reward, termination and reset parameters of the ant tasks (read by the vector env)."""

    forward_reward_weight: float
    ctrl_cost_weight: float
    contact_cost_weight: float
    healthy_reward: float
    terminate_when_unhealthy: bool
    healthy_z_range: tuple[float, float]
    contact_force_range: tuple[float, float]
    main_body_id: int
    reset_noise_scale: float
    reset_noise: str = "gymnasium"
    forward_velocity: str = "torso_fd"


class _AntTaskEnv(_TaskMixin, AntEnv):
    """Ant-v5 with the forward reward replaced by a task family's term; everything else v5."""

    def __init__(
        self,
        task_family: TaskFamily,
        *,
        forward_reward_weight: float = 1.0,
        ctrl_cost_weight: float = 0.5,
        contact_cost_weight: float = 5e-4,
        healthy_reward: float = 1.0,
        main_body: int | str = 1,
        terminate_when_unhealthy: bool = True,
        healthy_z_range: tuple[float, float] = (0.2, 1.0),
        contact_force_range: tuple[float, float] = (-1.0, 1.0),
        reset_noise_scale: float = 0.1,
        clip_actions: bool = False,
        reset_noise: ResetNoise = "gymnasium",
        forward_velocity: ForwardVelocity = "torso_fd",
        **kwargs: Any,
    ) -> None:
        _check_nonnegative(
            forward_reward_weight=forward_reward_weight,
            ctrl_cost_weight=ctrl_cost_weight,
            contact_cost_weight=contact_cost_weight,
            reset_noise_scale=reset_noise_scale,
        )
        self.clip_actions = _check_flag("clip_actions", clip_actions)
        reset_noise = _check_choice("reset_noise", reset_noise, RESET_NOISES)  # type: ignore[assignment]
        forward_velocity = _check_choice("forward_velocity", forward_velocity, FORWARD_VELOCITIES)  # type: ignore[assignment]
        healthy_z_range = _check_range("healthy_z_range", healthy_z_range)
        contact_force_range = _check_range("contact_force_range", contact_force_range)
        super().__init__(
            forward_reward_weight=forward_reward_weight,
            ctrl_cost_weight=ctrl_cost_weight,
            contact_cost_weight=contact_cost_weight,
            healthy_reward=healthy_reward,
            main_body=main_body,
            terminate_when_unhealthy=terminate_when_unhealthy,
            healthy_z_range=healthy_z_range,
            contact_force_range=contact_force_range,
            reset_noise_scale=reset_noise_scale,
            **kwargs,
        )
        self.task_family = task_family
        self.params = AntParams(
            forward_reward_weight=forward_reward_weight,
            ctrl_cost_weight=ctrl_cost_weight,
            contact_cost_weight=contact_cost_weight,
            healthy_reward=healthy_reward,
            terminate_when_unhealthy=bool(terminate_when_unhealthy),
            healthy_z_range=healthy_z_range,
            contact_force_range=contact_force_range,
            main_body_id=int(self.model.body(main_body).id),
            reset_noise_scale=reset_noise_scale,
            reset_noise=reset_noise,
            forward_velocity=forward_velocity,
        )
        self._setup_rllab_options(reset_noise, forward_velocity, self.params.main_body_id)
        self.task = task_family.default_task()

    def _get_rew(self, x_velocity: float, action: np.ndarray) -> tuple[float, dict[str, float]]:
        # Ant-v5's _get_rew with the task's forward term (same operation order as v5).
        x_velocity = self._task_velocity(x_velocity)
        forward_reward = self.params.forward_reward_weight * self.task_family.forward_term(x_velocity, self._task_value)
        healthy_reward = self.healthy_reward
        rewards = forward_reward + healthy_reward
        ctrl_cost = self.control_cost(action)
        contact_cost = self.contact_cost
        costs = ctrl_cost + contact_cost
        reward_info = {
            "reward_forward": forward_reward,
            "reward_ctrl": -ctrl_cost,
            "reward_contact": -contact_cost,
            "reward_survive": healthy_reward,
        }
        return rewards - costs, reward_info


class AntVelEnv(_AntTaskEnv):
    """Ant running along x at a goal velocity ``v ~ U[velocity_low, velocity_high]`` (paper: [0, 3]).

    Args:
        velocity_low, velocity_high: goal velocity range.
        **kwargs: Ant-v5 arguments, same names and defaults (``ctrl_cost_weight=0.5``,
            ``contact_cost_weight=5e-4``, ``healthy_reward=1``, ``healthy_z_range=(0.2, 1)``,
            ``include_cfrc_ext_in_observation=True``, ...); ``forward_reward_weight`` weighs
            ``-|v_x - v|``; ``clip_actions``, ``reset_noise`` and ``forward_velocity`` as
            :class:`HalfCheetahVelEnv`.
    """

    def __init__(self, velocity_low: float = 0.0, velocity_high: float = 3.0, **kwargs: Any) -> None:
        super().__init__(GoalVelocityTasks(float(velocity_low), float(velocity_high)), **kwargs)
        utils.EzPickle.__init__(self, velocity_low=velocity_low, velocity_high=velocity_high, **kwargs)


class AntDirEnv(_AntTaskEnv):
    """Ant running forward (+1) or backward (-1) along x; forward term ``d * v_x``.

    Args: Ant-v5 arguments, as :class:`AntVelEnv`.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(GoalDirectionTasks(), **kwargs)
        utils.EzPickle.__init__(self, **kwargs)


# --------------------------------------------------------------------------- vector envs


class _LocomotionVectorEnv(TaskVectorEnv):
    """Shared reset/step logic: seeded reset noise, batched physics, no auto-reset.

    After a sub-episode terminates it is no longer simulated; its outputs stay finite but
    are meaningless until the next ``reset`` (the sampler masks them).
    """

    single_env_class: ClassVar[type]

    def __init__(
        self,
        num_envs: int,
        max_episode_steps: int | None = None,
        num_threads: int | None = None,
        **env_kwargs: Any,
    ) -> None:
        super().__init__(num_envs, self.single_env_class(**env_kwargs), max_episode_steps)
        env = self.single_env.unwrapped
        self.num_threads = resolve_num_threads(num_threads)
        self._family: TaskFamily = env.task_family
        self._dt = float(env.dt)
        self._init_qpos = env.reset_qpos.copy()  # gymnasium's init_qpos, or rllab's (reset_noise)
        self._init_qvel = env.init_qvel.copy()
        self._reset_noise_scale = float(env.params.reset_noise_scale)
        self._reset_noise = env.reset_noise
        self._skipped_qpos = int(env.observation_structure["skipped_qpos"])
        self._act_dim = int(env.action_space.shape[0])
        self._action_bounds = (env.action_space.low, env.action_space.high) if env.clip_actions else None
        backend = PerEnvPhysics if self._needs_contact_forces() else BatchPhysics
        self._physics: BatchPhysics | PerEnvPhysics = backend(env.model, num_envs, env.frame_skip, self.num_threads)
        # forward_velocity="subtree_com": the stages at the post-step states, on a batch of their own
        self._velocity_subtree: SubtreeComVelocity | None = env.velocity_subtree
        self._probe = KinematicsProbe(env.model, num_envs, self.num_threads) if env.velocity_subtree else None
        self._rngs: list[np.random.Generator | None] = [None] * num_envs
        self._terminated = np.zeros(num_envs, dtype=bool)
        self._needs_reset = True

    def _needs_contact_forces(self) -> bool:
        """Whether the observation or reward uses ``cfrc_ext`` (subclass hook)."""
        return False

    def _apply_tasks(self, tasks: Sequence[Task]) -> None:
        family = self.single_env.unwrapped.task_family
        self._task_values = np.array([family.value_of(task) for task in tasks], dtype=np.float64)

    def reset(self, *, seed: int | Sequence[int] | None = None, options: dict[str, Any] | None = None):
        """Reset every sub-episode; with seeds ``[s_0, ...]`` episode ``i`` is the single env's ``reset(seed=s_i)``."""
        if options:
            raise ValueError(f"{type(self).__name__}.reset takes no options (it resets all episodes), got {options!r}")
        qpos = np.empty((self.num_envs, self._init_qpos.size))
        qvel = np.empty((self.num_envs, self._init_qvel.size))
        scale = self._reset_noise_scale
        for i, episode_seed in enumerate(episode_seeds(seed, self.num_envs)):
            rng = self._rngs[i]
            if episode_seed is not None or rng is None:
                rng, _ = seeding.np_random(episode_seed)
                self._rngs[i] = rng
            # the single env's reset_model: the same draws in the same order
            qpos[i], qvel[i] = draw_initial_state(rng, self._reset_noise, self._init_qpos, self._init_qvel, scale)
        self._physics.reset(qpos, qvel)
        self._terminated[:] = False
        self._needs_reset = False
        return self._observe(), self._position_info()

    def step(self, actions: np.ndarray):
        """Step every running sub-episode with ``actions[i]`` (``[num_envs, act_dim]``).

        Actions are clipped only with ``clip_actions``.
        """
        if self._needs_reset:
            raise RuntimeError(f"{type(self).__name__}.step called before reset")
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs, self._act_dim):
            raise ValueError(f"actions must have shape {(self.num_envs, self._act_dim)}, got {actions.shape}")
        if not np.issubdtype(actions.dtype, np.floating):
            actions = actions.astype(np.float64)
        if self._action_bounds is not None:
            actions = np.clip(actions, *self._action_bounds)
        running = np.flatnonzero(~self._terminated) if self._terminated.any() else None
        before = self._tracked_position()
        if running is None or running.size:
            self._physics.step(actions, running)
        velocity = (self._tracked_position() - before) / self._dt
        if self._probe is not None and self._velocity_subtree is not None:
            if running is None or running.size:
                self._probe.evaluate(self._physics.qpos, self._physics.qvel, running)
            probe = self._probe
            com_velocity = self._velocity_subtree(probe.xipos, probe.cvel, probe.subtree_com)
            velocity = com_velocity[:, : velocity.shape[1]]
        forward_term = self._family.forward_term(velocity[:, 0], self._task_values)
        squared_action = np.sum(np.square(actions), axis=-1)  # in the actions' dtype, as the single env
        rewards, terminated, infos = self._rewards(forward_term, squared_action, velocity)
        self._terminated |= terminated
        return self._observe(), rewards, self._terminated.copy(), np.zeros(self.num_envs, dtype=bool), infos

    def close_extras(self, **kwargs: Any) -> None:
        self._physics.close()
        if self._probe is not None:
            self._probe.close()
        super().close_extras(**kwargs)

    # subclass hooks
    def _tracked_position(self) -> np.ndarray:
        """``[num_envs, k]`` copy of the position whose change gives the velocity (x first)."""
        raise NotImplementedError

    def _observe(self) -> np.ndarray:
        """``[num_envs, obs_dim]`` observations, as the single env's ``_get_obs``."""
        raise NotImplementedError

    def _position_info(self) -> dict[str, np.ndarray]:
        """The position entries of ``info`` (the single env's reset info)."""
        raise NotImplementedError

    def _rewards(
        self, forward_term: np.ndarray, squared_action: np.ndarray, velocity: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Rewards, terminations and infos from the task's forward term, ``||a||^2`` and the velocity."""
        raise NotImplementedError


class _HalfCheetahTaskVectorEnv(_LocomotionVectorEnv):
    """Vectorised HalfCheetah task env on :class:`~metarl.envs.mujoco_batch.BatchPhysics`."""

    def _tracked_position(self) -> np.ndarray:
        return self._physics.qpos[:, :1].copy()  # the root's x slide joint, as HalfCheetah-v5

    def _observe(self) -> np.ndarray:
        return np.concatenate([self._physics.qpos[:, self._skipped_qpos :], self._physics.qvel], axis=1)

    def _position_info(self) -> dict[str, np.ndarray]:
        return {"x_position": self._physics.qpos[:, 0].copy()}

    def _rewards(self, forward_term, squared_action, velocity):
        params: CheetahParams = self.single_env.unwrapped.params
        forward_reward = params.forward_reward_weight * forward_term
        ctrl_cost = params.ctrl_cost_weight * squared_action
        infos = {
            **self._position_info(),
            "x_velocity": velocity[:, 0],
            "reward_forward": forward_reward,
            "reward_ctrl": -ctrl_cost,
        }
        return forward_reward - ctrl_cost, np.zeros(self.num_envs, dtype=bool), infos


class _AntTaskVectorEnv(_LocomotionVectorEnv):
    """Vectorised Ant task env.

    With contact forces in the observation or the reward (the v5 default) it steps one
    ``MjData`` per episode (:class:`~metarl.envs.mujoco_batch.PerEnvPhysics`), otherwise a
    :class:`~metarl.envs.mujoco_batch.BatchPhysics`.
    """

    def _needs_contact_forces(self) -> bool:
        env = self.single_env.unwrapped
        return env.params.contact_cost_weight != 0 or env.observation_structure["cfrc_ext"] > 0

    def _tracked_position(self) -> np.ndarray:
        # Ant-v5 uses the main body's xpos as left by the last mj_step / mj_forward
        return self._physics.xpos[:, self.single_env.unwrapped.params.main_body_id, :2].copy()

    def _contact_forces(self) -> np.ndarray:
        """``[num_envs, nbody, 6]`` clipped ``cfrc_ext`` (Ant-v5's ``contact_forces``)."""
        low, high = self.single_env.unwrapped.params.contact_force_range
        return np.clip(self._physics.cfrc_ext, low, high)

    def _observe(self) -> np.ndarray:
        parts = [self._physics.qpos[:, self._skipped_qpos :], self._physics.qvel]
        if self.single_env.unwrapped.observation_structure["cfrc_ext"] > 0:
            parts.append(self._contact_forces()[:, 1:].reshape(self.num_envs, -1))
        return np.concatenate(parts, axis=1)

    def _position_info(self) -> dict[str, np.ndarray]:
        qpos = self._physics.qpos
        return {
            "x_position": qpos[:, 0].copy(),
            "y_position": qpos[:, 1].copy(),
            "distance_from_origin": np.linalg.norm(qpos[:, 0:2], ord=2, axis=1),
        }

    def _rewards(self, forward_term, squared_action, velocity):
        params: AntParams = self.single_env.unwrapped.params
        qpos, qvel = self._physics.qpos, self._physics.qvel
        min_z, max_z = params.healthy_z_range
        healthy = (
            np.isfinite(qpos).all(axis=1)
            & np.isfinite(qvel).all(axis=1)
            & (min_z <= qpos[:, 2])
            & (qpos[:, 2] <= max_z)
        )
        forward_reward = params.forward_reward_weight * forward_term
        healthy_reward = healthy * params.healthy_reward
        ctrl_cost = params.ctrl_cost_weight * squared_action
        if params.contact_cost_weight != 0:
            squared_forces = np.square(self._contact_forces()).reshape(self.num_envs, -1)
            contact_cost = params.contact_cost_weight * np.sum(squared_forces, axis=1)
        else:
            contact_cost = np.zeros(self.num_envs)
        rewards = (forward_reward + healthy_reward) - (ctrl_cost + contact_cost)  # Ant-v5's order
        infos = {
            **self._position_info(),
            "x_velocity": velocity[:, 0],
            "y_velocity": velocity[:, 1],
            "reward_forward": forward_reward,
            "reward_ctrl": -ctrl_cost,
            "reward_contact": -contact_cost,
            "reward_survive": healthy_reward,
        }
        return rewards, ~healthy & params.terminate_when_unhealthy, infos


class HalfCheetahVelVectorEnv(_HalfCheetahTaskVectorEnv):
    """``num_envs`` :class:`HalfCheetahVelEnv` episodes, one task each, stepped at once."""

    single_env_class = HalfCheetahVelEnv


class HalfCheetahDirVectorEnv(_HalfCheetahTaskVectorEnv):
    """``num_envs`` :class:`HalfCheetahDirEnv` episodes, one task each, stepped at once."""

    single_env_class = HalfCheetahDirEnv


class AntVelVectorEnv(_AntTaskVectorEnv):
    """``num_envs`` :class:`AntVelEnv` episodes, one task each, stepped at once."""

    single_env_class = AntVelEnv


class AntDirVectorEnv(_AntTaskVectorEnv):
    """``num_envs`` :class:`AntDirEnv` episodes, one task each, stepped at once."""

    single_env_class = AntDirEnv
