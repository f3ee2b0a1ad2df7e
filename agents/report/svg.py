"""Small helpers for writing SVG by hand: escaping, text widths, colours."""

from __future__ import annotations

import re

#: the pictures' font size (px) and the width of one character of it (monospace)
FONT = 11
CHAR_W = 6.65
_BAD_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")

#: one colour per process or file, in order of first appearance
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f",
           "#ff9da7", "#86bcb6", "#8cd17d", "#b6992d", "#d37295", "#a0cbe8", "#ffbe7d",
           "#79706e", "#d4a6c8")
RED = "#d62728"

STYLE = """
text { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 11px; }
.title { font-size: 15px; font-weight: bold; }
.sub { fill: #555; }
.small { font-size: 9.5px; fill: #777; }
.halo { paint-order: stroke; stroke: #fff; stroke-width: 3px; stroke-linejoin: round; }
"""


def clean(text: str) -> str:
    """``text`` without what XML 1.0 cannot carry (control characters, lone surrogates)."""
    return _BAD_XML.sub("\N{REPLACEMENT CHARACTER}", text)


def esc(text: object) -> str:
    """Text content or attribute value, escaped for XML."""
    s = clean(str(text))
    return (s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;"))


def width(text: str) -> float:
    """The width ``text`` takes in the pictures' font."""
    return len(text) * CHAR_W


def fit(text: str, room: float) -> str:
    """``text`` cut (with an ellipsis) to fit ``room`` pixels."""
    n = max(1, int(room // CHAR_W))
    return text if len(text) <= n else text[: max(0, n - 1)] + "\N{HORIZONTAL ELLIPSIS}"


def colour(i: int) -> str:
    """The ``i``-th palette colour."""
    return PALETTE[i % len(PALETTE)]
