"""The world's scenes: an object of one class, colour and pattern in one context, drawn with numpy at twice
the output size and box-downsampled; and the captions that describe a scene, with words left out at random.

Everything a scene shows is in its `Scene`, so the truth about any render is known exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

CLASSES = ("dog", "cat", "teapot", "vase", "backpack")
COLOURS = {
    "red": (205, 35, 35),
    "orange": (240, 135, 25),
    "yellow": (240, 215, 35),
    "green": (40, 150, 50),
    "blue": (35, 75, 215),
    "purple": (135, 45, 175),
    "white": (245, 245, 245),
    "black": (35, 35, 35),
}
PATTERNS = ("plain", "striped", "dotted")
# context -> the words that name it in a caption (a paper prompt's phrasing); "plain" has none
CONTEXTS = {
    "plain": "",
    "beach": "on the beach",
    "snow": "in the snow",
    "grass": "on the grass",
    "jungle": "in the jungle",
    "fabric": "on top of pink fabric",
    "wood": "on top of a wooden floor",
}
# (colour, pattern) each class never wears in pretraining: the subjects are made of these
HELD_OUT = {
    "dog": ("purple", "dotted"),
    "cat": ("green", "striped"),
    "teapot": ("red", "dotted"),
    "vase": ("yellow", "striped"),
    "backpack": ("blue", "dotted"),
}

SIZE = 32  # output pixels; drawing happens at 2x


@dataclass(frozen=True)
class Scene:
    cls: str
    colour: str
    pattern: str
    context: str = "plain"
    scale: float = 0.34  # object half-size as a share of the image
    x: float = 0.5  # centre, share of width
    ground: float = 0.82  # where the object stands, share of height
    flip: bool = False
    seed: int = 0  # tints, pattern phase and background details


def random_scene(rng: np.random.Generator, held_out: bool = False, **fixed) -> Scene:
    """A scene with every attribute drawn at random (except those in `fixed`); held-out combinations are
    redrawn unless `held_out`."""
    while True:
        s = Scene(
            cls=str(rng.choice(CLASSES)),
            colour=str(rng.choice(list(COLOURS))),
            pattern=str(rng.choice(PATTERNS)),
            context=str(rng.choice(list(CONTEXTS))),
            scale=float(rng.uniform(0.3, 0.42)),
            x=float(rng.uniform(0.38, 0.62)),
            ground=float(rng.uniform(0.76, 0.9)),
            flip=bool(rng.random() < 0.5),
            seed=int(rng.integers(1 << 31)),
        )
        s = replace(s, **fixed)
        if held_out or HELD_OUT[s.cls] != (s.colour, s.pattern):
            return s


def caption(scene: Scene, rng: np.random.Generator, keep: float = 0.75) -> str:
    """'a photo of a red striped dog on the beach', each attribute kept with probability `keep`."""
    words = [str(rng.choice(["a photo of a", "a photo of a", "a"]))]
    if rng.random() < keep:
        words.append(scene.colour)
    if scene.pattern != "plain" and rng.random() < keep:
        words.append(scene.pattern)
    words.append(scene.cls)
    if scene.context != "plain" and rng.random() < keep:
        words.append(CONTEXTS[scene.context])
    return " ".join(words)


def full_caption(scene: Scene, prefix: str = "a photo of a") -> str:
    words = [prefix, scene.colour] + ([scene.pattern] if scene.pattern != "plain" else []) + [scene.cls]
    return " ".join(words + ([CONTEXTS[scene.context]] if scene.context != "plain" else []))


def render(scene: Scene, size: int = SIZE) -> np.ndarray:
    """The scene as a uint8 array (size, size, 3)."""
    n = 2 * size
    rng = np.random.default_rng(scene.seed)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) + 0.5
    img = BACKGROUNDS[scene.context](xx / n, yy / n, rng)
    mask = silhouette(scene, xx, yy, n)
    tint = np.clip(np.array(COLOURS[scene.colour], np.float32) + rng.uniform(-12, 12, 3), 0, 255)
    body = np.broadcast_to(tint, img.shape).copy()
    mark = pattern_mask(scene.pattern, xx, yy, rng)
    body[mark] = shade(tint)
    edge = mask & ~erode(mask)
    img[mask] = body[mask]
    img[edge] = tint * 0.45
    small = img.reshape(size, 2, size, 2, 3).mean(axis=(1, 3))
    return np.clip(small + 0.5, 0, 255).astype(np.uint8)


def silhouette(scene: Scene, xx: np.ndarray, yy: np.ndarray, n: int) -> np.ndarray:
    """Where the object is on the n x n drawing grid (pixel centres xx, yy)."""
    # object frame: unit coordinates, the object spans about [-1, 1] with its feet at v = 0.85
    r = scene.scale * n
    u = (xx - scene.x * n) / r
    v = (yy - scene.ground * n) / r + 0.85
    if scene.flip:
        u = -u
    return SHAPES[scene.cls](u, v)


def render_mask(scene: Scene, size: int = SIZE) -> np.ndarray:
    """The exact share of each output pixel that the object covers, as a uint8 array (size, size): 255 = all object,
    the `--masked-loss` mask of `render(scene, size)` (its outline included)."""
    n = 2 * size
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) + 0.5
    covered = silhouette(scene, xx, yy, n).astype(np.float32)
    return np.round(covered.reshape(size, 2, size, 2).mean(axis=(1, 3)) * 255).astype(np.uint8)


def shade(c: np.ndarray) -> np.ndarray:
    """A pattern's ink: darker on light colours, lighter on dark ones."""
    return c * 0.45 if c.mean() > 90 else c + (255 - c) * 0.55


