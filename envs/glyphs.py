"""Procedurally generated stroke glyphs: an Omniglot-like few-shot data set that needs nothing from outside.

Every class is a glyph of 1 to 4 pen strokes, each a cubic Bézier curve whose control points
follow a random walk; the glyphs of all ``num_classes`` classes are drawn once from
``numpy.random.SeedSequence(seed)`` (the data set's own seed, independent of the training
seed), so the same seed is the same data set on every machine. Classes ``[0,
num_train_classes)`` are the training split, the rest the held-out test split.

Every *instance* is a fresh handwriting-like variant, drawn from the episode's generator:
each control point jittered, then a random affine map (rotation, anisotropic scale, shear,
translation), a random pen width, rendered anti-aliased at ``image_size``² by splatting a
Gaussian pen along the curve (numpy, one ``bincount`` for all images of an episode), plus Gaussian
pixel noise, clipped to ``[0, 1]``: strokes are bright (1) on a dark (0) background, as in
the MAML code's Omniglot. Instances are never reused, so support and query images are
always different draws.
"""

from __future__ import annotations

import math

import numpy as np
from metarl.envs.fewshot import FewShotEnv, Split

MAX_STROKES = 4
CONTROL_POINTS = 4
CURVE_POINTS = 32
"""Points per stroke at which the Bézier curve is evaluated (at most about a pixel apart)."""
WINDOW = 3
"""Pixels on each side of a curve point that its Gaussian reaches."""
SPLAT_CHUNK = 1024
"""Images rendered per splatting pass."""
INK_GAIN = 1.6
"""Ink = gain x the Gaussian profile across a stroke, clipped at 1 (a flat-topped pen)."""


def bernstein(num_points: int) -> np.ndarray:
    """The cubic Bernstein basis at ``num_points`` evenly spaced parameters: ``[num_points, 4]``."""
    t = np.linspace(0.0, 1.0, num_points)[:, None]
    k = np.arange(CONTROL_POINTS)[None, :]
    binomial = np.array([1, 3, 3, 1], dtype=np.float64)
    return binomial * t**k * (1 - t) ** (CONTROL_POINTS - 1 - k)


def glyph_prototypes(num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Control points ``[num_classes, MAX_STROKES, 4, 2]`` (in ``[-0.85, 0.85]``) and stroke mask ``[num_classes,
    MAX_STROKES]`` of every class, from ``seed`` alone.

    A stroke starts uniformly in ``[-0.7, 0.7]²`` (or, for a later stroke with probability 1/2,
    on a control point of the previous one, so strokes connect), and each next control point
    moves 0.25 to 0.75 in a direction that turns by at most ±100° from the last.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x61797068]))  # "glyph" stream of the seed
    counts = rng.choice(np.arange(1, MAX_STROKES + 1), size=num_classes, p=[0.15, 0.35, 0.35, 0.15])
    mask = np.arange(MAX_STROKES)[None, :] < counts[:, None]
    starts = rng.uniform(-0.7, 0.7, size=(num_classes, MAX_STROKES, 2))
    attach = rng.random((num_classes, MAX_STROKES)) < 0.5
    attach_to = rng.integers(0, CONTROL_POINTS, size=(num_classes, MAX_STROKES))
    heading = rng.uniform(-math.pi, math.pi, size=(num_classes, MAX_STROKES))
    turns = rng.uniform(-1.75, 1.75, size=(num_classes, MAX_STROKES, CONTROL_POINTS - 1))
    lengths = rng.uniform(0.25, 0.75, size=(num_classes, MAX_STROKES, CONTROL_POINTS - 1))
    points = np.zeros((num_classes, MAX_STROKES, CONTROL_POINTS, 2))
    rows = np.arange(num_classes)
    for s in range(MAX_STROKES):  # a loop over the 4 strokes, not over classes
        start = starts[:, s]
        if s > 0:
            joint = points[rows, s - 1, attach_to[:, s]]
            start = np.where(attach[:, s, None], joint, start)
        points[:, s, 0] = start
        angle = heading[:, s]
        for j in range(1, CONTROL_POINTS):
            angle = angle + turns[:, s, j - 1]
            step = lengths[:, s, j - 1, None] * np.stack([np.cos(angle), np.sin(angle)], axis=-1)
            points[:, s, j] = np.clip(points[:, s, j - 1] + step, -0.85, 0.85)
    return points.astype(np.float32), mask


