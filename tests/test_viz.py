"""Label colouring and grids."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sdm.viz import colorize, default_palette, save_grid


def test_default_palette_is_distinct_and_stable() -> None:
    pal = default_palette(300)
    assert len(pal) == 300 and len({tuple(c) for c in pal}) == 300
    assert all(0 <= v <= 255 for c in pal for v in c)
    assert default_palette(5) == pal[:5]


def test_colorize() -> None:
    label = np.array([[0, 1], [2, 1]])
    out = colorize(label, [[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert out[1, 0].tolist() == [7, 8, 9] and out[0, 1].tolist() == [4, 5, 6]
    assert colorize(label).shape == (2, 2, 3)
    with pytest.raises(ValueError, match="palette has 2 colours"):
        colorize(label, [[0, 0, 0], [1, 1, 1]])


def test_save_grid(tmp_path) -> None:
    a = np.full((4, 6, 3), 10, np.uint8)
    b = np.full((4, 6, 3), 200, np.uint8)
    path = save_grid([[a, b], [b]], tmp_path / "g" / "grid.png", gap=2)
    img = np.asarray(Image.open(path))
    assert img.shape == (2 * 4 + 3 * 2, 2 * 6 + 3 * 2, 3)
    assert img[2, 2].tolist() == [10, 10, 10] and img[2, 2 + 6 + 2].tolist() == [200, 200, 200]
    assert img[0, 0].tolist() == [255, 255, 255]
    assert [p.name for p in path.parent.iterdir()] == ["grid.png"]
    with pytest.raises(ValueError, match="uint8"):
        save_grid([[a.astype(np.float32)]], tmp_path / "x.png")
