"""Render adapted policies: MuJoCo videos, 2D-navigation trajectories and sinusoid fits.

Every renderer follows the same protocol as :func:`metarl.evaluation.evaluate_adaptation`:
on the chosen tasks, :func:`adapt_tasks` samples ``episodes`` trajectories per task with the
current parameters and takes one inner step (metarl's REINFORCE inner loop, step sizes
``alpha`` then ``alpha/2``: ``inner_step_sizes(lr, k, decay_after_first=True)``), ``k`` times.
The renderers then roll out the parameters reached after 0, 1, ..., k steps in a single
(non-vectorised) env, with the policy mean (default) or with sampled actions.

* MuJoCo task envs (:func:`render_video`): an mp4 (imageio-ffmpeg), optionally a gif, with the
  task, the adaptation step and the running return drawn on every frame.
* 2D navigation (:func:`render_navigation`): a PNG of the trajectories after each step for
  several tasks, goal marked; the axes grow to show every goal and trajectory.
* Sinusoid (:func:`render_sinusoid`): a PNG of the predicted curve after each step vs the truth,
  scored by its mean squared error (a regression has no return).
  Supervised checkpoints (``maml.loss=supervised``) adapt on K labelled shots with the run's
  inner rule (learned step sizes, adapted subset: :func:`metarl.algorithms.checkpoint_inner_rule`,
  as :func:`metarl.supervised.evaluate_regression`); policy-gradient checkpoints adapt with the
  RL inner loop above.

Figures of evaluation results (the benchmark's return-vs-steps figure) are in :mod:`metarl.plots`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import gymnasium
import numpy as np
import torch

from metarl.algorithms import InnerRule, checkpoint_inner_rule, mean_step_size, with_rule
from metarl.build import adaptation_settings, horizon, make_sampler, task_env, torch_dtype
from metarl.checkpoint import load_checkpoint
from metarl.config import Config
from metarl.envs.base import Task
from metarl.errors import RenderError
from metarl.evaluation import is_scalar_value, steps_label
from metarl.maml import sample_meta_batch
from metarl.plots import STEP_COLORS, pyplot
from metarl.policy import GaussianMLPPolicy, Params, is_stacked, stack_params
from metarl.reporting import env_slug, git_commit, machine_description, write_json

RenderKind = Literal["video", "navigation", "sinusoid"]


# --------------------------------------------------------------------------- inputs


def ensure_offscreen_gl() -> str:
    """Select MuJoCo's headless EGL backend unless ``MUJOCO_GL`` is already set; return the backend.

    gymnasium reads ``MUJOCO_GL`` when the first frame is rendered, so calling this before the
    first ``render()`` is enough.
    """
    backend = os.environ.setdefault("MUJOCO_GL", "egl")
    if backend in ("egl", "osmesa"):
        os.environ.setdefault("PYOPENGL_PLATFORM", backend)
    return backend


def _split_items(spec: str) -> list[str]:
    """Split ``key=value,...`` on the commas outside brackets (``goal=[0.1, 0.2],speed=1``)."""
    items: list[str] = []
    current: list[str] = []
    depth = 0
    for char in spec:
        if char in "[({":
            depth += 1
        elif char in "])}":
            depth -= 1
        if char == "," and depth == 0:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    items.append("".join(current))
    return [item.strip() for item in items if item.strip()]


def _parse_value(spec: str, key: str, raw: Any, like: Any) -> Any:
    """One task value from its spec text (or JSON value), shaped like the template's value ``like``."""
    if isinstance(like, str):
        return str(raw)
    if not is_scalar_value(like):  # an array or list: a JSON list of numbers of the same shape
        shape = np.shape(like)
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError:
                raise RenderError(
                    f"task spec {spec!r}: {key}={raw!r} is not a JSON list (e.g. {key}=[0.1, 0.2])"
                ) from None
        try:
            array = np.asarray(raw, dtype=np.float64)
        except (TypeError, ValueError):
            raise RenderError(f"task spec {spec!r}: {key}={raw!r} is not a list of numbers") from None
        if array.shape != shape:
            raise RenderError(f"task spec {spec!r}: {key} has shape {array.shape}; this env's {key} has shape {shape}")
        if not np.isfinite(array).all():
            raise RenderError(f"task spec {spec!r}: {key}={array.tolist()} is not finite")
        if isinstance(like, np.ndarray):
            return array.astype(like.dtype if np.issubdtype(like.dtype, np.floating) else np.float64)
        return array.tolist()
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise RenderError(f"task spec {spec!r}: {key}={raw!r} is not a number") from None
    if not math.isfinite(value):
        raise RenderError(f"task spec {spec!r}: {key}={value} is not finite")
    return value