class GlyphsEnv(FewShotEnv):
    """N-way few-shot classification of procedurally generated stroke glyphs (``metarl/Glyphs-v0``).

    ``num_classes`` glyph classes from ``seed``; the first ``num_train_classes`` are the training
    split, the rest are held out for evaluation. The distortion of each instance is set by
    ``jitter`` (control-point noise), ``rotation`` (radians, ±), ``scale`` (log-scale, ±, per
    axis), ``shear`` (±), ``translation`` (±, in units of half the image), ``width`` (range of the
    pen's Gaussian standard deviation, pixels; a stroke is about 2.3 times as wide) and ``noise``
    (pixel noise standard deviation).
    """

    def __init__(
        self,
        ways: int = 5,
        num_classes: int = 4000,
        num_train_classes: int = 3000,
        seed: int = 0,
        image_size: int = 28,
        jitter: float = 0.04,
        rotation: float = 0.2,
        scale: float = 0.15,
        shear: float = 0.2,
        translation: float = 0.12,
        width: tuple[float, float] | list[float] = (0.6, 1.0),
        noise: float = 0.08,
    ) -> None:
        if not 1 <= num_train_classes < num_classes:
            raise ValueError(
                f"need 1 <= num_train_classes < num_classes (both splits non-empty), got {num_train_classes} "
                f"and {num_classes}"
            )
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {image_size}")
        low, high = (float(w) for w in width)
        if not 0 < low <= high:
            raise ValueError(f"width must be a range 0 < low <= high (pixels), got {list(width)}")
        for name, value in (
            ("jitter", jitter),
            ("rotation", rotation),
            ("scale", scale),
            ("shear", shear),
            ("translation", translation),
            ("noise", noise),
        ):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        self.image_shape = (1, image_size, image_size)
        super().__init__(ways)
        self.num_classes, self.num_train_classes, self.seed = num_classes, num_train_classes, seed
        self.jitter, self.rotation, self.scale, self.shear = jitter, rotation, scale, shear
        self.translation, self.width, self.noise = translation, (low, high), noise
        self.control_points, self.stroke_mask = glyph_prototypes(num_classes, seed)
        self._basis = bernstein(CURVE_POINTS).astype(np.float32)

    def class_ids(self, split: Split) -> np.ndarray:
        """``train``: ``0..num_train_classes-1``; ``test``: the rest."""
        if self.check_split(split) == "train":
            return np.arange(self.num_train_classes, dtype=np.int64)
        return np.arange(self.num_train_classes, self.num_classes, dtype=np.int64)

    def draw_images(self, classes: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
        """``count`` fresh instances of each class in ``classes [...]``: ``[..., count, 1, S, S]`` float32."""
        classes = np.asarray(classes, dtype=np.int64)
        if classes.size and (classes.min() < 0 or classes.max() >= self.num_classes):
            raise ValueError(f"class ids must be in [0, {self.num_classes}), got {classes.min()}..{classes.max()}")
        flat = np.repeat(classes.reshape(-1), count)
        images = self.render(flat, rng)
        return images.reshape(*classes.shape, count, *self.image_shape)

    def render(self, classes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One fresh distorted instance per entry of ``classes [B]``: ``[B, 1, S, S]`` float32 (vectorised)."""
        b = classes.size
        ctrl = self.control_points[classes]  # [B, strokes, 4, 2]
        ctrl = ctrl + rng.normal(0.0, self.jitter, size=ctrl.shape).astype(np.float32)
        angle = rng.uniform(-self.rotation, self.rotation, size=b)
        scales = np.exp(rng.uniform(-self.scale, self.scale, size=(b, 2)))
        shear = rng.uniform(-self.shear, self.shear, size=b)
        shift = rng.uniform(-self.translation, self.translation, size=(b, 2))
        cos, sin = np.cos(angle), np.sin(angle)
        rotate = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)  # [B, 2, 2]
        shear_m = np.stack([np.stack([np.ones(b), shear], -1), np.stack([np.zeros(b), np.ones(b)], -1)], -2)
        affine = (rotate @ shear_m * scales[:, None, :]).astype(np.float32)  # R · Sh · diag(s)
        ctrl = np.einsum("bij,bskj->bski", affine, ctrl) + shift[:, None, None, :].astype(np.float32)
        curve = np.einsum("tk,bskd->bstd", self._basis, ctrl)  # [B, strokes, T, 2] in [-1, 1] coordinates
        present, sigma = self.stroke_mask[classes], rng.uniform(*self.width, size=b)
        size = self.image_shape[-1]
        ink = np.empty((b, size * size), dtype=np.float32)
        for i in range(0, b, SPLAT_CHUNK):  # chunks of images bound the splatting's temporaries (no random draws)
            ink[i : i + SPLAT_CHUNK] = self._splat(
                curve[i : i + SPLAT_CHUNK], present[i : i + SPLAT_CHUNK], sigma[i : i + SPLAT_CHUNK]
            )
        if self.noise > 0:
            ink += np.float32(self.noise) * rng.standard_normal(ink.shape, dtype=np.float32)
        return np.clip(ink, 0.0, 1.0, out=ink).reshape(b, *self.image_shape)

    def _splat(self, curve: np.ndarray, present: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        """Render curves ``[B, strokes, T, 2]`` (strokes where ``present [B, strokes]``) as ink ``[B, S*S]``.

        Every curve point adds a Gaussian of standard deviation ``sigma [B]`` (pixels), weighted by
        the arc length it stands for, to the pixels within ``WINDOW`` of it (one ``bincount``).
        Normalised by ``sigma * sqrt(2 pi)``, a long stroke's profile across it peaks at 1; the
        ink is that profile times ``INK_GAIN``, so a pen of ``sigma`` is about ``2.3 sigma`` pixels wide.
        """
        b = curve.shape[0]
        size = self.image_shape[-1]
        uv = (curve + 1.0) * (size / 2.0) - 0.5  # continuous pixel coordinates (x, y)
        gaps = np.sqrt(((uv[:, :, 1:] - uv[:, :, :-1]) ** 2).sum(-1))  # [B, strokes, T-1]
        arc = np.zeros(uv.shape[:-1], dtype=np.float32)
        arc[:, :, :-1] += gaps / 2
        arc[:, :, 1:] += gaps / 2  # each point stands for half of each neighbouring gap
        image = np.repeat(np.nonzero(present)[0], uv.shape[2])  # the image of each drawn point
        points = uv[present].reshape(-1, 2)  # [N, 2]: the points of the present strokes only
        s = sigma.astype(np.float32)[image][:, None]  # [N, 1]
        weight = arc[present].reshape(-1) / (s[:, 0] * np.float32(math.sqrt(2 * math.pi)))
        centre = np.clip(np.rint(points), 0, size - 1).astype(np.int32)  # [N, 2]; points off the canvas add ~0
        offsets = np.arange(-WINDOW, WINDOW + 1, dtype=np.int32)
        px, py = centre[:, 0, None] + offsets, centre[:, 1, None] + offsets  # [N, W]
        gx = np.exp(-((px - points[:, 0, None]) ** 2) / (2 * s**2))
        gy = np.exp(-((py - points[:, 1, None]) ** 2) / (2 * s**2))
        values = (gy[:, :, None] * gx[:, None, :]) * weight[:, None, None]  # [N, W, W]
        padded = size + 2 * WINDOW  # a margin of WINDOW pixels: no bounds checks
        index = (image.astype(np.int64) * padded * padded)[:, None, None] + (
            (py + WINDOW)[:, :, None] * padded + (px + WINDOW)[:, None, :]
        )
        density = np.bincount(index.ravel(), weights=values.ravel(), minlength=b * padded * padded)
        density = density.reshape(b, padded, padded)[:, WINDOW : WINDOW + size, WINDOW : WINDOW + size]
        return np.minimum(INK_GAIN * density, 1.0).reshape(b, size * size)
