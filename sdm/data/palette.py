"""Colour palettes for label maps (for formats whose release has no official colours)."""

from __future__ import annotations


def distinct_palette(num_classes: int) -> list[list[int]]:
    """``num_classes`` distinct RGB colours (the PASCAL VOC bit-interleaving scheme).

    Class 0 is black; neighbouring ids get very different colours. Deterministic.
    """
    palette = []
    for index in range(num_classes):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette.append([r, g, b])
    return palette