def parse_task(spec: str, template: Mapping[str, Any]) -> dict[str, Any]:
    """A task from a JSON object (``'{"velocity": 1.5}'``) or ``key=value,...`` (``goal_x=0.3,goal_y=-0.2``).

    ``template`` is one task of the env (e.g. its default task): the spec must give exactly its
    keys. Each value takes the kind of the template's: a finite number; for an array- or
    list-valued parameter a JSON list of the same shape (``'{"goal": [0.1, 0.2]}'`` or
    ``goal=[0.1,0.2]``), returned as a numpy array (or list); a string for a string parameter.
    Raises :class:`RenderError` naming the problem. The env may validate further when the task is set.
    """
    spec = spec.strip()
    keys = sorted(template)
    example = ",".join(f"{k}=..." for k in keys)
    raw: dict[str, Any]
    if spec.startswith("{"):
        try:
            raw = json.loads(spec)
        except json.JSONDecodeError as exc:
            raise RenderError(f"task spec {spec!r} is not valid JSON ({exc}); expected e.g. {example}") from None
        if not isinstance(raw, dict):
            raise RenderError(f"task spec {spec!r} must be a JSON object")
    else:
        raw = {}
        for item in _split_items(spec):
            if "=" not in item:
                raise RenderError(f"task spec {spec!r}: item {item!r} is not key=value; expected e.g. {example}")
            key, value = (s.strip() for s in item.split("=", 1))
            raw[key] = value
    if sorted(raw) != keys:
        raise RenderError(f"task spec {spec!r} has keys {sorted(raw)}; this env's tasks need exactly {keys}")
    return {key: _parse_value(spec, key, raw[key], template[key]) for key in keys}


def format_value(value: Any, digits: int = 2) -> str:
    """A task value for a title or a frame: ``1.23``, ``[0.10, -0.30]``, or the string itself."""
    if isinstance(value, (str, bytes)):
        return value if isinstance(value, str) else value.decode(errors="replace")
    if is_scalar_value(value):
        return f"{float(value):.{digits}f}"
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return str(value)
    return _format_array(array, digits)


def _format_array(array: np.ndarray, digits: int) -> str:
    """``[0.10, -0.30]`` / ``[[1.00, 0.00], [0.00, 1.00]]`` on one line."""
    if array.ndim == 0:
        return f"{float(array):.{digits}f}"
    return "[" + ", ".join(_format_array(part, digits) for part in array) + "]"


def format_task(task: Mapping[str, Any], digits: int = 2) -> str:
    """``velocity=1.23`` / ``goal_x=0.10, goal_y=-0.30`` / ``goal=[0.10, -0.30]``."""
    return ", ".join(f"{k}={format_value(v, digits)}" for k, v in task.items())


def render_kind(env: gymnasium.Env) -> RenderKind:
    """How an env's adapted policies are rendered; :class:`RenderError` naming the env otherwise."""
    from gymnasium.envs.mujoco import MujocoEnv

    from metarl.envs.navigation import Navigation2DEnv
    from metarl.envs.sinusoid import SinusoidEnv

    inner = env.unwrapped
    if isinstance(inner, Navigation2DEnv):
        return "navigation"
    if isinstance(inner, SinusoidEnv):
        return "sinusoid"
    if isinstance(inner, MujocoEnv):
        return "video"
    raise RenderError(
        f"{env.spec.id if env.spec else type(inner).__name__} ({type(inner).__name__}) has no renderer: "
        "rendering is implemented for MuJoCo task envs, 2D navigation and the sinusoid"
    )