def erode(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        out &= np.roll(mask, (dy, dx), axis=(0, 1))
    return out


def pattern_mask(pattern: str, xx, yy, rng) -> np.ndarray:
    phase = rng.uniform(0, 12)
    if pattern == "striped":
        return ((xx + yy + phase) % 10) < 4.5
    if pattern == "dotted":
        gx, gy = (xx + phase) % 11 - 5.5, (yy + phase * 0.7) % 11 - 5.5
        return gx * gx + gy * gy < 8.5
    return np.zeros(xx.shape, bool)


# ----- shapes: boolean masks over the object frame (u right, v down) -----


def ellipse(u, v, cu, cv, ru, rv):
    return ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 <= 1


def box(u, v, u0, v0, u1, v1):
    return (u >= u0) & (u <= u1) & (v >= v0) & (v <= v1)


def bar(u, v, a, b, width):
    """A thick segment from point a to point b."""
    (au, av), (bu, bv) = a, b
    du, dv = bu - au, bv - av
    t = np.clip(((u - au) * du + (v - av) * dv) / (du * du + dv * dv), 0, 1)
    return (u - au - t * du) ** 2 + (v - av - t * dv) ** 2 <= (width / 2) ** 2


def triangle(u, v, p, q, r):
    def side(a, b):
        return (u - b[0]) * (a[1] - b[1]) - (a[0] - b[0]) * (v - b[1])

    d1, d2, d3 = side(p, q), side(q, r), side(r, p)
    return ~(((d1 < 0) | (d2 < 0) | (d3 < 0)) & ((d1 > 0) | (d2 > 0) | (d3 > 0)))


def dog(u, v):
    m = ellipse(u, v, -0.05, 0.15, 0.6, 0.3) | ellipse(u, v, 0.6, -0.3, 0.27, 0.25)
    m |= ellipse(u, v, 0.88, -0.22, 0.2, 0.12) | ellipse(u, v, 0.45, -0.28, 0.11, 0.26)
    for x in (-0.5, -0.3, 0.22, 0.42):
        m |= box(u, v, x - 0.07, 0.2, x + 0.07, 0.85)
    return m | bar(u, v, (-0.6, 0.05), (-0.95, -0.35), 0.1)


def cat(u, v):
    m = ellipse(u, v, 0.0, 0.35, 0.4, 0.5) | ellipse(u, v, 0.12, -0.35, 0.3, 0.27)
    m |= triangle(u, v, (-0.15, -0.45), (0.02, -0.85), (0.12, -0.5))
    m |= triangle(u, v, (0.15, -0.5), (0.3, -0.88), (0.4, -0.42))
    return m | bar(u, v, (-0.3, 0.8), (-0.85, 0.6), 0.11) | bar(u, v, (-0.85, 0.6), (-0.9, 0.15), 0.11)


def teapot(u, v):
    m = ellipse(u, v, 0.0, 0.38, 0.62, 0.47) | ellipse(u, v, 0.0, -0.1, 0.32, 0.1)
    m |= ellipse(u, v, 0.0, -0.25, 0.09, 0.09)
    m |= bar(u, v, (0.45, 0.4), (0.95, -0.1), 0.14)
    handle = ellipse(u, v, -0.65, 0.35, 0.3, 0.3) & ~ellipse(u, v, -0.65, 0.35, 0.18, 0.18)
    return m | handle


def vase(u, v):
    half = 0.16 + 0.4 * np.exp(-(((v - 0.35) / 0.38) ** 2)) + 0.12 * np.exp(-(((v + 0.85) / 0.08) ** 2))
    return (np.abs(u) <= half) & (v >= -0.92) & (v <= 0.85)


def backpack(u, v):
    body = box(u, v, -0.5, -0.55, 0.5, 0.85) & ~(
        (((np.abs(u) - 0.3) / 0.2) ** 2 + ((v + 0.35) / 0.2) ** 2 > 1) & (np.abs(u) > 0.3) & (v < -0.35)
    )
    pocket = box(u, v, -0.35, 0.25, 0.35, 0.72)
    rim = pocket & ~box(u, v, -0.29, 0.31, 0.29, 0.66)
    loop = ellipse(u, v, 0.0, -0.65, 0.2, 0.17) & ~ellipse(u, v, 0.0, -0.65, 0.1, 0.08)
    return (body & ~rim) | loop


SHAPES = {"dog": dog, "cat": cat, "teapot": teapot, "vase": vase, "backpack": backpack}


# ----- backgrounds: (x, y) in [0, 1] -> float image -----


def fill(x, colour):
    return np.broadcast_to(np.array(colour, np.float32), x.shape + (3,)).copy()


def two_part(x, y, top, bottom, horizon):
    return np.where((y < horizon)[..., None], fill(x, top), fill(x, bottom))


def plain(x, y, rng):
    grey = rng.uniform(195, 225)
    return fill(x, (grey, grey, grey + 4)) - 12 * y[..., None]


def beach(x, y, rng):
    h = rng.uniform(0.4, 0.5)
    img = two_part(x, y, (110, 185, 245), (235, 210, 150), h)
    img[(y >= h) & (y < h + 0.1)] = (30, 110, 190)
    return img


def snow(x, y, rng):
    h = rng.uniform(0.4, 0.5)
    img = two_part(x, y, (185, 200, 220), (250, 250, 252), h)
    for _ in range(18):
        img[ellipse(x, y, rng.uniform(0, 1), rng.uniform(0, h), 0.018, 0.018)] = 255
    return img


def grass(x, y, rng):
    h = rng.uniform(0.4, 0.5)
    img = two_part(x, y, (120, 185, 245), (70, 165, 55), h)
    img[(y > h) & ((x * 37 + y * 5) % 1 < 0.25)] = (45, 120, 35)
    return img


def jungle(x, y, rng):
    img = fill(x, (20, 75, 30))
    for _ in range(14):
        img[ellipse(x, y, rng.uniform(0, 1), rng.uniform(0, 1), 0.12, 0.05)] = (45, 135, 50)
    return img


def fabric(x, y, rng):
    fold = np.sin((x * 1.3 + y) * rng.uniform(9, 12) + rng.uniform(0, 6))[..., None]
    return fill(x, (235, 145, 185)) + 22 * fold


def wood(x, y, rng):
    h = rng.uniform(0.35, 0.45)
    img = two_part(x, y, (225, 215, 195), (150, 95, 50), h)
    img[(y > h) & (((x - (y - h) * 0.6) * 6) % 1 < 0.08)] = (95, 55, 25)
    return img


BACKGROUNDS = {"plain": plain, "beach": beach, "snow": snow, "grass": grass, "jungle": jungle, "fabric": fabric, "wood": wood}


def batch(rng: np.random.Generator, n: int, size: int = SIZE, **fixed) -> tuple[list[Scene], np.ndarray]:
    scenes = [random_scene(rng, **fixed) for _ in range(n)]
    return scenes, np.stack([render(s, size) for s in scenes])


def subject_scenes(cls: str, n: int, seed: int = 0) -> list[Scene]:
    """A subject's photo folder: its held-out colour and pattern, on plain backgrounds, in varied poses."""
    colour, pattern = HELD_OUT[cls]
    rng = np.random.default_rng([seed, 5])
    return [random_scene(rng, held_out=True, cls=cls, colour=colour, pattern=pattern, context="plain") for _ in range(n)]
