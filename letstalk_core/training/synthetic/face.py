"""A procedural cartoon portrait: identities from a seed, frames from a pose.

Everything is drawn with PIL as polygons in "face units" (the canvas is 1 x 1, x to the
right, y down) on a canvas ``supersample`` times larger than the output, then reduced with
a box filter, which gives clean anti-aliased edges at 64-256 px. The head (with hair,
ears, eyes, brows, nose, mouth and glasses) moves as one rigid piece by a small
translation and roll about the neck; background and shoulders stay put.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["FaceIdentity", "FacePose", "sample_identity", "render_face", "mouth_box", "HAIR_STYLES"]

HAIR_STYLES = ("short", "long", "bob", "bun", "curly", "bald", "spiky")

# light to deep skin tones (sRGB)
_SKIN_TONES = np.array(
    [
        (255, 224, 196), (241, 194, 167), (224, 172, 138), (198, 134, 97),
        (161, 102, 68), (121, 76, 48), (92, 56, 36), (232, 190, 150),
    ],
    dtype=np.float64,
)
_HAIR_COLOURS = np.array(
    [
        (25, 20, 18), (58, 38, 28), (96, 62, 38), (140, 88, 46), (196, 150, 86),
        (226, 196, 130), (166, 72, 40), (150, 150, 150), (222, 222, 218), (60, 70, 140), (170, 60, 120),
    ],
    dtype=np.float64,
)
_HAIR_WEIGHTS = np.array([18, 18, 14, 10, 6, 6, 6, 5, 3, 1, 1], dtype=np.float64)
_EYE_COLOURS = np.array(
    [(74, 46, 28), (110, 72, 40), (60, 110, 160), (70, 130, 90), (120, 130, 140), (40, 30, 25), (150, 110, 60)],
    dtype=np.float64,
)
_SHIRT_COLOURS = np.array(
    [
        (40, 60, 110), (170, 40, 50), (50, 120, 80), (230, 230, 235), (30, 30, 35),
        (210, 160, 60), (110, 70, 140), (80, 140, 170), (150, 150, 150), (230, 120, 80),
    ],
    dtype=np.float64,
)

Colour = tuple[int, int, int]


def _rgb(values) -> Colour:
    return tuple(int(round(min(255.0, max(0.0, float(v))))) for v in values)


def _mix(a, b, t: float) -> Colour:
    return _rgb(np.asarray(a, np.float64) * (1.0 - t) + np.asarray(b, np.float64) * t)


@dataclass(frozen=True)
class FaceIdentity:
    """Everything that stays fixed for one person; made by :func:`sample_identity`."""

    seed: int
    skin: Colour
    hair_colour: Colour
    hair_style: str
    eye_colour: Colour
    lip_colour: Colour
    shirt_colour: Colour
    background_top: Colour
    background_bottom: Colour
    background_kind: str  # "vertical", "diagonal" or "radial"
    head_width: float  # half width of the head, face units
    head_height: float  # half height
    jaw_taper: float  # 0 = oval, larger = narrower chin
    head_y: float
    eye_spacing: float  # half distance between the eye centres
    eye_y: float  # relative to the head centre
    eye_size: float  # half width of one eye
    eye_height: float  # half opening height relative to eye_size
    brow_thickness: float
    brow_tilt: float
    nose_length: float
    nose_width: float
    mouth_y: float  # relative to the head centre
    mouth_half_width: float
    lip_thickness: float
    ear_size: float
    neck_width: float
    collar: str  # "crew" or "vee"
    glasses: str  # "none", "round" or "square"
    freckles: tuple = field(default=(), repr=False)  # ((x, y), ...) relative to the head centre


@dataclass(frozen=True)
class FacePose:
    """What changes frame to frame.

    mouth_open: 0 closed .. 1 wide open. mouth_width: 0 narrow/rounded ("oo") .. 1 wide
    ("ee"), 0.5 neutral. blink: 0 open .. 1 closed. head_dx/head_dy: translation in
    fractions of the image. head_roll: radians, positive turns clockwise on screen.
    brow_raise: 0 rest .. 1 raised.
    """

    mouth_open: float = 0.0
    mouth_width: float = 0.5
    blink: float = 0.0
    head_dx: float = 0.0
    head_dy: float = 0.0
    head_roll: float = 0.0
    brow_raise: float = 0.0
    gaze_x: float = 0.0
    gaze_y: float = 0.0

    def __post_init__(self):
        for name in ("mouth_open", "mouth_width", "blink", "brow_raise"):
            value = getattr(self, name)
            if not (math.isfinite(value) and -1e-6 <= value <= 1 + 1e-6):
                raise ValueError(f"FacePose.{name} must be in 0..1, got {value!r}")
        for name, limit in (("head_dx", 0.2), ("head_dy", 0.2), ("head_roll", 0.6), ("gaze_x", 1.0), ("gaze_y", 1.0)):
            value = getattr(self, name)
            if not (math.isfinite(value) and abs(value) <= limit):
                raise ValueError(f"FacePose.{name} must be within +-{limit}, got {value!r}")


def sample_identity(seed: int) -> FaceIdentity:
    """A person drawn from ``seed`` (any int >= 0); the same seed always gives the same face."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"identity seed must be an int >= 0, got {seed!r}")
    rng = np.random.default_rng([int(seed), 0x1DE7])

    def pick(table, weights=None):
        p = None if weights is None else weights / weights.sum()
        return table[rng.choice(len(table), p=p)]

    tone = rng.uniform(0, len(_SKIN_TONES) - 1)
    low = int(tone)
    skin = _SKIN_TONES[low] * (1 - (tone - low)) + _SKIN_TONES[min(low + 1, len(_SKIN_TONES) - 1)] * (tone - low)
    skin = skin + rng.normal(0, 5, 3)
    hair = pick(_HAIR_COLOURS, _HAIR_WEIGHTS) + rng.normal(0, 6, 3)
    lip = np.asarray(skin) * 0.62 + np.array([150, 40, 50]) * 0.38 + rng.normal(0, 6, 3)
    hue = rng.uniform(0, 1)
    background_top = _hsv(hue, rng.uniform(0.15, 0.55), rng.uniform(0.55, 0.95))
    background_bottom = _hsv((hue + rng.uniform(-0.12, 0.12)) % 1.0, rng.uniform(0.2, 0.6), rng.uniform(0.3, 0.75))
    head_width = rng.uniform(0.2, 0.235)
    style = str(rng.choice(HAIR_STYLES, p=np.array([24, 20, 14, 8, 10, 8, 6]) / 90.0))
    freckles = ()
    if rng.uniform() < 0.2 and skin.mean() > 170:
        freckles = tuple(
            (float(side * rng.uniform(0.25, 0.55)), float(rng.uniform(0.12, 0.32)))
            for side in (-1, 1)
            for _ in range(int(rng.integers(4, 9)))
        )
    return FaceIdentity(
        seed=int(seed),
        skin=_rgb(skin),
        hair_colour=_rgb(hair),
        hair_style=style,
        eye_colour=_rgb(pick(_EYE_COLOURS) + rng.normal(0, 8, 3)),
        lip_colour=_rgb(lip),
        shirt_colour=_rgb(pick(_SHIRT_COLOURS) + rng.normal(0, 10, 3)),
        background_top=background_top,
        background_bottom=background_bottom,
        background_kind=str(rng.choice(["vertical", "diagonal", "radial"])),
        head_width=float(head_width),
        head_height=float(head_width * rng.uniform(1.22, 1.42)),
        jaw_taper=float(rng.uniform(0.08, 0.3)),
        head_y=float(rng.uniform(0.43, 0.47)),
        eye_spacing=float(head_width * rng.uniform(0.38, 0.46)),
        eye_y=float(rng.uniform(-0.035, -0.005)),
        eye_size=float(head_width * rng.uniform(0.19, 0.25)),
        eye_height=float(rng.uniform(0.45, 0.62)),
        brow_thickness=float(rng.uniform(0.008, 0.016)),
        brow_tilt=float(rng.uniform(-0.15, 0.25)),
        nose_length=float(rng.uniform(0.055, 0.08)),
        nose_width=float(head_width * rng.uniform(0.16, 0.24)),
        mouth_y=float(rng.uniform(0.115, 0.14)),
        mouth_half_width=float(head_width * rng.uniform(0.3, 0.4)),
        lip_thickness=float(rng.uniform(0.009, 0.016)),
        ear_size=float(rng.uniform(0.035, 0.05)),
        neck_width=float(head_width * rng.uniform(0.48, 0.6)),
        collar=str(rng.choice(["crew", "vee"])),
        glasses=str(rng.choice(["none", "round", "square"], p=[0.78, 0.11, 0.11])),
        freckles=freckles,
    )


