"""Record Meta-World transitions under metaworld's own pinned set-up (metaworld 3.1.1 with mujoco 3.3.0).

Run in a separate virtualenv that has ``pip install metaworld==3.1.1`` (it pulls mujoco 3.3.0):
``python tests/data/make_metaworld_reference.py tests/data/metaworld_mujoco330.npz``.
``tests/test_metaworld.py`` replays the same seeds and actions on metarl's MuJoCo 4 set-up.
"""

from __future__ import annotations

import sys

import metaworld
import mujoco
import numpy as np

CASES = (("reach-v3", 0, 150), ("push-v3", 7, 150))
"""(skill, ML1 train task index, steps): reset seed 3, actions ~ U[-1, 1] from default_rng(task index)."""


def main(out: str) -> None:
    """Write the observations, rewards, success flags and goals of every case to ``out``."""
    arrays: dict[str, np.ndarray] = {}
    for skill, index, steps in CASES:
        ml1 = metaworld.ML1(skill, seed=0)
        env = ml1.train_classes[skill]()
        env.set_task(ml1.train_tasks[index])
        obs, _ = env.reset(seed=3)
        actions = np.random.default_rng(index).uniform(-1, 1, (steps, 4))
        observations, rewards, success = [obs], [], []
        for action in actions:
            obs, reward, _, _, info = env.step(action)
            observations.append(obs)
            rewards.append(reward)
            success.append(info["success"])
        arrays[f"{skill}_obs"] = np.array(observations)
        arrays[f"{skill}_reward"] = np.array(rewards)
        arrays[f"{skill}_success"] = np.array(success)
        arrays[f"{skill}_goal"] = np.asarray(env._last_rand_vec)
    arrays["mujoco_version"] = np.array(mujoco.__version__)
    np.savez_compressed(out, **arrays)


if __name__ == "__main__":
    main(sys.argv[1])
