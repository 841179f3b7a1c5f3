"""The built-in synthetic scenes dataset: layered outdoor scenes with 12 classes.

``make_scene`` draws a label map and an instance map (sky and clouds, a
mountain ridge, grass/sand ground, sea or lake, a perspective road, then
buildings, trees, rocks, people and cars in depth order). ``render`` paints a
photo-like image from them: each class has a base colour and a texture (smooth
blotches, fine grain and a class pattern: sky gradient, water waves, grass
stripes, sand ripples, building windows, car glass, people's heads); per image,
random lighting (brightness and a side light), hue rotation, saturation,
texture phases and per-object colours (buildings, clothes, car paint) vary, so
many images fit one label map while the class stays recognisable from colour
and texture. Regions are large on purpose: every class stays recognisable at
32x32. ``synthesize`` writes a dataset of them in the folder format.

Deterministic: example ``i`` of seed ``s`` uses the generator
``default_rng([s, i])``, so the first k examples do not depend on ``n``.
Instance ids follow Cityscapes: stuff pixels carry their class id, the k-th
object of class c carries ``c * 1000 + k``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

CLASS_NAMES = ["sky", "cloud", "mountain", "grass", "sand", "water", "road",
               "tree", "building", "rock", "person", "car"]
PALETTE = [[110, 160, 230], [235, 235, 240], [120, 105, 140], [80, 160, 60], [220, 200, 140], [30, 80, 170],
           [90, 90, 95], [25, 95, 35], [170, 80, 60], [135, 125, 110], [230, 50, 60], [250, 200, 30]]
INSTANCE_CLASSES = ["tree", "building", "rock", "person", "car"]
(SKY, CLOUD, MOUNTAIN, GRASS, SAND, WATER, ROAD, TREE, BUILDING, ROCK, PERSON, CAR) = range(12)


def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x) in (0, 1), float32 [S, S] each."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(c, c, indexing="ij")


def _ellipse(y: np.ndarray, x: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 < 1.0


def _rect(y: np.ndarray, x: np.ndarray, top: float, bottom: float, left: float, right: float) -> np.ndarray:
    return (y >= top) & (y < bottom) & (x >= left) & (x < right)


def _stuff(rng: np.random.Generator, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, float, tuple | None]:
    """Background classes. Returns (label, horizon, road as (centre at horizon, centre at bottom))."""
    label = np.full(y.shape, SKY, dtype=np.uint8)
    horizon = rng.uniform(0.38, 0.6)
    for _ in range(rng.integers(0, 3)):
        cy, cx = rng.uniform(0.08, horizon - 0.12), rng.uniform(0.1, 0.9)
        label[_ellipse(y, x, cy, cx, rng.uniform(0.05, 0.09), rng.uniform(0.12, 0.25))] = CLOUD
    if rng.random() < 0.7:
        f1, f2, p1, p2 = rng.uniform(0.6, 1.5), rng.uniform(2.0, 4.0), rng.uniform(0, 1), rng.uniform(0, 1)
        ridge = 0.5 + 0.3 * np.sin(2 * np.pi * (f1 * x + p1)) + 0.2 * np.sin(2 * np.pi * (f2 * x + p2))
        label[(y > horizon - rng.uniform(0.12, 0.28) * ridge) & (y < horizon)] = MOUNTAIN
    ground = y >= horizon
    base, other = (GRASS, SAND) if rng.random() < 0.6 else (SAND, GRASS)
    label[ground] = base
    if rng.random() < 0.5:  # a second ground kind on one side, with a wavy border
        border = rng.uniform(0.25, 0.75) + 0.08 * np.sin(2 * np.pi * (3 * y + rng.uniform(0, 1)))
        side = (x < border) if rng.random() < 0.5 else (x >= border)
        label[ground & side] = other
    water = rng.random()
    if water < 0.3:  # sea: a band under the horizon
        depth = rng.uniform(0.1, 0.25) * (1 - horizon) + 0.02 * np.sin(2 * np.pi * (2 * x + rng.uniform(0, 1)))
        label[ground & (y < horizon + depth)] = WATER
    elif water < 0.6:  # lake
        cy = rng.uniform(horizon + 0.15, 0.85)
        lake = _ellipse(y, x, cy, rng.uniform(0.2, 0.8), rng.uniform(0.06, 0.12), rng.uniform(0.15, 0.3))
        label[ground & lake] = WATER
    road = None
    if rng.random() < 0.55:  # narrows towards the horizon
        top_c, bottom_c = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7)
        t = np.clip((y - horizon) / (1 - horizon), 0, 1)
        centre = top_c + (bottom_c - top_c) * t
        half = 0.015 + rng.uniform(0.12, 0.2) * t
        label[ground & (np.abs(x - centre) < half)] = ROAD
        road = (top_c, bottom_c)
    return label, horizon, road


def _objects(rng: np.random.Generator, horizon: float, road: tuple | None) -> list[tuple[float, int, list]]:
    """Object placements as (base y, class, shapes); shapes are ("ellipse"|"rect", params)."""
    objs: list[tuple[float, int, list]] = []

    def ground_y() -> tuple[float, float]:
        base = rng.uniform(horizon + 0.06, 1.02)
        return base, 0.7 + 0.8 * min((base - horizon) / (1 - horizon), 1.0)  # nearer is bigger

    for _ in range(rng.choice(4, p=[0.3, 0.35, 0.25, 0.1])):
        w, h, cx = rng.uniform(0.1, 0.2), rng.uniform(0.14, 0.32), rng.uniform(0.05, 0.95)
        base = horizon + rng.uniform(0.0, 0.04)
        objs.append((base, BUILDING, [("rect", (base - h, base, cx - w / 2, cx + w / 2))]))
    for _ in range(rng.choice(5, p=[0.2, 0.3, 0.25, 0.15, 0.1])):
        base, s = ground_y()
        cx = rng.uniform(0.02, 0.98)
        trunk_h, rx, ry = 0.07 * s, rng.uniform(0.06, 0.09) * s, rng.uniform(0.09, 0.13) * s
        objs.append((base, TREE, [("rect", (base - trunk_h - 0.01, base, cx - 0.015 * s, cx + 0.015 * s)),
                                  ("ellipse", (base - trunk_h - ry * 0.8, cx, ry, rx))]))
    for _ in range(rng.choice(4, p=[0.4, 0.3, 0.2, 0.1])):
        base, s = ground_y()
        cx, rx, ry = rng.uniform(0.05, 0.95), rng.uniform(0.05, 0.08) * s, rng.uniform(0.04, 0.06) * s
        objs.append((base, ROCK, [("ellipse", (base, cx, ry, rx))]))
    for _ in range(rng.choice(3, p=[0.35, 0.4, 0.25])):
        base, s = ground_y()
        cx, h, w = rng.uniform(0.05, 0.95), rng.uniform(0.2, 0.26) * s, 0.05 * s
        objs.append((base, PERSON, [("ellipse", (base - h * 0.45, cx, h * 0.45, w)),
                                    ("ellipse", (base - h * 0.95, cx, h * 0.13, w * 0.8))]))
    for _ in range(rng.choice(3, p=[0.4, 0.4, 0.2])):
        base, s = ground_y()
        if road is not None:
            t = (base - horizon) / (1 - horizon)
            cx = road[0] + (road[1] - road[0]) * min(t, 1.0) + rng.uniform(-0.05, 0.05)
        else:
            cx = rng.uniform(0.1, 0.9)
        w, h = rng.uniform(0.12, 0.16) * s, 0.06 * s
        objs.append((base, CAR, [("rect", (base - h, base, cx - w, cx + w)),
                                 ("rect", (base - h * 2, base - h + 0.002, cx - w * 0.55, cx + w * 0.45))]))
    objs.sort(key=lambda o: o[0])  # painter's order: far (small base y) first
    return objs


def make_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (label uint8 [S,S] in [0, 12), instance uint16 [S,S])."""
    y, x = grid(size)
    label, horizon, road = _stuff(rng, y, x)
    instance = label.astype(np.uint16)
    next_id = dict.fromkeys(range(len(CLASS_NAMES)), 0)
    for _, cls, shapes in _objects(rng, horizon, road):
        mask = np.zeros(y.shape, dtype=bool)
        for kind, p in shapes:
            mask |= _rect(y, x, *p) if kind == "rect" else _ellipse(y, x, *p)
        if not mask.any():
            continue
        label[mask] = cls
        instance[mask] = cls * 1000 + next_id[cls]
        next_id[cls] += 1
    return label, instance


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
    """Paint one image: label [S,S] (the classes above), instance [S,S] -> RGB uint8 [S,S,3]."""
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


