"""Parameterised gymnasium task environments, registered under the ``metarl/`` namespace.

Importing this package registers every env (single form and natively vectorised form).
"""

from __future__ import annotations

import gymnasium
from metarl.envs.base import Task, TaskEnv, TaskVectorEnv, check_task_env


def _register(env_id: str, entry_point: str, vector_entry_point: str | None, max_episode_steps: int) -> None:
    if env_id not in gymnasium.registry:
        gymnasium.register(
            id=env_id,
            entry_point=entry_point,
            vector_entry_point=vector_entry_point,
            max_episode_steps=max_episode_steps,
        )


_register(
    "metarl/Navigation2D-v0",
    "metarl.envs.navigation:Navigation2DEnv",
    "metarl.envs.navigation:Navigation2DVectorEnv",
    100,
)

__all__ = ["Task", "TaskEnv", "TaskVectorEnv", "check_task_env"]

_register(
    "metarl/HalfCheetahVel-v0",
    "metarl.envs.locomotion:HalfCheetahVelEnv",
    "metarl.envs.locomotion:HalfCheetahVelVectorEnv",
    200,
)
_register(
    "metarl/HalfCheetahDir-v0",
    "metarl.envs.locomotion:HalfCheetahDirEnv",
    "metarl.envs.locomotion:HalfCheetahDirVectorEnv",
    200,
)
_register("metarl/AntVel-v0", "metarl.envs.locomotion:AntVelEnv", "metarl.envs.locomotion:AntVelVectorEnv", 200)
_register("metarl/AntDir-v0", "metarl.envs.locomotion:AntDirEnv", "metarl.envs.locomotion:AntDirVectorEnv", 200)
_register("metarl/Sinusoid-v0", "metarl.envs.sinusoid:SinusoidEnv", "metarl.envs.sinusoid:SinusoidVectorEnv", 1)
_register("metarl/Glyphs-v0", "metarl.envs.glyphs:GlyphsEnv", None, 1)
_register("metarl/Omniglot-v0", "metarl.envs.omniglot:OmniglotEnv", None, 1)

# Meta-World ML1 / ML10 (optional extra; metaworld is imported only when one of these envs is made)
from metarl.envs.metaworld import register as _register_metaworld  # noqa: E402

_register_metaworld()