# --------------------------------------------------------------------------- adaptation


@dataclass(frozen=True)
class AdaptationTrace:
    """Per-task parameters after 0..k inner steps, and the returns of the episodes they were adapted on."""

    tasks: list[Task]
    params: list[Params]
    """Step ``k``'s parameters, stacked per task (``params[0]``: before adaptation)."""
    step_sizes: list[float]
    sampled_returns: np.ndarray
    """``[k + 1, n]`` mean return of the sampled (stochastic) episodes of each task at each step."""

    @property
    def num_steps(self) -> int:
        """``k``, the number of inner steps."""
        return len(self.step_sizes)

    def task_params(self, step: int, task_index: int) -> Params:
        """Shared (unstacked) parameters of one task after ``step`` inner steps."""
        return {name: value[task_index] for name, value in self.params[step].items()}


def adapt_tasks(
    policy: GaussianMLPPolicy,
    config: Config,
    tasks: Sequence[Task],
    num_steps: int,
    episodes_per_task: int,
    seed: int,
    inner_lr: float | None = None,
    rule: InnerRule | None = None,
) -> AdaptationTrace:
    """Adapt to every task at once with metarl's inner loop (alpha, then alpha/2), as the evaluation does.

    ``rule`` (the checkpoint's) adapts only its parameters and with its learned step sizes, as
    :func:`metarl.evaluation.evaluate_adaptation` does.

    Each of the ``num_steps`` steps re-samples ``episodes_per_task`` trajectories with the
    current per-task parameters (:func:`metarl.maml.sample_meta_batch`). Randomness comes
    only from generators seeded with ``seed``.
    """
    if num_steps < 0 or episodes_per_task < 1 or not tasks:
        raise ValueError(
            f"need num_steps >= 0, episodes_per_task >= 1 and at least one task, got "
            f"{num_steps}, {episodes_per_task}, {len(tasks)} tasks"
        )
    adaptation = adaptation_settings(config.maml)
    adaptation = dataclasses.replace(adaptation, inner_lr=config.maml.inner_lr if inner_lr is None else inner_lr)
    if rule is not None:
        adaptation = with_rule(adaptation, rule)
    lrs = adaptation.lrs(num_steps, decay_after_first=True)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    sampler = make_sampler(config, len(tasks), episodes_per_task)
    try:
        batch, used = sample_meta_batch(
            sampler, policy, policy.params(), list(tasks), adaptation, rng, generator, lrs=lrs
        )
    finally:
        sampler.close()
    stacked = [p if is_stacked(p) else stack_params(p, len(tasks)) for p in used]
    returns = np.stack([ep.episode_returns().mean(1).double().numpy() for ep in [*batch.train, batch.valid]])
    sizes = [lr if isinstance(lr, float | int) else mean_step_size(lr) for lr in lrs]
    return AdaptationTrace(list(tasks), stacked, [float(x) for x in sizes], returns)


def step_label(step: int, trace: AdaptationTrace) -> str:
    """``before adaptation`` / ``after 2 steps (alpha=0.1, 0.05)``."""
    if step == 0:
        return "before adaptation"
    sizes = ", ".join(f"{lr:g}" for lr in trace.step_sizes[:step])
    return f"after {step} step{'s' if step > 1 else ''} (alpha={sizes})"


# --------------------------------------------------------------------------- rollouts


@dataclass
class Rollout:
    """One episode of one task with fixed parameters."""

    observations: np.ndarray
    """``[T + 1, obs_dim]``, the reset observation first."""
    rewards: np.ndarray
    """``[T]``."""
    terminated: bool

    @property
    def episode_return(self) -> float:
        """Undiscounted return."""
        return float(self.rewards.sum())


