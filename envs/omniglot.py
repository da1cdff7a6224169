"""Omniglot (Lake et al. 2015) N-way few-shot classification from a local copy of the data set.

Reads the standard folder layout of the official release
(https://github.com/brendenlake/omniglot, ``python/images_background.zip`` and
``python/images_evaluation.zip``, unzipped side by side)::

    <root>/images_background/<alphabet>/<character>/*.png   (30 alphabets, 964 characters)
    <root>/images_evaluation/<alphabet>/<character>/*.png   (20 alphabets, 659 characters)

Nothing is downloaded. A missing folder is one :class:`~metarl.errors.DataError` saying where
to put the data.

**Class split** (the 1200 / 423 character split of Vinyals et al. 2016 and the MAML paper):
the characters are ordered background first, then evaluation, each by alphabet folder name
then character folder name (sorted); the first ``num_train_characters`` (1200) are the
training characters, the remaining 423 are held out for evaluation. (The MAML code shuffles
the 1623 characters with Python's ``random.seed(1)`` before taking its first 1200; that order
depends on ``os.listdir``, so it is not reproduced here. This split is the same size and
deterministic; it puts all 964 background characters and the first 236 evaluation
characters, in sorted order, into training.)

**Rotations**: with ``rotations`` (the default, as in the MAML paper), each character at 0,
90, 180 and 270 degrees is a class of its own: 4800 training and 1692 test classes. Class id
``4 c + r`` is character ``c`` rotated by ``r`` quarter turns (counter-clockwise).

**Images**: each PNG (105 x 105, black strokes on white) is converted to grey, resized to
``image_size``² with Lanczos filtering and inverted (as in the MAML code): strokes near 1,
background 0. Every character has 20 drawings; support and query images of a class are
distinct drawings. Images are read on first use (about 32,000 files, some seconds).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from metarl.envs.fewshot import FewShotEnv, Split, choose_distinct

from metarl.errors import DataError

FOLDERS = ("images_background", "images_evaluation")
SOURCE = "https://github.com/brendenlake/omniglot (python/images_background.zip and python/images_evaluation.zip)"
NUM_CHARACTERS = 1623
ROTATIONS = 4


def character_folders(root: Path) -> list[Path]:
    """Every character folder under ``root``: background first, then evaluation, each sorted by alphabet, character.

    Raises :class:`DataError` naming where to put the data when a folder is missing or holds no characters.
    """
    missing = [name for name in FOLDERS if not (root / name).is_dir()]
    if missing:
        raise DataError(
            f"no Omniglot data at {root} (missing {', '.join(f'{m}/' for m in missing)}): unzip "
            f"images_background.zip and images_evaluation.zip from {SOURCE} into {root}/, or set "
            "env.kwargs.root to the folder that holds images_background/ and images_evaluation/"
        )
    folders: list[Path] = []
    for name in FOLDERS:
        alphabets = sorted(a for a in (root / name).iterdir() if a.is_dir())
        found = [c for a in alphabets for c in sorted(a.iterdir()) if c.is_dir()]
        if not found:
            raise DataError(f"no Omniglot characters in {root / name}: expected <alphabet>/<character>/*.png folders")
        folders += found
    return folders


def load_character_images(folders: list[Path], image_size: int) -> np.ndarray:
    """``[characters, drawings, image_size, image_size]`` float32 in ``[0, 1]``, strokes bright.

    Every character contributes its first ``drawings`` PNGs in name order, where ``drawings`` is the
    smallest count of any character (20 in the official data).
    """
    from PIL import Image, UnidentifiedImageError

    files = [sorted(folder.glob("*.png")) for folder in folders]
    counts = [len(f) for f in files]
    fewest = min(counts)
    if fewest < 2:
        where = folders[counts.index(fewest)]
        raise DataError(f"Omniglot character folder {where} holds {fewest} PNG images; every character needs >= 2")
    images = np.empty((len(folders), fewest, image_size, image_size), dtype=np.float32)
    for c, character in enumerate(files):
        for d, file in enumerate(character[:fewest]):
            try:
                with Image.open(file) as image:
                    grey = image.convert("L").resize((image_size, image_size), Image.Resampling.LANCZOS)
            except (OSError, UnidentifiedImageError) as exc:
                raise DataError(f"cannot read Omniglot image {file}: {exc}") from None
            images[c, d] = 1.0 - np.asarray(grey, dtype=np.float32) / 255.0
    return images


class OmniglotEnv(FewShotEnv):
    """N-way few-shot Omniglot from ``root`` (``metarl/Omniglot-v0``); see the module docstring for the split."""

    def __init__(
        self,
        ways: int = 5,
        root: str = "data/omniglot",
        num_train_characters: int = 1200,
        rotations: bool = True,
        image_size: int = 28,
    ) -> None:
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {image_size}")
        self.image_shape = (1, image_size, image_size)
        super().__init__(ways)
        self.root = Path(root).expanduser()
        self.folders = character_folders(self.root)
        if not 1 <= num_train_characters < len(self.folders):
            raise DataError(
                f"num_train_characters={num_train_characters} leaves no test characters: {self.root} holds "
                f"{len(self.folders)} characters (the full data set has {NUM_CHARACTERS})"
            )
        self.num_train_characters = num_train_characters
        self.rotations = ROTATIONS if rotations else 1
        self._images: np.ndarray | None = None

    @property
    def images(self) -> np.ndarray:
        """``[characters, drawings, S, S]``, read on first use."""
        if self._images is None:
            self._images = load_character_images(self.folders, self.image_shape[-1])
        return self._images

    @property
    def num_characters(self) -> int:
        """Characters found under ``root`` (1623 in the full data set)."""
        return len(self.folders)

    def instances_per_class(self) -> int:
        """Drawings per character (20 in the full data set)."""
        return int(self.images.shape[1])

    def class_ids(self, split: Split) -> np.ndarray:
        """Class ids ``rotations * c + r`` of the split's characters ``c`` and every rotation ``r``."""
        if self.check_split(split) == "train":
            first, last = 0, self.num_train_characters
        else:
            first, last = self.num_train_characters, self.num_characters
        return np.arange(first * self.rotations, last * self.rotations, dtype=np.int64)

    def character_of(self, class_id: int) -> tuple[Path, int]:
        """The character folder and quarter turns of a class id."""
        character, turns = divmod(int(class_id), self.rotations)
        return self.folders[character], turns

    def draw_images(self, classes: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
        """``count`` distinct drawings of each class in ``classes [...]``, rotated: ``[..., count, 1, S, S]``."""
        classes = np.asarray(classes, dtype=np.int64)
        images = self.images
        total = self.num_characters * self.rotations
        if classes.size and (classes.min() < 0 or classes.max() >= total):
            raise ValueError(f"class ids must be in [0, {total}), got {classes.min()}..{classes.max()}")
        character, turns = np.divmod(classes, self.rotations)
        drawing = choose_distinct(rng, images.shape[1], classes.shape, count)  # [..., count]
        out = images[character[..., None], drawing]  # [..., count, S, S]
        for k in range(1, self.rotations):
            selected = turns == k
            out[selected] = np.rot90(out[selected], k, axes=(-2, -1))
        return out[..., None, :, :]
