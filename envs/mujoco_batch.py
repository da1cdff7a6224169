"""Batched MuJoCo physics for the natively vectorised locomotion envs.

Two backends step ``num_envs`` copies of one model by ``frame_skip`` physics steps with the
control held, exactly as gymnasium's :class:`~gymnasium.envs.mujoco.MujocoEnv` steps one
(``data.ctrl[:] = action; mj_step(model, data, nstep=frame_skip); mj_rnePostConstraint``),
and expose the results as ``[num_envs, ...]`` arrays:

* :class:`BatchPhysics` wraps :class:`mujoco.batch.Batch`: the states live in C rows and a
  C++ thread pool steps them, so a step costs no Python per episode. Its rows hold the full
  integration state, including the solver warmstart, so trajectories are bit-identical to
  the single env's (``mujoco.rollout`` cannot continue a trajectory across calls: it does
  not return the warmstart, and restarting from a zero warmstart drifts by ~1e-4 within 100
  HalfCheetah steps). Derived fields (``xpos``) are those the single env sees after
  ``mj_step``. It cannot give ``cfrc_ext``: that is computed only by
  ``mj_rnePostConstraint``, which gymnasium calls after ``mj_step``, on the data of the
  integrator's *last* evaluation (for the Ant's RK4, the fourth Runge-Kutta stage).
* :class:`PerEnvPhysics` keeps one :class:`mujoco.MjData` per episode and steps them on
  ``num_threads`` worker threads (``mj_step`` releases the GIL), calling
  ``mj_rnePostConstraint`` after each step as gymnasium does. Its Python cost is a few
  microseconds per episode and step, about 1-2% of an Ant step; it is used only where
  ``cfrc_ext`` is needed.

:class:`KinematicsProbe` evaluates the position and velocity stages (body COMs, ``cvel``) at
given states on a batch of its own, without touching the simulations: rllab's forward velocity
(the torso subtree's centre-of-mass velocity after the step) needs them at the new state, where
a stepped simulation's derived fields are one substep behind.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import mujoco
import numpy as np
from mujoco import batch as mj_batch


def resolve_num_threads(num_threads: int | None) -> int:
    """``num_threads`` validated, defaulting to ``os.cpu_count()``."""
    if num_threads is None:
        return os.cpu_count() or 1
    if isinstance(num_threads, bool) or not isinstance(num_threads, (int, np.integer)) or num_threads < 1:
        raise ValueError(f"num_threads must be a positive integer or None, got {num_threads!r}")
    return int(num_threads)


class BatchPhysics:
    """``num_envs`` simulations of ``model`` in a :class:`mujoco.batch.Batch` (no per-env Python)."""

    def __init__(self, model: mujoco.MjModel, num_envs: int, frame_skip: int, num_threads: int) -> None:
        self.frame_skip = frame_skip
        self._batch = mj_batch.Batch(model, nsim=num_envs, nthread=num_threads)
        self._ctrl = self._batch.bind("ctrl")
        self.qpos: np.ndarray = self._batch.bind("qpos")
        """Live ``[num_envs, nq]`` view of the current positions."""
        self.qvel: np.ndarray = self._batch.bind("qvel")
        """Live ``[num_envs, nv]`` view of the current velocities."""
        self.xpos: np.ndarray = self._batch.bind("xpos")
        """``[num_envs, nbody, 3]`` body positions of the last evaluation, as ``data.xpos`` after ``mj_step``."""

    @property
    def cfrc_ext(self) -> np.ndarray:
        """Not available from a batch (see module docstring)."""
        raise NotImplementedError("BatchPhysics cannot provide cfrc_ext; use PerEnvPhysics")

    def reset(self, qpos: np.ndarray, qvel: np.ndarray) -> None:
        """``mj_resetData``, set ``qpos``/``qvel`` (``[num_envs, nq/nv]``), then ``mj_forward``, per env."""
        self._batch.reset(stage=mujoco.mjtStage.mjSTAGE_NONE)
        self.qpos[...] = qpos
        self.qvel[...] = qvel
        self._batch.forward()

    def step(self, ctrl: np.ndarray, ids: np.ndarray | None = None) -> None:
        """Hold ``ctrl[i]`` for ``frame_skip`` physics steps of each env ``i`` in ``ids`` (sorted; None: all)."""
        self._ctrl[...] = ctrl
        self._batch.step(ids=ids, nstep=self.frame_skip)

    def close(self) -> None:
        """Release the batch and its thread pool."""
        self._batch = None


class PerEnvPhysics:
    """One :class:`mujoco.MjData` per env, stepped on worker threads, with ``cfrc_ext`` computed.

    The per-env Python work is setting the control and calling ``mj_step`` and
    ``mj_rnePostConstraint``; the results are gathered afterwards by one ``np.concatenate``
    per field over cached views of the ``MjData`` arrays.
    """

    def __init__(self, model: mujoco.MjModel, num_envs: int, frame_skip: int, num_threads: int) -> None:
        self.model = model
        self.frame_skip = frame_skip
        self.num_envs = num_envs
        self._datas = [mujoco.MjData(model) for _ in range(num_envs)]
        self._ctrl_views = [data.ctrl for data in self._datas]
        self.qpos = np.zeros((num_envs, model.nq))
        self.qvel = np.zeros((num_envs, model.nv))
        self.xpos = np.zeros((num_envs, model.nbody, 3))
        self.cfrc_ext = np.zeros((num_envs, model.nbody, 6))
        """``[num_envs, nbody, 6]`` external contact wrenches, as gymnasium's ``data.cfrc_ext``."""
        # per gathered field: the views of every MjData's array, and the destination seen as
        # their concatenation along axis 0 (a view of the batched array)
        self._gathers = []
        for name in ("qpos", "qvel", "xpos", "cfrc_ext"):
            batched = getattr(self, name)
            views = [getattr(data, name) for data in self._datas]
            self._gathers.append((views, batched.reshape(-1, *batched.shape[2:])))
        self._num_threads = min(num_threads, num_envs)
        self._pool = ThreadPoolExecutor(self._num_threads) if self._num_threads > 1 else None

    def reset(self, qpos: np.ndarray, qvel: np.ndarray) -> None:
        """``mj_resetData``, set ``qpos``/``qvel``, then ``mj_forward``, per env (as ``MujocoEnv.set_state``)."""
        for i, data in enumerate(self._datas):
            mujoco.mj_resetData(self.model, data)
            data.qpos[:] = qpos[i]
            data.qvel[:] = qvel[i]
            mujoco.mj_forward(self.model, data)
        self._gather()

    def step(self, ctrl: np.ndarray, ids: np.ndarray | None = None) -> None:
        """Hold ``ctrl[i]`` for ``frame_skip`` physics steps of each env ``i`` in ``ids`` (None: all)."""
        ids = np.arange(self.num_envs) if ids is None else np.asarray(ids)
        if self._pool is None:
            self._step_chunk(ids, ctrl)
        else:
            chunks = np.array_split(ids, self._num_threads)
            for future in [self._pool.submit(self._step_chunk, chunk, ctrl) for chunk in chunks]:
                future.result()
        self._gather()

    def _step_chunk(self, ids: np.ndarray, ctrl: np.ndarray) -> None:
        """Worker: step the envs ``ids`` one after the other (``mj_step`` releases the GIL)."""
        model, nstep, datas, ctrl_views = self.model, self.frame_skip, self._datas, self._ctrl_views
        for i in ids.tolist():
            ctrl_views[i][:] = ctrl[i]
            mujoco.mj_step(model, datas[i], nstep=nstep)
            mujoco.mj_rnePostConstraint(model, datas[i])

    def _gather(self) -> None:
        """Copy every env's fields into the batched arrays."""
        for views, out in self._gathers:
            np.concatenate(views, out=out)

    def close(self) -> None:
        """Stop the worker threads."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


class KinematicsProbe:
    """Position- and velocity-stage fields at given states, from a :class:`mujoco.batch.Batch` of its own.

    :meth:`evaluate` copies ``qpos``/``qvel`` into the probe's rows and runs the forward stages up to
    ``mjSTAGE_VEL`` (``mj_fwdPosition``, ``mj_fwdVelocity``); the simulations being stepped are not
    touched, so their trajectories and derived fields stay those of gymnasium's single env.
    """

    def __init__(self, model: mujoco.MjModel, num_envs: int, num_threads: int) -> None:
        self._batch = mj_batch.Batch(model, nsim=num_envs, nthread=num_threads)
        self._qpos = self._batch.bind("qpos")
        self._qvel = self._batch.bind("qvel")
        self.xipos: np.ndarray = self._batch.bind("xipos")
        """``[num_envs, nbody, 3]`` body centres of mass at the last evaluated states."""
        self.cvel: np.ndarray = self._batch.bind("cvel")
        """``[num_envs, nbody, 6]`` com-based body velocities (angular, linear) at the last evaluated states."""
        self.subtree_com: np.ndarray = self._batch.bind("subtree_com")
        """``[num_envs, nbody, 3]`` subtree centres of mass at the last evaluated states."""

    def evaluate(self, qpos: np.ndarray, qvel: np.ndarray, ids: np.ndarray | None = None) -> None:
        """Evaluate the rows ``ids`` (None: all) at ``qpos``/``qvel`` (``[num_envs, nq/nv]``)."""
        self._qpos[...] = qpos
        self._qvel[...] = qvel
        self._batch.forward(ids=ids, stage=mujoco.mjtStage.mjSTAGE_VEL)

    def close(self) -> None:
        """Release the batch and its thread pool."""
        self._batch = None
