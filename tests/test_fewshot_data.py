"""The few-shot classification data: generated glyphs (determinism, splits, episodes) and the Omniglot loader."""

from __future__ import annotations

from pathlib import Path

import gymnasium
import metarl.envs  # noqa: F401  (registers the envs)
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from metarl.envs.fewshot import choose_distinct
from metarl.envs.glyphs import GlyphsEnv, glyph_prototypes
from metarl.envs.omniglot import OmniglotEnv

from metarl.errors import DataError
from tests.helpers import assert_one_error_line, run_cli

ROOT = Path(__file__).resolve().parents[1]


def small_glyphs(**kwargs) -> GlyphsEnv:
    """60 glyph classes (40 train, 20 test), 4-way unless told."""
    return GlyphsEnv(**{"ways": 4, "num_classes": 60, "num_train_classes": 40, **kwargs})


# ------------------------------------------------------------------ episodes in general


def test_choose_distinct_gives_distinct_items_in_random_order() -> None:
    chosen = choose_distinct(np.random.default_rng(0), 10, (500,), 3)
    assert chosen.shape == (500, 3) and chosen.min() >= 0 and chosen.max() < 10
    assert all(len(set(row)) == 3 for row in chosen.tolist())
    firsts = np.bincount(chosen[:, 0], minlength=10)  # every item leads some rows: the order is random too
    assert firsts.min() > 20
    with pytest.raises(ValueError, match="cannot choose 11 distinct items out of 10"):
        choose_distinct(np.random.default_rng(0), 10, (2,), 11)


# ------------------------------------------------------------------ glyphs


def test_glyph_data_set_is_a_function_of_its_seed() -> None:
    a, b, c = glyph_prototypes(50, seed=3), glyph_prototypes(50, seed=3), glyph_prototypes(50, seed=4)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.allclose(a[0], c[0])
    assert a[1].any(axis=1).all() and 1 <= a[1].sum(1).min() and a[1].sum(1).max() <= 4  # 1 to 4 strokes


def test_glyph_episodes_are_deterministic_from_the_generator() -> None:
    env = small_glyphs()
    one = env.sample_episode(6, 2, 3, np.random.default_rng(11))
    two = small_glyphs().sample_episode(6, 2, 3, np.random.default_rng(11))
    other = env.sample_episode(6, 2, 3, np.random.default_rng(12))
    for field in ("support_x", "support_y", "query_x", "query_y", "classes"):
        np.testing.assert_array_equal(getattr(one, field), getattr(two, field))
    assert not np.array_equal(one.classes, other.classes)
    assert not np.allclose(one.support_x, other.support_x)


def test_glyph_episode_shapes_labels_and_splits() -> None:
    env = small_glyphs()
    ep = env.sample_episode(20, 2, 3, np.random.default_rng(0))
    assert ep.support_x.shape == (20, 8, 1, 28, 28) and ep.query_x.shape == (20, 12, 1, 28, 28)
    assert ep.support_x.dtype == np.float32 and 0 <= ep.support_x.min() and ep.support_x.max() <= 1
    np.testing.assert_array_equal(ep.support_y[0], [0, 0, 1, 1, 2, 2, 3, 3])
    np.testing.assert_array_equal(ep.query_y[0], [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    assert all(len(set(row)) == 4 for row in ep.classes.tolist())  # N distinct classes per task
    assert ep.classes.max() < 40  # training classes only
    test = env.sample_episode(20, 1, 1, np.random.default_rng(0), split="test")
    assert test.classes.min() >= 40 and test.classes.max() < 60
    # every image is a fresh instance: no query image repeats a support image
    flat_s, flat_q = ep.support_x.reshape(20, 8, -1), ep.query_x.reshape(20, 12, -1)
    assert np.abs(flat_s[:, :, None] - flat_q[:, None]).sum(-1).min() > 1.0


def test_glyph_instances_of_a_class_are_closer_than_instances_of_other_classes() -> None:
    env = small_glyphs(noise=0.0)
    images = env.draw_images(np.arange(10), 6, np.random.default_rng(0)).reshape(10, 6, -1)
    centred = images - images.mean(-1, keepdims=True)
    unit = centred / np.linalg.norm(centred, axis=-1, keepdims=True)
    similarity = np.einsum("aid,bjd->abij", unit, unit)
    same = np.mean([similarity[c, c][~np.eye(6, dtype=bool)].mean() for c in range(10)])
    different = np.mean([similarity[a, b].mean() for a in range(10) for b in range(10) if a != b])
    assert same > different + 0.15, (same, different)


def test_glyph_env_is_a_gymnasium_task_env() -> None:
    env = gymnasium.make("metarl/Glyphs-v0", num_classes=30, num_train_classes=20)
    check_env(env.unwrapped, skip_render_check=True)
    inner = env.unwrapped
    inner.task = inner.sample_tasks(1, np.random.default_rng(0))[0]
    obs, info = env.reset(seed=0)
    assert obs.shape == (1, 28, 28) and 0 <= info["label"] < 5
    _, reward, terminated, _, _ = env.step(info["label"])
    assert reward == 1.0 and terminated


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_train_classes": 60}, "num_train_classes < num_classes"),
        ({"ways": 1}, "ways must be an integer >= 2"),
        ({"noise": -1.0}, "noise must be a finite number >= 0"),
    ],
)
def test_bad_glyph_settings_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        small_glyphs(**kwargs)


# ------------------------------------------------------------------ Omniglot