def synthesize(
    out: str | Path, n: int, size: int, seed: int, *, workers: int | None = None, progress: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write ``n`` scenes of ``size`` px in the folder format to ``out`` (atomically); returns ``out``.

    Layout: images/scene_00000.png, labels/..., instances/... (8- or 16-bit ids), classes.json,
    .sdm-output.json. An existing ``out`` is replaced only when sdm wrote synthetic scenes there (or it is
    empty) unless ``overwrite`` (``sdm.output_folders``); one writer at a time (``sdm.locks``).
    """
    from sdm.atomic import atomic_dir
    from sdm.data.prepare import ordered_map
    from sdm.data.shards import encode_png
    from sdm.locks import lock_target
    from sdm.output_folders import SYNTHETIC

    if n < 1 or size < 16:
        raise ValueError(f"need n >= 1 and size >= 16, got n={n}, size={size}")
    out = Path(out)
    # No stamp in the marker: the folder is DVC-versioned by content, so equal inputs must give equal bytes.
    with lock_target(out, f"synthetic scenes output {out}"), \
            atomic_dir(out, kind=SYNTHETIC, overwrite=overwrite, stamp=False) as tmp:
        for sub in ("images", "labels", "instances"):
            (tmp / sub).mkdir()

        def one(i: int) -> None:
            rng = np.random.default_rng([seed, i])
            label, instance = make_scene(rng, size)
            image = render(label, instance, rng)
            name = f"scene_{i:05d}.png"
            (tmp / "images" / name).write_bytes(encode_png(image))
            (tmp / "labels" / name).write_bytes(encode_png(label))
            (tmp / "instances" / name).write_bytes(encode_png(instance.astype(np.uint16)))

        for _ in tqdm(ordered_map(one, range(n), workers or os.cpu_count() or 1), total=n,
                      desc="synth", unit="img", disable=not progress):
            pass
        (tmp / "classes.json").write_text(json.dumps({
            "names": CLASS_NAMES, "palette": PALETTE, "instance_classes": INSTANCE_CLASSES,
            "generator": {"name": "sdm synthetic scenes", "n": n, "size": size, "seed": seed},
        }, indent=1) + "\n")
    return out