def _hsv(h, s, v) -> Colour:
    import colorsys

    return _rgb(np.array(colorsys.hsv_to_rgb(h, s, v)) * 255)


# ----------------------------------------------------------------------------------------
# drawing
# ----------------------------------------------------------------------------------------


class _Painter:
    """Draws polygons given in face units; head parts go through the head transform."""

    def __init__(self, image: Image.Image, scale: float, pose: FacePose, pivot):
        self.draw = ImageDraw.Draw(image)
        self.scale = scale
        cos, sin = math.cos(pose.head_roll), math.sin(pose.head_roll)
        self.rotation = np.array([[cos, -sin], [sin, cos]])
        self.pivot = np.asarray(pivot, np.float64)
        self.shift = np.array([pose.head_dx, pose.head_dy])

    def head(self, points) -> list:
        points = np.asarray(points, np.float64).reshape(-1, 2)
        moved = (points - self.pivot) @ self.rotation.T + self.pivot + self.shift
        return [tuple(p) for p in (moved * self.scale)]

    def world(self, points) -> list:
        return [tuple(p) for p in np.asarray(points, np.float64).reshape(-1, 2) * self.scale]

    def poly(self, points, fill, *, on_head=True, outline=None, width=0.0):
        pts = self.head(points) if on_head else self.world(points)
        self.draw.polygon(pts, fill=fill, outline=outline, width=max(0, int(round(width * self.scale))))

    def line(self, points, fill, width, *, on_head=True):
        pts = self.head(points) if on_head else self.world(points)
        w = max(1, int(round(width * self.scale)))
        self.draw.line(pts, fill=fill, width=w, joint="curve")
        # round caps
        r = w / 2.0
        for x, y in (pts[0], pts[-1]):
            self.draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)