def write_omniglot(root: Path, background: dict[str, int], evaluation: dict[str, int], drawings: int = 4) -> None:
    """A tiny Omniglot-layout folder: ``{alphabet: characters}`` per half, ``drawings`` random 105x105 PNGs each.

    Every drawing is a distinct random pattern (black strokes on white, as the real PNGs).
    """
    from PIL import Image

    rng = np.random.default_rng(0)
    for half, alphabets in (("images_background", background), ("images_evaluation", evaluation)):
        for alphabet, count in alphabets.items():
            for c in range(1, count + 1):
                folder = root / half / alphabet / f"character{c:02d}"
                folder.mkdir(parents=True)
                for d in range(1, drawings + 1):
                    ink = rng.random((15, 15)) < 0.3
                    pixels = np.where(np.kron(ink, np.ones((7, 7), dtype=bool)), 0, 255).astype(np.uint8)
                    Image.fromarray(pixels, mode="L").convert("1").save(folder / f"{c:04d}_{d:02d}.png")


@pytest.fixture
def omniglot_root(tmp_path: Path) -> Path:
    """Background: alphabets B (2 characters) and A (1); evaluation: Z (1) and Y (2)."""
    root = tmp_path / "omniglot"
    write_omniglot(root, {"B_alphabet": 2, "A_alphabet": 1}, {"Z_alphabet": 1, "Y_alphabet": 2})
    return root


def test_omniglot_character_order_and_class_split(omniglot_root: Path) -> None:
    env = OmniglotEnv(ways=3, root=str(omniglot_root), num_train_characters=4)
    names = [f"{p.parent.parent.name}/{p.parent.name}/{p.name}" for p in env.folders]
    assert names == [
        "images_background/A_alphabet/character01",
        "images_background/B_alphabet/character01",
        "images_background/B_alphabet/character02",
        "images_evaluation/Y_alphabet/character01",
        "images_evaluation/Y_alphabet/character02",
        "images_evaluation/Z_alphabet/character01",
    ]
    np.testing.assert_array_equal(env.class_ids("train"), np.arange(16))  # 4 characters x 4 rotations
    np.testing.assert_array_equal(env.class_ids("test"), np.arange(16, 24))
    folder, turns = env.character_of(17)
    assert (folder.parent.name, folder.name, turns) == ("Y_alphabet", "character02", 1)
    no_rotations = OmniglotEnv(ways=2, root=str(omniglot_root), num_train_characters=4, rotations=False)
    np.testing.assert_array_equal(no_rotations.class_ids("test"), [4, 5])


def test_omniglot_images_are_28x28_inverted_and_rotations_are_classes(omniglot_root: Path) -> None:
    env = OmniglotEnv(ways=3, root=str(omniglot_root), num_train_characters=4)
    assert env.images.shape == (6, 4, 28, 28) and env.instances_per_class() == 4
    background_share = (env.images < 0.5).mean()
    assert background_share > 0.5  # the white background became 0, the strokes bright
    for turns in range(4):  # class 4c + r: character c turned r quarter turns
        rotated = env.draw_images(np.array([4 * 5 + turns]), 4, np.random.default_rng(0))[0, :, 0]
        plain = env.draw_images(np.array([4 * 5]), 4, np.random.default_rng(0))[0, :, 0]
        np.testing.assert_array_equal(rotated, np.rot90(plain, turns, axes=(-2, -1)))
    assert not np.array_equal(np.rot90(env.images[5, 0]), env.images[5, 0])


def test_omniglot_episodes_have_disjoint_support_and_query(omniglot_root: Path) -> None:
    env = OmniglotEnv(ways=3, root=str(omniglot_root), num_train_characters=4)
    ep = env.sample_episode(50, 1, 3, np.random.default_rng(0))
    assert ep.support_x.shape == (50, 3, 1, 28, 28) and ep.query_x.shape == (50, 9, 1, 28, 28)
    assert ep.classes.max() < 16 and all(len(set(row)) == 3 for row in ep.classes.tolist())
    support = ep.support_x.reshape(50, 3, 1, -1)
    query = ep.query_x.reshape(50, 3, 3, -1)
    # same class: the 3 query drawings differ from the support drawing and from each other (4 drawings exist)
    assert np.abs(support - query).sum(-1).min() > 1.0
    assert np.abs(query[:, :, :, None] - query[:, :, None]).sum(-1)[:, :, [0, 0, 1], [1, 2, 2]].min() > 1.0
    test = env.sample_episode(10, 1, 1, np.random.default_rng(0), split="test")
    assert test.classes.min() >= 16
    with pytest.raises(ValueError, match="need 5 distinct images of a class"):
        env.sample_episode(2, 2, 3, np.random.default_rng(0))


def test_missing_omniglot_folder_says_where_to_put_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unzip images_background.zip and images_evaluation.zip"):
        OmniglotEnv(root=str(tmp_path / "nowhere"))
    (tmp_path / "half" / "images_background").mkdir(parents=True)
    with pytest.raises(DataError, match=r"missing images_evaluation/"):
        OmniglotEnv(root=str(tmp_path / "half"))


def test_missing_omniglot_folder_is_one_error_line_through_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = tmp_path / "no_omniglot_here"
    code, _, err = run_cli(
        capsys,
        "train",
        "--config",
        str(ROOT / "configs" / "omniglot_5way1shot.yaml"),
        "--set",
        f"env.kwargs.root={where}",
        "--run-dir",
        str(tmp_path / "run"),
        "--no-progress",
    )
    assert_one_error_line(code, err, f"no Omniglot data at {where}", "images_background", "env.kwargs.root")
    assert not (tmp_path / "run" / "checkpoints").exists()
