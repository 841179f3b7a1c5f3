"""Paint a photo-like image from a synthetic scene's label and instance maps.

Each class has a base colour and a texture (smooth blotches, fine grain and a
class pattern: sky gradient, water waves, grass stripes, sand ripples,
building windows, car glass, people's heads). Per image, random lighting
(brightness and a side light), hue rotation, saturation, texture phases and
per-object colours (buildings, clothes, car paint) vary, so many images fit one
label map while the class stays recognisable from colour and texture.
"""

from __future__ import annotations

import cv2
import numpy as np

from sdm.data.synthetic import BUILDING, CAR, GRASS, MOUNTAIN, PERSON, ROAD, SAND, SKY, TREE, WATER, grid

# Render colours (RGB 0..255) per class, distinct from the display palette on purpose.
BASE = np.array([[120, 170, 235], [240, 240, 245], [115, 100, 130], [70, 150, 55], [215, 190, 130],
                 [35, 85, 160], [85, 85, 90], [30, 90, 35], [165, 95, 70], [130, 120, 105],
                 [200, 60, 60], [230, 190, 40]], dtype=np.float32)
# Texture amplitudes per class: smooth blotches, fine grain.
SMOOTH = np.array([0.04, 0.06, 0.12, 0.15, 0.08, 0.08, 0.05, 0.22, 0.06, 0.15, 0.05, 0.03], dtype=np.float32)
GRAIN = np.array([0.01, 0.02, 0.05, 0.08, 0.06, 0.03, 0.07, 0.08, 0.03, 0.09, 0.03, 0.02], dtype=np.float32)
OBJECT_COLOURS = {  # per-object colour ranges (RGB lows, highs)
    BUILDING: ([120, 60, 40], [220, 200, 180]),
    PERSON: ([30, 30, 30], [240, 240, 240]),
    CAR: ([40, 40, 40], [250, 250, 250]),
}
SKIN = np.array([225, 180, 150], dtype=np.float32)
GLASS = np.array([40, 55, 70], dtype=np.float32)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def _hue_saturation(img: np.ndarray, angle: float, saturation: float) -> np.ndarray:
    """Rotate hue by ``angle`` radians and scale saturation, in YIQ space. img float [S,S,3]."""
    to_yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32)
    c, s = np.cos(angle) * saturation, np.sin(angle) * saturation
    rot = np.array([[1, 0, 0], [0, c, -s], [0, s, c]], np.float32)
    m = np.linalg.inv(to_yiq) @ rot @ to_yiq
    return img @ m.T.astype(np.float32)


def render(label: np.ndarray, instance: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """label [S,S] (classes of ``sdm.data.synthetic``), instance [S,S] -> RGB uint8 [S,S,3]."""
    size = label.shape[0]
    y, x = grid(size)
    colours = BASE + rng.normal(0, 8, BASE.shape).astype(np.float32)
    img = colours[label]
    for obj_id in np.unique(instance):
        cls = int(obj_id) // 1000
        if obj_id < 1000 or cls not in OBJECT_COLOURS:
            continue
        lo, hi = OBJECT_COLOURS[cls]
        mask = instance == obj_id
        img[mask] = rng.uniform(lo, hi).astype(np.float32)
        if cls in (PERSON, CAR):  # head / windows: the top of the object's box
            rows = np.nonzero(mask.any(axis=1))[0]
            frac = 0.25 if cls == PERSON else 0.45
            top = mask & (np.arange(size)[:, None] <= rows[0] + frac * (rows[-1] - rows[0]))
            img[top] = SKIN if cls == PERSON else GLASS

    phase = rng.uniform(0, 2 * np.pi, 4).astype(np.float32)
    texture = (1.0 + SMOOTH[label] * _smooth_noise(rng, size, 6)
               + GRAIN[label] * rng.standard_normal((size, size)).astype(np.float32))
    theta = rng.uniform(0, np.pi)
    patterns = {
        SKY: 0.82 + 0.35 * y,
        WATER: 1 + 0.12 * np.sin(2 * np.pi * 9 * y + 1.5 * np.sin(2 * np.pi * 2 * x + phase[0]) + phase[1]),
        GRASS: 1 + 0.07 * np.sin(2 * np.pi * 5 * (x * np.cos(theta) + y * np.sin(theta)) + phase[2]),
        SAND: 1 + 0.06 * np.sin(2 * np.pi * (12 * y + 0.8 * np.sin(2 * np.pi * 3 * x)) + phase[3]),
        MOUNTAIN: 1.15 - 0.4 * np.clip(0.6 - y, 0, 1),
        TREE: 1 + 0.1 * np.sin(2 * np.pi * 8 * x + phase[0]) * np.sin(2 * np.pi * 8 * y + phase[1]),
        ROAD: np.ones_like(y),
    }
    for cls, pattern in patterns.items():
        texture = np.where(label == cls, texture * pattern, texture)
    windows = ((np.mod(x * 12 + phase[2] / 6, 1) < 0.45) & (np.mod(y * 12 + phase[3] / 6, 1) < 0.45))
    texture = np.where((label == BUILDING) & windows, texture * 0.55, texture)
    img = img * texture[..., None]

    light = rng.uniform(0.75, 1.2) * (1 + rng.uniform(-0.2, 0.2) * (x - 0.5))
    img = _hue_saturation(img * light[..., None], rng.uniform(-0.25, 0.25), rng.uniform(0.75, 1.25))
    return np.clip(img, 0, 255).astype(np.uint8)