def _ellipse(cx, cy, rx, ry, n=72, start=0.0, stop=2 * math.pi):
    t = np.linspace(start, stop, n, endpoint=stop - start < 2 * math.pi - 1e-9)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)  # [n, 2]


def _head_outline(identity: FaceIdentity, cx, cy, grow=0.0, n=96):
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    lower = np.clip(np.sin(t), 0, None)  # 1 at the chin
    rx = (identity.head_width + grow) * (1 - identity.jaw_taper * lower**2)
    ry = identity.head_height + grow
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)  # [n, 2]


@lru_cache(maxsize=8)
def _background(identity: FaceIdentity, size: int, canvas: int) -> Image.Image:
    """The identity's background gradient, computed at ``size`` and enlarged to the drawing canvas.

    Cached (callers draw on a copy), since every frame of a video shares it.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / max(size - 1, 1)
    if identity.background_kind == "vertical":
        t = yy
    elif identity.background_kind == "diagonal":
        t = (xx + yy) / 2
    else:
        t = np.clip(np.hypot(xx - 0.5, yy - 0.4) / 0.75, 0, 1)
    top = np.asarray(identity.background_top, np.float64)
    bottom = np.asarray(identity.background_bottom, np.float64)
    image = top * (1 - t[..., None]) + bottom * t[..., None]  # [size, size, 3]
    return Image.fromarray(np.round(image).astype(np.uint8)).resize((canvas, canvas), Image.Resampling.BILINEAR)


def _shade(colour, factor) -> Colour:
    return _rgb(np.asarray(colour, np.float64) * factor)


def render_face(identity: FaceIdentity, pose: FacePose = FacePose(), size: int = 128, supersample: int = 0) -> np.ndarray:
    """Render one frame: uint8 ``[size, size, 3]``.

    ``supersample`` is the anti-aliasing factor (0 picks 4 up to 256 px, fewer above).
    """
    if not isinstance(identity, FaceIdentity):
        raise TypeError(f"identity must be a FaceIdentity (from sample_identity), got {type(identity).__name__}")
    if not isinstance(pose, FacePose):
        raise TypeError(f"pose must be a FacePose, got {type(pose).__name__}")
    if not isinstance(size, int) or not 16 <= size <= 2048:
        raise ValueError(f"size must be an int in 16..2048 pixels, got {size!r}")
    if not isinstance(supersample, int) or not 0 <= supersample <= 8:
        raise ValueError(f"supersample must be an int in 0..8 (0 = automatic), got {supersample!r}")
    ss = supersample or max(2, min(4, 1024 // size))
    canvas = size * ss
    background = _background(identity, size, canvas).copy()
    cx, cy = 0.5, identity.head_y
    painter = _Painter(background, canvas, pose, pivot=(cx, cy + identity.head_height * 1.1))
    skin = identity.skin
    skin_dark = _shade(skin, 0.8)

    # shoulders and shirt (static), neck (moves with the head at the top)
    chin_y = cy + identity.head_height
    shoulder_y = chin_y + 0.065
    shirt = identity.shirt_colour
    body = np.concatenate(
        [
            [(0.5 - 0.09, shoulder_y - 0.015)],
            _ellipse(0.5 - 0.27, shoulder_y + 0.16, 0.2, 0.16, 24, math.pi * 1.5, math.pi * 1.0),
            [(0.5 - 0.47, 1.05), (0.5 + 0.47, 1.05)],
            _ellipse(0.5 + 0.27, shoulder_y + 0.16, 0.2, 0.16, 24, math.pi * 2.0, math.pi * 1.5),
            [(0.5 + 0.09, shoulder_y - 0.015)],
        ]
    )  # [K, 2] outline of the shoulders
    painter.poly(body, shirt, on_head=False)
    nw = identity.neck_width
    # the neck's top edge follows the head, its base stays on the shoulders
    neck_top = painter.head([(cx - nw, chin_y - 0.06), (cx + nw, chin_y - 0.06)])
    neck_base = painter.world([(cx + nw * 1.05, shoulder_y + 0.02), (cx - nw * 1.05, shoulder_y + 0.02)])
    painter.draw.polygon(neck_top + neck_base, fill=skin_dark)
    if identity.collar == "vee":
        collar = np.array([(cx - nw * 1.25, shoulder_y - 0.01), (cx, shoulder_y + 0.09), (cx + nw * 1.25, shoulder_y - 0.01)])
    else:
        collar = _ellipse(cx, shoulder_y - 0.005, nw * 1.2, 0.045, 24, 0, math.pi)[::-1]
    neckline = np.concatenate([[(cx - nw * 1.25, shoulder_y - 0.02)], collar, [(cx + nw * 1.25, shoulder_y - 0.02)]])
    painter.poly(neckline, skin_dark, on_head=False)
    painter.line(neckline, _shade(shirt, 0.7), 0.008, on_head=False)

    _draw_hair_back(painter, identity, cx, cy)

    # ears
    for side in (-1, 1):
        ex = cx + side * identity.head_width * 0.97
        ey = cy + identity.eye_y + 0.02
        painter.poly(_ellipse(ex, ey, identity.ear_size * 0.55, identity.ear_size, 32), skin, outline=skin_dark, width=0.004)
        painter.poly(_ellipse(ex + side * 0.004, ey, identity.ear_size * 0.25, identity.ear_size * 0.6, 24), skin_dark)

    # head
    painter.poly(_head_outline(identity, cx, cy), skin, outline=_shade(skin, 0.72), width=0.004)
    # soft cheek colour
    for side in (-1, 1):
        painter.poly(
            _ellipse(cx + side * identity.eye_spacing * 1.15, cy + identity.mouth_y * 0.55, 0.03, 0.018, 32),
            _rgb(np.asarray(skin) * (1.03, 0.92, 0.92)),
        )
    for fx, fy in identity.freckles:
        painter.poly(_ellipse(cx + fx * identity.head_width, cy + fy * identity.head_width, 0.0035, 0.0035, 10), _shade(skin, 0.7))

    _draw_hair_front(painter, identity, cx, cy)
    for side in (-1, 1):
        _draw_eye(painter, identity, pose, cx + side * identity.eye_spacing, cy + identity.eye_y, side)
        _draw_brow(painter, identity, pose, cx + side * identity.eye_spacing, cy + identity.eye_y, side)
    _draw_nose(painter, identity, cx, cy)
    _draw_mouth(painter, identity, pose, cx, cy + identity.mouth_y)
    if identity.glasses != "none":
        _draw_glasses(painter, identity, cx, cy + identity.eye_y)

    image = background.resize((size, size), Image.Resampling.BOX)
    return np.asarray(image, dtype=np.uint8)  # [size, size, 3]


def _draw_hair_back(painter: _Painter, identity: FaceIdentity, cx, cy):
    style, hair = identity.hair_style, identity.hair_colour
    w, h = identity.head_width, identity.head_height
    if style == "long":
        top = _ellipse(cx, cy - h * 0.05, w * 1.22, h * 1.12, 48, math.pi, 2 * math.pi)
        poly = np.concatenate([top, [(cx + w * 1.3, cy + h * 1.55), (cx - w * 1.3, cy + h * 1.55)]])
        painter.poly(poly, _shade(hair, 0.85))
    elif style == "bob":
        top = _ellipse(cx, cy - h * 0.05, w * 1.2, h * 1.08, 48, math.pi, 2 * math.pi)
        poly = np.concatenate([top, [(cx + w * 1.2, cy + h * 0.75), (cx - w * 1.2, cy + h * 0.75)]])
        painter.poly(poly, _shade(hair, 0.85))
    elif style == "bun":
        painter.poly(_ellipse(cx, cy - h * 1.08, w * 0.42, w * 0.38, 40), _shade(hair, 0.9))


def _draw_hair_front(painter: _Painter, identity: FaceIdentity, cx, cy):
    style, hair = identity.hair_style, identity.hair_colour
    w, h = identity.head_width, identity.head_height
    if style == "bald":
        # a little hair above the ears only
        for side in (-1, 1):
            painter.poly(_ellipse(cx + side * w * 0.94, cy - h * 0.3, w * 0.07, h * 0.2, 24), _mix(identity.skin, hair, 0.75))
        return
    volume = {"short": 0.016, "bob": 0.028, "long": 0.026, "curly": 0.038, "bun": 0.008, "spiky": 0.014}[style]
    # outer outline: from the left side over the crown to the right side
    t = np.linspace(math.pi * 0.97, math.pi * 2.03, 72)
    rx, ry = w + volume, h + volume * 1.4
    wobble = 1.0 + (0.05 * np.abs(np.sin(t * 11)) if style == "curly" else 0.0)
    outline = np.stack([cx + rx * wobble * np.cos(t), cy - h * 0.02 + ry * wobble * np.sin(t)], axis=1)
    # hairline back from the right temple to the left one, high on the forehead
    u = np.linspace(1, -1, 41)
    if style in ("bob", "long"):
        # a side-swept fringe
        depth = 0.5 - 0.1 * u
    else:
        depth = 0.64 - 0.04 * np.cos(u * 9)  # a slightly ragged hairline
    hairline_y = cy - h * (depth * (1 - np.abs(u) ** 3) + 0.05 * np.abs(u) ** 3)
    hairline = np.stack([cx + u * w * 0.985, hairline_y], axis=1)
    painter.poly(np.concatenate([outline, hairline]), hair)
    if style == "spiky":
        for k in np.linspace(-0.8, 0.8, 7):
            base = cx + k * w
            root_y = cy - h * (0.9 - 0.25 * k * k)
            tip = (base + 0.02 * k, root_y - h * (0.22 - 0.08 * abs(k)))
            painter.poly([(base - w * 0.15, root_y + 0.01), tip, (base + w * 0.15, root_y + 0.01)], hair)
    # a parting line and a soft shadow where the hair meets the forehead
    painter.line(hairline[6:-6] + [0, 0.004], _mix(identity.skin, hair, 0.35), 0.004)


def _eye_curves(identity: FaceIdentity, pose: FacePose, ex, ey, side, n=28):
    """Upper and lower eyelid curves [n, 2] (left to right) for the current blink."""
    size = identity.eye_size
    u = np.linspace(-1, 1, n)
    bump = (1 - u**2) ** 0.85
    skew = 0.12 * side * u  # outer corner slightly higher
    x = ex + u * size
    open_up = size * identity.eye_height * (1 + 0.12 * side * u)
    open_down = size * identity.eye_height * 0.55
    lower = ey + open_down * bump - skew * size * 0.3
    closed = ey + open_down * bump * 0.75 - skew * size * 0.3
    upper_open = ey - open_up * bump - skew * size * 0.3
    upper = upper_open * (1 - pose.blink) + closed * pose.blink
    return np.stack([x, upper], axis=1), np.stack([x, lower], axis=1)


def _draw_eye(painter: _Painter, identity: FaceIdentity, pose: FacePose, ex, ey, side):
    skin = identity.skin
    size = identity.eye_size
    upper, lower = _eye_curves(identity, pose, ex, ey, side)
    if pose.blink < 0.97:
        painter.poly(np.concatenate([upper, lower[::-1]]), (246, 244, 240))
        iris_r = size * 0.52
        ix, iy = ex + pose.gaze_x * size * 0.3, ey - size * 0.05 + pose.gaze_y * size * 0.2
        painter.poly(_ellipse(ix, iy, iris_r, iris_r, 36), identity.eye_colour, outline=_shade(identity.eye_colour, 0.6), width=0.0025)
        painter.poly(_ellipse(ix, iy, iris_r * 0.48, iris_r * 0.48, 24), (15, 12, 12))
        painter.poly(_ellipse(ix + iris_r * 0.32, iy - iris_r * 0.32, iris_r * 0.2, iris_r * 0.2, 16), (255, 255, 255))
        # lids: skin bands above the upper curve and below the lower curve hide the iris
        band = size * 1.2
        painter.poly(np.concatenate([upper, (upper - [0, band])[::-1]]), skin)
        painter.poly(np.concatenate([lower, (lower + [0, band * 0.8])[::-1]]), skin)
    # lash line and lower lid line
    painter.line(upper, (35, 25, 25), 0.0065)
    painter.line(lower[3:-3], _shade(skin, 0.78), 0.003)
    # eyelid crease
    crease = upper.copy()
    crease[:, 1] = np.minimum(crease[:, 1], ey) - size * 0.35
    painter.line(crease[5:-5], _shade(skin, 0.85), 0.003)


def _draw_brow(painter: _Painter, identity: FaceIdentity, pose: FacePose, ex, ey, side):
    size = identity.eye_size
    u = np.linspace(-1, 1, 16)
    lift = size * (0.9 + 0.35 * pose.brow_raise)
    x = ex + u * size * 1.15
    y = ey - lift - size * 0.28 * (1 - u**2) + identity.brow_tilt * size * 0.3 * (u * side)
    thick = identity.brow_thickness * (0.6 + 0.4 * (1 - np.abs(u + 0.3 * side)))
    top = np.stack([x, y - thick / 2], axis=1)
    bottom = np.stack([x, y + thick / 2], axis=1)
    painter.poly(np.concatenate([top, bottom[::-1]]), _shade(identity.hair_colour, 0.8) if sum(identity.hair_colour) < 560 else (120, 100, 80))


def _draw_nose(painter: _Painter, identity: FaceIdentity, cx, cy):
    skin_dark = _shade(identity.skin, 0.72)
    top = cy + identity.eye_y + 0.01
    tip = top + identity.nose_length
    w = identity.nose_width
    # bridge shadow on one side, nostril wings and the tip
    painter.line([(cx - w * 0.35, top), (cx - w * 0.45, tip - 0.02), (cx - w * 0.2, tip)], _shade(identity.skin, 0.86), 0.004)
    wing = _ellipse(cx, tip - 0.004, w * 0.85, identity.nose_length * 0.22, 28, 0.1 * math.pi, 0.9 * math.pi)
    painter.line(wing, skin_dark, 0.0045)
    for side in (-1, 1):
        painter.poly(_ellipse(cx + side * w * 0.38, tip + 0.001, w * 0.16, w * 0.09, 16), _shade(identity.skin, 0.55))
    painter.poly(_ellipse(cx + w * 0.15, tip - identity.nose_length * 0.25, w * 0.18, w * 0.12, 16), _mix(identity.skin, (255, 255, 255), 0.2))


def mouth_geometry(identity: FaceIdentity, pose: FacePose, cx, my, n=33):
    """Outer lip outline and inner opening curves in face units (before the head transform).

    Returns ``(lips [2n, 2], inner_upper [n, 2], inner_lower [n, 2])``.
    """
    width = pose.mouth_width
    half = identity.mouth_half_width * (0.72 + 0.5 * width) * (1 - 0.12 * pose.mouth_open * (1 - width))
    gap = identity.head_height * 0.28 * pose.mouth_open * (1.25 - 0.35 * width)  # opening height
    lip = identity.lip_thickness
    u = np.linspace(-1, 1, n)
    x = cx + u * half
    shape = (1 - u**2) ** (0.55 + 0.3 * (1 - width))  # rounder for narrow vowels
    inner_upper = my - gap * 0.42 * shape
    inner_lower = my + gap * 0.58 * shape
    bow = 0.25 * lip * np.exp(-((u / 0.18) ** 2))  # cupid's bow dip
    outer_upper = inner_upper - lip * (0.85 * (1 - u**2) ** 0.5 + 0.12) + bow
    outer_lower = inner_lower + lip * (1.25 * (1 - u**2) ** 0.5 + 0.1)
    lips = np.concatenate([np.stack([x, outer_upper], 1), np.stack([x, outer_lower], 1)[::-1]])
    return lips, np.stack([x, inner_upper], 1), np.stack([x, inner_lower], 1)


def mouth_box_fraction(identity: FaceIdentity) -> tuple[float, float, float, float]:
    """``(top, bottom, left, right)`` around the mouth of an unmoved head, as fractions of the frame side."""
    cx, my = 0.5, identity.head_y + identity.mouth_y
    half = identity.mouth_half_width * 1.3
    return (my - identity.head_height * 0.25, my + identity.head_height * 0.32, cx - half, cx + half)


def mouth_box(identity: FaceIdentity, size: int) -> tuple[int, int, int, int]:
    """Pixel box ``(top, bottom, left, right)`` around the mouth of an unmoved head."""
    top, bottom, left, right = mouth_box_fraction(identity)
    return (int(top * size), int(math.ceil(bottom * size)), int(left * size), int(math.ceil(right * size)))


def _draw_mouth(painter: _Painter, identity: FaceIdentity, pose: FacePose, cx, my):
    lips, inner_upper, inner_lower = mouth_geometry(identity, pose, cx, my)
    lip = identity.lip_colour
    painter.poly(lips, lip, outline=_shade(lip, 0.8), width=0.002)
    n = inner_upper.shape[0]
    gap = inner_lower[:, 1] - inner_upper[:, 1]
    if gap.max() > identity.lip_thickness * 0.15:
        painter.poly(np.concatenate([inner_upper, inner_lower[::-1]]), (70, 22, 30))
        # upper teeth hang from the upper inner lip, never below the lower one
        teeth_h = np.minimum(gap, identity.head_height * 0.05)
        teeth_lower = inner_upper.copy()
        teeth_lower[:, 1] += teeth_h
        keep = slice(n // 6, n - n // 6)
        painter.poly(np.concatenate([inner_upper[keep], teeth_lower[keep][::-1]]), (240, 238, 228))
        # tongue rises from the lower inner lip
        tongue_top = inner_lower.copy()
        tongue_top[:, 1] -= np.minimum(gap * 0.45, identity.head_height * 0.04) * (1 - np.linspace(-1, 1, n) ** 2)
        painter.poly(np.concatenate([tongue_top[n // 5 : n - n // 5], inner_lower[n // 5 : n - n // 5][::-1]]), (190, 80, 90))
    # the line where the lips meet
    seam = (inner_upper + inner_lower) / 2 if gap.max() <= identity.lip_thickness * 0.15 else inner_upper
    painter.line(seam, _shade(lip, 0.55), 0.0035)
    # highlight on the lower lip
    lower_mid = inner_lower[n // 3 : n - n // 3] + [0, identity.lip_thickness * 0.7]
    painter.line(lower_mid, _mix(lip, (255, 255, 255), 0.25), identity.lip_thickness * 0.35)


def _draw_glasses(painter: _Painter, identity: FaceIdentity, cx, ey):
    frame = (30, 30, 35) if identity.seed % 2 else (120, 70, 40)
    r = identity.eye_size * 1.35
    for side in (-1, 1):
        gx = cx + side * identity.eye_spacing
        if identity.glasses == "round":
            ring = _ellipse(gx, ey, r, r * 0.9, 48)
        else:
            ring = np.array([(gx - r, ey - r * 0.75), (gx + r, ey - r * 0.75), (gx + r, ey + r * 0.8), (gx - r, ey + r * 0.8)])
        painter.line(np.concatenate([ring, ring[:1]]), frame, 0.006)
        painter.line([(gx + side * r, ey - r * 0.3), (cx + side * identity.head_width * 0.98, ey - r * 0.2)], frame, 0.005)
    painter.line([(cx - identity.eye_spacing + r, ey - r * 0.2), (cx, ey - r * 0.35), (cx + identity.eye_spacing - r, ey - r * 0.2)], frame, 0.005)
