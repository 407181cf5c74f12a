"""Drawing of the synthetic faces of ``facekd.data.synthetic`` (parameters and OpenCV strokes).

All geometry lives in the canonical 112x112 aligned frame of the ArcFace template
(``facekd.data.align.ARCFACE_TEMPLATE``) and is scaled to the render size at draw time. Colours
are RGB floats. ``identity_params`` draws what makes a person (fixed for ``(seed, identity)``),
``image_params`` what changes between photos of that person (pose, expression, light, clutter).
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from facekd.data.align import ARCFACE_TEMPLATE

_SHIFT = 4  # cv2 fixed-point bits: sub-pixel strokes, so small faces still vary smoothly
_AA = cv2.LINE_AA

SKIN_TONES = np.array(
    [[242, 214, 192], [226, 184, 152], [200, 150, 114], [162, 114, 82], [116, 78, 54], [84, 56, 40]]
)
HAIR_COLOURS = np.array(
    [[28, 24, 22], [66, 44, 30], [112, 76, 46], [186, 150, 96], [146, 62, 32], [150, 148, 146]]
)
EYE_COLOURS = np.array([[72, 46, 26], [40, 30, 22], [72, 112, 150], [82, 118, 72], [112, 112, 120]])

EYE_Y, NOSE_X, NOSE_Y = ARCFACE_TEMPLATE[:2, 1].mean(), *ARCFACE_TEMPLATE[2]
EYE_DX = (ARCFACE_TEMPLATE[1, 0] - ARCFACE_TEMPLATE[0, 0]) / 2  # 17.6: half the eye spacing
MOUTH_Y, MOUTH_DX = (
    ARCFACE_TEMPLATE[3:, 1].mean(),
    (ARCFACE_TEMPLATE[4, 0] - ARCFACE_TEMPLATE[3, 0]) / 2,
)
CENTRE = np.array([56.0, 64.0])  # pose (rotation / scale / yaw) pivot
_DIAMOND = np.array([[0.0, -1.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])


class Pen:
    """cv2 strokes in canonical 112-px coordinates onto a uint8 image of any size.

    Strokes are anti-aliased with sub-pixel (fixed-point) coordinates, so small faces still
    vary smoothly; OpenCV anti-aliases only 8-bit images.
    """

    def __init__(self, image: np.ndarray) -> None:
        self.image, self.k = image, image.shape[0] / 112.0
        self.f = self.k * (1 << _SHIFT)  # canonical units -> fixed-point pixels

    def _pt(self, x: float, y: float) -> tuple[int, int]:
        return round(x * self.f), round(y * self.f)

    def _t(self, thickness: float) -> int:
        return -1 if thickness < 0 else max(1, round(thickness * self.k))

    def poly(self, pts, colour, thickness: float = -1, closed: bool = True) -> None:
        """A filled polygon (``thickness < 0``) or a polyline; ``pts`` (N, 2) or a list of such."""
        many = isinstance(pts, list) and len(pts) > 0 and np.ndim(pts[0]) == 2
        polys = [np.rint(np.asarray(q) * self.f).astype(np.int32) for q in (pts if many else [pts])]
        if thickness < 0:
            cv2.fillPoly(self.image, polys, colour, _AA, _SHIFT)
        else:
            cv2.polylines(self.image, polys, closed, colour, self._t(thickness), _AA, _SHIFT)

    def ellipse(self, c, axes, colour, angle=0.0, thickness=-1, start=0.0, end=360.0) -> None:
        cv2.ellipse(
            self.image,
            self._pt(*c),
            self._pt(*axes),
            angle,
            start,
            end,
            colour,
            self._t(thickness),
            _AA,
            _SHIFT,
        )

    def circle(self, c, r: float, colour, thickness: float = -1) -> None:
        cv2.circle(
            self.image, self._pt(*c), round(r * self.f), colour, self._t(thickness), _AA, _SHIFT
        )


def _arc(c, ax, ay, t0, t1, n=24, taper=0.0) -> np.ndarray:
    """(n, 2) points of an ellipse arc (radians, y down); ``taper`` narrows the lower half."""
    t = np.linspace(t0, t1, n)
    x = ax * np.cos(t) * (1.0 - taper * np.clip(np.sin(t), 0, 1) ** 2)
    return np.stack([c[0] + x, c[1] + ay * np.sin(t)], 1)


def _rgb(c) -> tuple[float, float, float]:
    return tuple(float(v) for v in np.clip(c, 0, 255))


@lru_cache(maxsize=4096)
def identity_params(seed: int, identity: int) -> dict:
    """Everything fixed for one synthetic person, a pure function of ``(seed, identity)``.

    Cached (the same dict is returned again): treat it as read-only.
    """
    r = np.random.default_rng([seed, 1, identity])
    u = r.uniform
    t = u(0, len(SKIN_TONES) - 1)
    i = int(t)
    skin = SKIN_TONES[i] + (t - i) * (SKIN_TONES[min(i + 1, len(SKIN_TONES) - 1)] - SKIN_TONES[i])
    skin = skin + r.normal(0, 7, 3)
    hair = HAIR_COLOURS[r.integers(len(HAIR_COLOURS))] * u(0.8, 1.2) + r.normal(0, 8, 3)
    iris = EYE_COLOURS[r.integers(len(EYE_COLOURS))] + r.normal(0, 10, 3)
    lip = 0.6 * skin + 0.4 * np.array([170, 60, 70]) + r.normal(0, 8, 3)
    n_moles = r.choice(4, p=[0.4, 0.3, 0.2, 0.1])
    mole_t, mole_r = u(0, 2 * np.pi, n_moles), 0.75 * np.sqrt(u(0, 1, n_moles))
    freckles = r.normal([56, 70], [14, 5], (int(r.integers(14, 34)), 1, 2)) + _DIAMOND * 0.7
    beard = u(0.55, 0.85) if r.random() < 0.2 else None
    p = dict(
        face_c=(56 + u(-1.5, 1.5), 60 + u(-2, 2)),
        face_ax=u(34, 42),
        face_ay=u(46, 53),
        jaw=u(0.0, 0.35),
        eye_y=EYE_Y + u(-2.5, 2.5),
        eye_dx=EYE_DX * u(0.88, 1.12),
        eye_w=u(4.5, 6.8),
        eye_h=u(2.0, 3.4),
        eye_tilt=u(-9, 9),
        iris_r=u(1.7, 2.6),
        brow_dy=u(5.5, 9.5),
        brow_len=u(0.9, 1.4),
        brow_arch=u(-1, 3.5),
        brow_tilt=u(-12, 12),
        brow_t=u(1.0, 2.6),
        nose_dx=u(-1, 1),
        nose_y=NOSE_Y + u(-2.5, 2.5),
        nose_w=u(3.5, 7.5),
        mouth_y=MOUTH_Y + u(-3, 3),
        mouth_dx=MOUTH_DX * u(0.82, 1.15),
        lip_t=u(1.3, 3.2),
        ear_h=u(7, 11),
        hair_style=int(r.integers(4)),
        hairline=u(18, 33),
        hair_part=u(-14, 14),
        hair_vol=u(2, 9),
        moles=[
            (56 + 36 * mr * np.cos(mt), 62 + 44 * mr * np.sin(mt), u(0.7, 1.7))
            for mt, mr in zip(mole_t, mole_r, strict=True)
        ],
        freckles=freckles if r.random() < 0.25 else None,  # (N, 4, 2) small diamonds
        glasses=(int(r.integers(2)), u(0.8, 1.8)) if r.random() < 0.22 else None,
        beard=beard,
        moustache=r.random() < 0.15,
        texture=r.normal(0, 1, (6, 6)).astype(np.float32),
        tex_amp=u(0.03, 0.09),
    )
    shades = {"skin": 1, "ear": 0.9, "neck": 0.8, "shade": 0.62, "lid": 0.35, "mole": 0.45}
    p["col"] = {name: _rgb(skin * f) for name, f in shades.items()}
    p["col"].update(freckle=_rgb(skin * 0.72), hair=_rgb(hair), brow=_rgb(hair * 0.8))
    p["col"].update(iris=_rgb(iris), lip=_rgb(lip), lip_low=_rgb(lip * 1.08))
    p["col"].update(frame=_rgb(r.uniform(10, 90, 3)))
    if beard is not None:
        p["col"]["beard"] = _rgb(skin * beard + hair * (1 - beard))
    return p


@lru_cache(maxsize=1024)
def identity_texture(seed: int, identity: int, size: int) -> np.ndarray:
    """``(size, size)`` float32 low-frequency skin texture of a person, zero-mean-ish."""
    p = identity_params(seed, identity)
    tex = cv2.resize(p["texture"], (size, size), interpolation=cv2.INTER_CUBIC)
    return tex * np.float32(p["tex_amp"])


@lru_cache(maxsize=8)
def noise_bank(size: int) -> np.ndarray:
    """A fixed ``(2 size, 2 size, 3)`` float32 N(0, 1) field; images take shifted windows of it
    (drawing fresh normals per image would cost more than the whole drawing)."""
    return np.random.default_rng(12345).standard_normal((2 * size, 2 * size, 3), np.float32)


def image_params(seed: int, identity: int, image_index: int, nuisance: float) -> dict:
    """What changes between two photos of a person: pose, expression, light, clutter, noise."""
    r = np.random.default_rng([seed, 2, identity, image_index])
    u, n = r.uniform, nuisance
    return dict(
        angle=float(np.clip(r.normal(0, 6), -14, 14)) * n,
        scale=float(np.exp(r.normal(0, 0.04) * n)),
        shift=r.normal(0, 2.0, 2) * n,
        yaw=u(-0.35, 0.35) * n,
        smile=u(-0.3, 1.0),
        mouth_open=u(0.5, 4.5) if r.random() < 0.3 else 0.0,
        eye_open=0.15 if r.random() < 0.05 else u(0.6, 1.15),
        brow_raise=u(-1.5, 1.5),
        bg=r.uniform(20, 235, 3),
        bg_grad=r.normal(0, 40, 3),
        clothes=_rgb(r.uniform(15, 240, 3)),
        clutter=[
            (int(r.integers(3)), r.uniform(-10, 122, 4), _rgb(r.uniform(0, 255, 3)))
            for _ in range(int(r.integers(2, 7)))
        ],
        light_dir=float(u(0, 2 * np.pi)),
        light=float(u(0, 0.45) * n),
        gain=float(np.exp(r.normal(0, 0.15) * n)),
        contrast=float(np.exp(r.normal(0, 0.12) * n)),
        cast=np.exp(r.normal(0, 0.05, 3) * n).astype(np.float32),
        occluder=(
            int(r.integers(2)),
            r.uniform(30, 82, 2),
            r.uniform(7, 17, 2),
            _rgb(r.uniform(0, 255, 3)),
        )
        if r.random() < 0.2 * n
        else None,
        blur=u(0.3, 1.2) * n if r.random() < 0.4 else 0.0,
        noise=u(1, 6) * n,
        noise_at=(int(r.integers(112)), int(r.integers(112)), float(r.choice([-1.0, 1.0]))),
    )


def draw_scene(pen: Pen, p: dict, q: dict, face_mask: np.ndarray) -> np.ndarray:
    """Clutter, clothing, head of identity ``p`` in expression ``q`` (canonical frame).

    Fills the face oval with 1 in ``face_mask`` (uint8, same size). Returns the (5, 2)
    canonical landmarks: eye centres, nose tip, mouth corners.
    """
    for kind, (x0, y0, x1, y1), col in q["clutter"]:  # background clutter
        if kind == 0:
            pen.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], col)
        elif kind == 1:
            pen.circle((x0, y0), abs(x1 - y1) / 4 + 4, col)
        else:
            pen.poly([(x0, y0), (x1, y1)], col, thickness=3, closed=False)
    col, yaw = p["col"], q["yaw"]
    pen.poly([(-5, 130), (-5, 104), (28, 97), (84, 97), (117, 104), (117, 130)], q["clothes"])
    pen.poly([(42, 80), (70, 80), (72, 115), (40, 115)], col["neck"])
    fc, ax, ay = p["face_c"], p["face_ax"], p["face_ay"]
    if p["hair_style"] == 3:  # long hair behind the head
        pen.poly(
            np.vstack(
                [
                    _arc(fc, ax + p["hair_vol"] + 4, ay, np.pi, 2 * np.pi),
                    [(fc[0] + ax + 8, 108), (fc[0] - ax - 8, 108)],
                ]
            ),
            col["hair"],
        )
    for side in (-1, 1):  # ears
        pen.ellipse(
            (fc[0] + side * (ax - 1) + yaw * 4, p["eye_y"] + 9), (4.5, p["ear_h"]), col["ear"]
        )
    oval = _arc(fc, ax, ay, 0, 2 * np.pi, 48, p["jaw"])
    pen.poly(oval, col["skin"])
    Pen(face_mask).poly(oval, 1)
    return draw_features(pen, p, q, fc[0] + yaw * 5)


def draw_features(pen: Pen, p: dict, q: dict, cx: float) -> np.ndarray:
    """Hair, eyes, brows, nose, mouth, marks and glasses; ``cx`` = mid-line (shifted by yaw)."""
    col, fc, ax, ay = p["col"], p["face_c"], p["face_ax"], p["face_ay"]
    for x, y, rad in p["moles"]:
        pen.circle((x + q["yaw"] * 4, y), rad, col["mole"])
    if p["freckles"] is not None:
        pen.poly(list(p["freckles"] + [q["yaw"] * 4, 0]), col["freckle"])
    if p["hair_style"] > 0:  # cap of hair down to a hairline with a parting
        top = _arc(fc, ax + p["hair_vol"] * 0.5, ay + p["hair_vol"], np.pi * 1.04, np.pi * 1.96)
        line = [
            (fc[0] + ax * 0.95, p["hairline"] + 14),
            (cx + p["hair_part"], p["hairline"]),
            (fc[0] - ax * 0.95, p["hairline"] + 14),
        ]
        pen.poly(np.vstack([top, line]), col["hair"])
    if p["beard"] is not None:
        jaw = _arc((cx, fc[1]), ax * 0.92, ay * 0.97, 0.15 * np.pi, 0.85 * np.pi, 16, p["jaw"])
        pen.poly(
            np.vstack([jaw, [(cx - 16, p["mouth_y"] - 4), (cx + 16, p["mouth_y"] - 4)]]),
            col["beard"],
        )
    eyes = []
    for side in (-1, 1):
        ex, ey = cx + side * p["eye_dx"], p["eye_y"]
        w, h = p["eye_w"] * (1 + side * q["yaw"] * 0.3), p["eye_h"] * q["eye_open"]
        pen.ellipse((ex, ey), (w, h), (245, 242, 236), side * p["eye_tilt"])
        pen.circle((ex, ey), min(p["iris_r"], h), col["iris"])
        pen.circle((ex, ey), min(p["iris_r"], h) * 0.45, (12, 10, 10))
        pen.ellipse((ex, ey), (w, h), col["lid"], side * p["eye_tilt"], 1.0, 180, 360)
        by = ey - p["brow_dy"] - q["brow_raise"]
        bw, tilt = w * p["brow_len"], np.deg2rad(p["brow_tilt"]) * side
        bx = np.array([-1.0, -0.3, 0.4, 1.0]) * bw
        brow = np.stack([ex + bx, by - p["brow_arch"] * (1 - bx**2 / bw**2) + bx * tilt], 1)
        pen.poly(brow, col["brow"], thickness=p["brow_t"], closed=False)
        eyes.append((ex, ey))
    nx, ny, nw = cx + p["nose_dx"] + q["yaw"] * 2, p["nose_y"], p["nose_w"]
    shade = col["shade"]
    pen.poly(
        [(cx - 2, p["eye_y"] + 4), (nx - nw * 0.6, ny - 1), (nx - nw, ny + 1)], shade, 1, False
    )
    pen.ellipse((nx - nw * 0.45, ny + 1.5), (1.6, 1.0), shade)
    pen.ellipse((nx + nw * 0.45, ny + 1.5), (1.6, 1.0), shade)
    if p["moustache"]:
        pen.ellipse((nx, p["mouth_y"] - 5), (p["mouth_dx"] * 0.9, 2.5), col["hair"])
    mouth = draw_mouth(pen, p, q, nx)
    if p["glasses"] is not None:
        (shape, t), frame = p["glasses"], col["frame"]
        for ex, ey in eyes:
            if shape == 0:
                pen.circle((ex, ey), p["eye_w"] + 3.5, frame, t)
            else:
                pen.poly(
                    [(ex - 9, ey - 5), (ex + 9, ey - 5), (ex + 8, ey + 6), (ex - 8, ey + 6)],
                    frame,
                    t,
                )
        pen.poly(
            [(eyes[0][0] + 8, eyes[0][1] - 2), (eyes[1][0] - 8, eyes[1][1] - 2)],
            frame,
            t,
            closed=False,
        )
    return np.array([*eyes, (nx, ny), *mouth])


def draw_mouth(pen: Pen, p: dict, q: dict, cx: float) -> list[tuple[float, float]]:
    """Lips with smile curvature and opening; returns the two mouth corners."""
    sm, op, lt, y0 = q["smile"], q["mouth_open"], p["lip_t"], p["mouth_y"]
    dx = p["mouth_dx"] * (1 + 0.06 * sm)
    x = np.linspace(-1, 1, 11)
    mid = y0 - sm * 1.5 + sm * 3.0 * (1 - x**2)  # corners rise, centre drops with a smile
    upper = mid - lt * (1 - x**2) ** 0.5
    lower = mid + op + 1.3 * lt * (1 - x**2) ** 0.5
    xs = cx + x * dx
    if op > 0:
        pen.poly(
            np.vstack([np.stack([xs, mid], 1), np.stack([xs, mid + op], 1)[::-1]]), (60, 20, 25)
        )
    pen.poly(np.vstack([np.stack([xs, upper], 1), np.stack([xs, mid], 1)[::-1]]), p["col"]["lip"])
    pen.poly(
        np.vstack([np.stack([xs, mid + op], 1), np.stack([xs, lower], 1)[::-1]]),
        p["col"]["lip_low"],
    )
    return [(xs[0], mid[0]), (xs[-1], mid[-1])]