def policy_action(
    policy: GaussianMLPPolicy, params: Params, obs: np.ndarray, generator: torch.Generator | None
) -> np.ndarray:
    """The policy mean (``generator=None``) or a sample ``mean + std * noise`` for one observation."""
    dtype = params["log_std"].dtype
    with torch.no_grad():
        mean, log_std = policy(torch.as_tensor(np.asarray(obs), dtype=dtype).reshape(1, -1), params)
        if generator is not None:
            mean = mean + torch.randn(mean.shape, generator=generator, dtype=dtype) * log_std.exp()
    return mean[0].numpy()


def rollout(
    policy: GaussianMLPPolicy,
    params: Params,
    env: gymnasium.Env,
    task: Task,
    horizon: int,
    seed: int,
    generator: torch.Generator | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> Rollout:
    """Run one episode of ``task`` for at most ``horizon`` steps (mean actions unless ``generator`` is given).

    ``on_step(t, running_return)`` is called after the reset (``t = 0``) and after every step,
    e.g. to grab a rendered frame.
    """
    env.unwrapped.task = task  # type: ignore[attr-defined]
    obs, _ = env.reset(seed=seed)
    observations, rewards = [np.asarray(obs, dtype=np.float64)], []
    terminated = False
    if on_step is not None:
        on_step(0, 0.0)
    for t in range(horizon):
        obs, reward, terminated, truncated, _ = env.step(policy_action(policy, params, obs, generator))
        observations.append(np.asarray(obs, dtype=np.float64))
        rewards.append(float(reward))
        if on_step is not None:
            on_step(t + 1, float(np.sum(rewards)))
        if terminated or truncated:
            break
    return Rollout(np.stack(observations), np.asarray(rewards), bool(terminated))


# --------------------------------------------------------------------------- outputs


@dataclass
class RenderResult:
    """What a renderer wrote, and the score of each rendered task after each step."""

    kind: RenderKind
    files: list[Path]
    tasks: list[Task]
    values: list[list[float]]
    """``[n][k + 1]`` score of each task after each step: the rendered episode's return, or the
    regression's MSE (see :attr:`metric`)."""
    metric: Literal["return", "MSE"]
    """What :attr:`values` are: ``"return"`` (higher is better) or ``"MSE"`` (lower is better)."""
    sampled_returns: list[list[float]]
    """``[n][k + 1]`` mean return of the stochastic episodes each RL inner step adapted on (empty
    for supervised adaptation)."""
    step_sizes: list[float]
    actions: str
    num_frames: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def values_key(self) -> str:
        """The JSON key of :attr:`values`: ``returns`` or ``mse``."""
        return "returns" if self.metric == "return" else self.metric.lower()

    def summary(self) -> dict[str, Any]:
        """A description for :func:`metarl.reporting.write_json` (task values may be numpy arrays)."""
        return {
            "kind": self.kind,
            "files": [str(f) for f in self.files],
            "tasks": self.tasks,
            "metric": self.metric,
            self.values_key: self.values,
            "sampled_returns": self.sampled_returns,
            "step_sizes": self.step_sizes,
            "actions": self.actions,
            "num_frames": self.num_frames,
            **self.extra,
        }


def _actions_label(stochastic: bool) -> str:
    return "sampled actions" if stochastic else "policy mean actions"


def _font(size: int) -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def overlay_text(frame: np.ndarray, lines: Sequence[str], font_size: int = 14) -> np.ndarray:
    """``frame`` (``[H, W, 3]`` uint8) with ``lines`` drawn top-left on a translucent dark box."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(np.ascontiguousarray(frame)).convert("RGBA")
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    font = _font(font_size)
    pad, spacing = 6, 3
    widths = [draw.textbbox((0, 0), line, font=font)[2] for line in lines]
    height = len(lines) * (font_size + spacing) + 2 * pad
    draw.rectangle((0, 0, max(widths, default=0) + 2 * pad, height), fill=(0, 0, 0, 150))
    for i, line in enumerate(lines):
        draw.text((pad, pad + i * (font_size + spacing)), line, font=font, fill=(255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(image, layer).convert("RGB"))


def render_video(
    policy: GaussianMLPPolicy,
    config: Config,
    trace: AdaptationTrace,
    path: Path,
    seed: int,
    stochastic: bool = False,
    gif_path: Path | None = None,
    width: int = 480,
    height: int = 320,
    gif_stride: int = 2,
    gif_scale: float = 0.5,
) -> RenderResult:
    """An mp4 of the first task's episode before adaptation and after each inner step, text overlaid.

    Every segment is one episode: the frame after the reset, then one frame per step
    (``horizon + 1`` frames unless the episode terminates early). The gif, if asked for, keeps
    every ``gif_stride``-th frame at ``gif_scale`` size to stay small. Uses the env's ``track``
    camera when its model has one (it follows the robot).
    """
    import imageio.v2 as imageio
    from PIL import Image

    ensure_offscreen_gl()
    task = trace.tasks[0]
    try:
        env = gymnasium.make(
            config.env.id,
            max_episode_steps=horizon(config.env),
            render_mode="rgb_array",
            width=width,
            height=height,
            camera_name="track",
            **config.env.kwargs,
        )
    except TypeError as exc:
        raise RenderError(
            f"{config.env.id} cannot render rgb_array frames (does its constructor accept "
            f"render_mode/width/height/camera_name?): {exc}"
        ) from None
    fps = int(env.metadata.get("render_fps") or round(1.0 / env.unwrapped.dt))  # type: ignore[attr-defined]
    generator = torch.Generator().manual_seed(seed) if stochastic else None
    name = config.env.id.split("/")[-1]
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = imageio.get_writer(path, fps=fps, codec="libx264", macro_block_size=8, ffmpeg_log_level="error")
    gif_frames: list[Any] = []
    count = 0
    returns: list[float] = []
    try:
        for step in range(trace.num_steps + 1):
            header = [
                f"{name}   task: {format_task(task)}",
                f"step {step}/{trace.num_steps}: {step_label(step, trace)}",
            ]

            def grab(t: int, running: float, header: list[str] = header) -> None:
                nonlocal count
                lines = [*header, f"t={t:3d}   return={running:8.2f}   ({_actions_label(stochastic)})"]
                frame = overlay_text(env.render(), lines)  # type: ignore[arg-type]
                writer.append_data(frame)
                if count % gif_stride == 0 and gif_path is not None:
                    small = Image.fromarray(frame)
                    size = (max(1, int(frame.shape[1] * gif_scale)), max(1, int(frame.shape[0] * gif_scale)))
                    gif_frames.append(small.resize(size, Image.Resampling.BILINEAR))
                count += 1

            episode = rollout(
                policy, trace.task_params(step, 0), env, task, horizon(config.env), seed + step, generator, grab
            )
            returns.append(episode.episode_return)
    finally:
        writer.close()
        env.close()
    files = [path]
    if gif_path is not None:
        gif_path.parent.mkdir(parents=True, exist_ok=True)
        gif_frames[0].save(
            gif_path, save_all=True, append_images=gif_frames[1:], duration=int(1000 * gif_stride / fps), loop=0
        )
        files.append(gif_path)
    return RenderResult(
        "video",
        files,
        [task],
        [returns],
        "return",
        trace.sampled_returns[:, :1].T.tolist(),
        trace.step_sizes,
        _actions_label(stochastic),
        count,
        {"fps": fps},
    )


def _subplot_grid(n: int) -> tuple[int, int]:
    cols = min(n, 4)
    return math.ceil(n / cols), cols


def square_limits(points: np.ndarray, low: float, high: float, margin: float = 0.1) -> tuple[float, float]:
    """Axis limits (the same for x and y) that contain ``[low, high]`` and every point of ``points [.., 2]``."""
    finite = points[np.isfinite(points).all(axis=-1)] if points.size else points.reshape(0, 2)
    lo = min(low, float(finite.min())) if finite.size else low
    hi = max(high, float(finite.max())) if finite.size else high
    pad = margin * (hi - lo)
    return lo - pad, hi + pad


def render_navigation(
    policy: GaussianMLPPolicy, config: Config, trace: AdaptationTrace, path: Path, seed: int, stochastic: bool = False
) -> RenderResult:
    """A PNG with one panel per task: the trajectory after 0..k steps, start and goal marked.

    The dotted square is the env's goal range; the axes grow beyond it to show goals set outside
    it (e.g. with ``--task``) and trajectories that leave it.
    """
    plt = pyplot()
    env = task_env(config)
    generator = torch.Generator().manual_seed(seed) if stochastic else None
    rows, cols = _subplot_grid(len(trace.tasks))
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 4.6 * rows), squeeze=False)
    returns: list[list[float]] = []
    inner = env.unwrapped
    low, high = float(getattr(inner, "goal_low", -0.5)), float(getattr(inner, "goal_high", 0.5))
    try:
        for i, task in enumerate(trace.tasks):
            ax = axes[i // cols][i % cols]
            task_returns = []
            goal = np.array([float(task["goal_x"]), float(task["goal_y"])])
            points = [goal[None, :], np.zeros((1, 2))]
            for step in range(trace.num_steps + 1):
                episode = rollout(
                    policy, trace.task_params(step, i), env, task, horizon(config.env), seed + step, generator
                )
                task_returns.append(episode.episode_return)
                xy = episode.observations[:, :2]
                points.append(xy)
                ax.plot(
                    xy[:, 0],
                    xy[:, 1],
                    "-",
                    color=STEP_COLORS[step % len(STEP_COLORS)],
                    lw=1.5,
                    label=f"{steps_label(step)}: {episode.episode_return:.1f}",
                )
            returns.append(task_returns)
            ax.plot(0, 0, "ko", ms=5, label="start")
            ax.plot(goal[0], goal[1], "*", color="gold", mec="k", ms=16, label="goal")
            ax.add_patch(plt.Rectangle((low, low), high - low, high - low, fill=False, ls=":", color="grey"))
            lo, hi = square_limits(np.concatenate(points), low, high)
            ax.set_xlim(lo, hi)
            ax.set_ylim(lo, hi)
            ax.set_aspect("equal")
            ax.set_xlabel("x position", fontsize=8)
            ax.set_ylabel("y position", fontsize=8)
            ax.set_title(f"goal ({goal[0]:.2f}, {goal[1]:.2f})", fontsize=10)
            ax.legend(
                fontsize=7,
                loc="upper center",
                bbox_to_anchor=(0.5, -0.16),
                ncol=3,
                title="episode return after k inner steps",
                title_fontsize=7,
                frameon=False,
            )
        for j in range(len(trace.tasks), rows * cols):
            axes[j // cols][j % cols].axis("off")
        sizes = ", ".join(f"{lr:g}" for lr in trace.step_sizes) or "none"
        fig.suptitle(
            f"{config.env.id}: trajectories after 0..{trace.num_steps} inner steps "
            f"(step sizes {sizes}; {_actions_label(stochastic)}; dotted: goal range)",
            fontsize=10,
        )
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
        env.close()
    return RenderResult(
        "navigation",
        [path],
        trace.tasks,
        returns,
        "return",
        trace.sampled_returns.T.tolist(),
        trace.step_sizes,
        _actions_label(stochastic),
    )


def render_sinusoid(
    policy: GaussianMLPPolicy,
    config: Config,
    tasks: Sequence[Task],
    num_steps: int,
    path: Path,
    seed: int,
    episodes_per_task: int,
    grid_size: int = 200,
    rule: InnerRule | None = None,
) -> RenderResult:
    """A PNG with one panel per task: the model's curve (policy mean) after 0..k steps vs the true sinusoid.

    Each curve is scored by its mean squared error to the truth on the plotted grid (the
    result's ``metric`` is ``"MSE"``: a regression has no return). Supervised checkpoints adapt
    on ``supervised.shots`` labelled points (marked) with the run's inner rule (``rule``, from
    :func:`metarl.algorithms.checkpoint_inner_rule`: learned step sizes, adapted subset; default:
    the config's);
    policy-gradient checkpoints adapt with the RL inner loop on ``episodes_per_task`` one-step
    episodes (alpha, then alpha/2).
    """
    from metarl.envs.sinusoid import sinusoid, task_arrays

    env: Any = task_env(config).unwrapped
    n = len(tasks)
    dtype = torch_dtype(config.train.dtype)
    xs = np.linspace(env.x_low, env.x_high, grid_size)
    grid = torch.as_tensor(np.broadcast_to(xs[None, :, None], (n, grid_size, 1)).copy(), dtype=dtype)
    support: tuple[np.ndarray, np.ndarray] | None = None
    sampled: list[list[float]] = []
    if config.maml.loss == "supervised":
        from metarl.supervised import evaluation_rule, predictions_after_steps

        rule = evaluation_rule(policy, config, rule)
        rng = np.random.default_rng(seed)
        sx, sy = env.sample_points(tasks, config.supervised.shots, rng)
        support = (sx, sy)
        preds = predictions_after_steps(
            policy,
            torch.as_tensor(sx, dtype=dtype),
            torch.as_tensor(sy, dtype=dtype),
            grid,
            list(range(num_steps + 1)),
            rule,
        )
        curves = [preds[k][..., 0] for k in range(num_steps + 1)]
        step_sizes = rule.mean_step_sizes(num_steps)
        how = f"{config.supervised.shots} shots, {rule.describe()}"
    else:
        trace = adapt_tasks(policy, config, tasks, num_steps, episodes_per_task, seed)
        with torch.no_grad():
            curves = [policy(grid, p)[0][..., 0].double().numpy() for p in trace.params]
        step_sizes = trace.step_sizes
        how = f"RL inner loop, {episodes_per_task} episodes/step, alpha {', '.join(f'{lr:g}' for lr in step_sizes)}"
        sampled = trace.sampled_returns.T.tolist()
    amplitude, phase = task_arrays(tasks)
    truth = sinusoid(xs[None, :], amplitude[:, None], phase[:, None])
    mse = [[float(np.mean((curves[k][i] - truth[i]) ** 2)) for k in range(num_steps + 1)] for i in range(n)]
    plt = pyplot()
    rows, cols = _subplot_grid(n)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    try:
        for i, task in enumerate(tasks):
            ax = axes[i // cols][i % cols]
            ax.plot(xs, truth[i], "k-", lw=2, label="truth")
            for k in range(num_steps + 1):
                ax.plot(
                    xs,
                    curves[k][i],
                    "--",
                    color=STEP_COLORS[k % len(STEP_COLORS)],
                    lw=1.3,
                    label=f"{steps_label(k)} (MSE {mse[i][k]:.2f})",
                )
            if support is not None:
                ax.plot(support[0][i, :, 0], support[1][i, :, 0], "^", color="purple", ms=7, label="shots")
            ax.set_xlabel("x", fontsize=8)
            ax.set_ylabel("y = A sin(x + phase)", fontsize=8)
            ax.set_title(f"A={float(task['amplitude']):.2f}, phase={float(task['phase']):.2f}", fontsize=10)
            ax.legend(fontsize=7)
        for j in range(n, rows * cols):
            axes[j // cols][j % cols].axis("off")
        fig.suptitle(
            f"{config.env.id}: predictions after 0..{num_steps} steps ({how}); "
            "MSE to the true curve on the plotted x range",
            fontsize=10,
        )
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return RenderResult(
        "sinusoid", [path], list(tasks), mse, "MSE", sampled, step_sizes, "policy mean (the regressor's output)"
    )


# --------------------------------------------------------------------------- the whole pipeline


def choose_tasks(
    env: gymnasium.Env, kind: RenderKind, task_spec: str | None, num_tasks: int | None, seed: int
) -> list[Task]:
    """The task given by ``task_spec`` (validated by the env), or ``num_tasks`` tasks sampled with ``seed``.

    Defaults to one task for videos and four for plots; raises :class:`RenderError` for a bad
    spec, a task the env rejects, or a task count that does not fit.
    """
    inner: Any = env.unwrapped
    if task_spec is not None:
        if num_tasks not in (None, 1):
            raise RenderError(f"--task gives one task; do not combine it with num_tasks={num_tasks}")
        task = parse_task(task_spec, inner.task)
        try:
            inner.task = task  # the env validates the values (e.g. a direction must be +-1)
        except (ValueError, TypeError, KeyError) as exc:
            raise RenderError(f"task spec {task_spec!r} is not a valid task of this env: {exc}") from None
        return [inner.task]
    n = num_tasks if num_tasks is not None else (1 if kind == "video" else 4)
    if n < 1:
        raise RenderError(f"num_tasks must be >= 1, got {n}")
    if kind == "video" and n != 1:
        raise RenderError(f"a video shows one task; got num_tasks={n}")
    return list(inner.sample_tasks(n, np.random.default_rng(seed)))


def render_checkpoint(
    checkpoint: str | Path,
    output_dir: Path | None = None,
    task_spec: str | None = None,
    num_steps: int = 3,
    num_tasks: int | None = None,
    episodes_per_task: int | None = None,
    seed: int = 0,
    stochastic: bool = False,
    gif: bool = False,
    width: int = 480,
    height: int = 320,
    command: str | None = None,
) -> RenderResult:
    """Load a checkpoint, choose or sample tasks, adapt, and write the env's rendering under ``output_dir``.

    Defaults: ``output_dir`` = ``<run dir>/render``; one task for videos, four for plots;
    ``episodes_per_task`` = ``eval.episodes_per_step``. Writes ``render_<env>.{mp4,gif,png}``
    and ``render_<env>.json`` (tasks, returns or MSE, settings, the checkpoint's iteration, and
    ``command`` with the commit, machine and date).
    """
    if num_steps < 0:
        raise RenderError(f"num_steps must be >= 0, got {num_steps}")
    loaded = load_checkpoint(checkpoint)
    policy, config, file = loaded.gaussian_policy("metarl render"), loaded.config, loaded.path
    env = task_env(config)
    try:
        kind = render_kind(env)
        tasks = choose_tasks(env, kind, task_spec, num_tasks, seed)
    finally:
        env.close()
    out = output_dir if output_dir is not None else file.parent.parent / "render"
    stem = out / f"render_{env_slug(config.env.id)}"
    episodes = episodes_per_task if episodes_per_task is not None else config.eval.episodes_per_step
    if kind == "sinusoid":
        rule = checkpoint_inner_rule(loaded) if config.maml.loss == "supervised" else None
        result = render_sinusoid(policy, config, tasks, num_steps, stem.with_suffix(".png"), seed, episodes, rule=rule)
    else:
        trace = adapt_tasks(policy, config, tasks, num_steps, episodes, seed, rule=checkpoint_inner_rule(loaded))
        if kind == "video":
            result = render_video(
                policy,
                config,
                trace,
                stem.with_suffix(".mp4"),
                seed,
                stochastic,
                stem.with_suffix(".gif") if gif else None,
                width,
                height,
            )
        else:
            result = render_navigation(policy, config, trace, stem.with_suffix(".png"), seed, stochastic)
    result.extra.update(
        {
            "checkpoint": str(file),
            "iteration": loaded.iteration,
            "env_id": config.env.id,
            "seed": seed,
            "episodes_per_step": episodes,
        }
    )
    summary = stem.with_suffix(".json")
    result.files.append(summary)
    provenance = {"command": command, "commit": git_commit(), "machine": machine_description()}
    write_json(summary, {**result.summary(), **provenance, "date": time.strftime("%Y-%m-%d %H:%M")})
    return result
