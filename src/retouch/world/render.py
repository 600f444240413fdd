"""Rasterization of mini-world scenes: procedural background textures and anti-aliased objects.

Anti-aliasing. Objects are drawn on a ``SUPERSAMPLE``× finer grid and box-filtered to the output grid,
layer by layer, so every output pixel knows which fraction of it shows each paint (body colour,
pattern colour, outline, hat, hat band). Compositing those fractions over the background is exactly
"render at 4× and box-downsample" wherever object edges do not cross each other; where two objects'
edges meet in one pixel the later one is composited *over* the earlier one (Porter–Duff), which is
what a supersampled render gives up to sub-pixel arrangement. Object positions snap to the fine grid.

Masks. ``alpha[i]`` is the visible fraction of each pixel showing object ``i`` (body and hat, after
occlusion by later objects). A pixel belongs to the layer showing the most of it: background or one
object (ties go to the background, then to the earlier object), and inside an object to the hat or
the body (ties go to the body). Masks of different objects are therefore disjoint, ``masks ==
body_masks | hat_masks``, and a pixel no object touches (``alpha.sum(0) == 0``) is bit-identical to
the background render.

Speed. Background kinds are precomputed once per resolution scale as a bank of ``BANK_TILES``
periodic ``TILE``² tiles (module-level cache); a scene takes a crop (and maybe a horizontal flip)
chosen by its ``texture_seed``. Object coverages are cached per (shape, pattern, hat, diameter,
sub-pixel phase), so placing an object is a slice update of a small window.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from retouch.world.scene import SceneSpec
from retouch.world.vocabulary import (
    BACKGROUNDS,
    COLOUR_RGB,
    HAT_BAND_RGB,
    HAT_RGB,
    OUTLINE_RGB,
    pattern_rgb,
    world_profile,
)

SUPERSAMPLE = 4
#: Side of the periodic texture tiles, in output pixels, and how many tiles each background kind has.
TILE = 256
BANK_TILES = 8
#: Textures, outlines and object sizes are designed at this resolution and scale with the image side.
BASE_SIZE = 64
_BANK_SEED = 20240611

# Paint order of the object layers; coverages of one object's layers never overlap.
_BASE, _PATTERN, _OUTLINE, _HAT, _BAND = range(5)


@dataclass(frozen=True)
class RenderedScene:
    """A rendered scene: image (H, W, 3) float32 in [0, 1]; per-object (N, H, W) masks and alpha."""

    image: np.ndarray
    masks: np.ndarray  # (N, H, W) bool, body ∪ hat, visible pixels only
    body_masks: np.ndarray  # (N, H, W) bool
    hat_masks: np.ndarray  # (N, H, W) bool, empty for objects without a hat
    alpha: np.ndarray  # (N, H, W) float32, visible coverage of body and hat


# ---------------------------------------------------------------------------------------------
# Background textures
# ---------------------------------------------------------------------------------------------
_BANKS: dict[tuple[str, float], np.ndarray] = {}


def build_texture_banks(size: int = 64, backgrounds=BACKGROUNDS) -> None:
    """Build (once per process) the texture tiles used at image side ``size``; later calls are free."""
    for background in backgrounds:
        _bank(background, size / BASE_SIZE)


def _bank(background: str, scale: float) -> np.ndarray:
    key = (background, scale)
    bank = _BANKS.get(key)
    if bank is None:
        make = _TEXTURES[background]
        index = BACKGROUNDS.index(background)
        tiles = [make(np.random.default_rng([_BANK_SEED, index, tile]), scale) for tile in range(BANK_TILES)]
        bank = _BANKS[key] = np.stack(tiles).astype(np.float32)
    return bank


def render_background(background: str, texture_seed: int, height: int, width: int | None = None) -> np.ndarray:
    """The background crop (height, width, 3) float32 that a scene with this texture seed shows.

    Texture features scale with ``height`` (the image side), so a scene looks alike at 64² and 128².
    """
    width = height if width is None else width
    bank = _bank(background, height / BASE_SIZE)
    bits = _splitmix64(texture_seed)
    tile = bank[bits % BANK_TILES]
    if (bits >> 3) & 1:
        tile = tile[:, ::-1]
    oy = _offset((bits >> 8) & 0xFFFFFF, height)
    ox = _offset((bits >> 32) & 0xFFFFFF, width)
    if height <= TILE and width <= TILE:
        crop = tile[oy:oy + height, ox:ox + width]
    else:  # tiles are periodic, so wrapping around is seamless
        crop = tile.take(np.arange(oy, oy + height) % TILE, axis=0).take(np.arange(ox, ox + width) % TILE, axis=1)
    if background == "sky":
        clouds = crop[..., :1]  # sky tiles hold cloud density; the gradient belongs to the image, not the tile
        return _sky_gradient(height) * (1 - clouds) + np.float32(0.97) * clouds
    return np.array(crop, dtype=np.float32, copy=True)


def _offset(bits24: int, length: int) -> int:
    span = TILE - length + 1 if length <= TILE else TILE
    return (bits24 * span) >> 24


def _splitmix64(seed: int) -> int:
    z = (int(seed) + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return z ^ (z >> 31)


@functools.lru_cache(maxsize=16)
def _sky_gradient(height: int) -> np.ndarray:
    t = ((np.arange(height) + 0.5) / height)[:, None, None]
    top, bottom = np.array([0.26, 0.50, 0.90]), np.array([0.64, 0.80, 0.97])
    return (top * (1 - t) + bottom * t).astype(np.float32)  # (H, 1, 3)


def _noise(rng: np.random.Generator, sigma_y: float, sigma_x: float) -> np.ndarray:
    """Periodic Gaussian-filtered white noise on the tile, zero mean, unit standard deviation."""
    white = rng.standard_normal((TILE, TILE))
    fy = np.fft.fftfreq(TILE)[:, None]
    fx = np.fft.rfftfreq(TILE)[None, :]
    gain = np.exp(-2 * np.pi**2 * ((sigma_y * fy) ** 2 + (sigma_x * fx) ** 2))
    field = np.fft.irfft2(np.fft.rfft2(white) * gain, s=(TILE, TILE))
    return (field - field.mean()) / (field.std() + 1e-12)


def _rgb(*channels) -> np.ndarray:
    return np.clip(np.stack(np.broadcast_arrays(*channels), axis=-1), 0.0, 1.0)


def _grass(rng, s):
    # dark olive ground with bright vertical blade streaks: object "green" is a far brighter pure green
    blades = _noise(rng, 3.5 * s, 0.55 * s)
    fine = _noise(rng, 0.6 * s, 0.6 * s)
    patches = _noise(rng, 10 * s, 10 * s)
    light = 1 + 0.22 * blades + 0.06 * fine + 0.10 * patches
    return _rgb((0.30 + 0.03 * patches) * light, 0.46 * light, (0.13 - 0.02 * patches) * light)


def _sand(rng, s):
    y = np.arange(TILE)[:, None]
    cycles = max(1, round(TILE / (7 * s)))
    warp = _noise(rng, 18 * s, 24 * s)
    ripples = np.sin(2 * np.pi * cycles * y / TILE + 1.4 * warp)
    fine = _noise(rng, 0.45 * s, 0.45 * s)
    patches = _noise(rng, 14 * s, 14 * s)
    light = 1 + 0.05 * ripples + 0.04 * fine + 0.03 * patches
    return _rgb(0.86 * light, 0.76 * light, 0.55 * light)


def _water(rng, s):
    waves = _noise(rng, 0.9 * s, 6 * s)
    swell = _noise(rng, 16 * s, 16 * s)
    glints = np.clip((_noise(rng, 0.7 * s, 4 * s) - 1.7) * 0.8, 0, 1)
    light = 1 + 0.16 * waves + 0.08 * swell
    base = np.stack([0.15 * light, 0.42 * light, 0.66 * light], axis=-1)
    return np.clip(base * (1 - glints[..., None]) + np.array([0.75, 0.90, 1.0]) * glints[..., None], 0, 1)


def _sky(rng, s):
    # only cloud density (replicated in 3 channels): the blue gradient is applied per image
    density = _noise(rng, 7 * s, 12 * s) + 0.45 * _noise(rng, 2.5 * s, 3.5 * s)
    clouds = np.clip((density - 0.7) / 1.2, 0, 1) * 0.9
    return np.repeat(clouds[..., None], 3, axis=-1)


def _snow(rng, s):
    shade = np.clip(0.3 + 0.22 * _noise(rng, 12 * s, 16 * s), 0, 0.75)
    fine = _noise(rng, 0.5 * s, 0.5 * s)
    white, blue = np.array([0.95, 0.96, 0.99]), np.array([0.78, 0.84, 0.95])
    img = white * (1 - shade[..., None]) + blue * shade[..., None] + 0.015 * fine[..., None]
    speckle = rng.random((TILE, TILE)) < 0.02 / s**2
    img[speckle] = np.array([0.72, 0.76, 0.86])
    return np.clip(img, 0, 1)


def _brick(rng, s):
    rows = 2 * max(1, round(TILE / (9 * s) / 2))  # even, so the staggered pattern is periodic
    cols = max(1, round(TILE / (17 * s)))
    brick_h, brick_w = TILE / rows, TILE / cols
    y, x = np.mgrid[:TILE, :TILE].astype(np.float64)
    row = np.floor(y / brick_h).astype(int)
    shifted = x + (row % 2) * brick_w / 2
    col = np.floor(shifted / brick_w).astype(int) % cols
    tint = rng.normal(0, 0.07, (rows, cols))[row, col]
    fine = _noise(rng, 0.6 * s, 0.6 * s)
    light = 1 + tint + 0.05 * fine
    img = np.stack([0.60 * light, 0.25 * light, 0.17 * light], axis=-1)
    mortar_w = max(1.0, s)
    mortar = (y - row * brick_h < mortar_w) | (shifted - np.floor(shifted / brick_w) * brick_w < mortar_w)
    img[mortar] = np.array([0.74, 0.70, 0.64]) + 0.03 * fine[mortar][:, None]
    return np.clip(img, 0, 1)


def _wood(rng, s):
    planks = max(1, round(TILE / (15 * s)))
    plank_h = TILE / planks
    y = np.arange(TILE, dtype=np.float64)[:, None]
    plank = np.floor(y / plank_h).astype(int)
    warp = _noise(rng, 3 * s, 40 * s)
    grain_cycles = max(1, round(TILE / (2.6 * s)))
    grain = np.sin(2 * np.pi * grain_cycles * y / TILE + 2.5 * warp)
    tint = rng.normal(0, 0.06, planks)[plank]
    fine = _noise(rng, 0.5 * s, 2.5 * s)
    light = 1 + 0.07 * grain + tint + 0.03 * fine
    img = np.stack(np.broadcast_arrays(0.74 * light, 0.53 * light, 0.31 * light), axis=-1).copy()
    seam = np.broadcast_to(y - plank * plank_h < max(1.0, s), light.shape)
    img[seam] = np.array([0.36, 0.23, 0.13])
    return np.clip(img, 0, 1)


_TEXTURES = {"grass": _grass, "sand": _sand, "water": _water, "sky": _sky, "snow": _snow, "brick": _brick,
             "wood": _wood}
assert set(BACKGROUNDS) <= set(_TEXTURES), "every background kind needs a texture"


# ---------------------------------------------------------------------------------------------
# Object geometry on the fine grid: u, v in [-1, 1] span the body's bounding box, v points down
# ---------------------------------------------------------------------------------------------
def _fit(vertices) -> np.ndarray:
    """Centre a polygon's bounding box and scale it to span [-0.97, 0.97] along its longer side."""
    v = np.asarray(vertices, dtype=np.float64)
    v = v - (v.max(0) + v.min(0)) / 2
    return v * (0.97 / np.abs(v).max())


def _regular(n: int, radius_fn, start: float) -> np.ndarray:
    angles = start + np.arange(n) * 2 * np.pi / n
    radii = np.array([radius_fn(i) for i in range(n)])
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


_POLYGONS = {
    "triangle": _fit([(0.0, -1.0), (1.0, 0.8), (-1.0, 0.8)]),
    "star": _fit(_regular(10, lambda i: 1.0 if i % 2 == 0 else 0.47, -np.pi / 2)),
    "hexagon": _fit(_regular(6, lambda i: 1.0, 0.0)),
    "diamond": _fit([(0.0, -1.0), (0.75, 0.0), (0.0, 1.0), (-0.75, 0.0)]),
}

#: Where a hat's brim rests on each shape (v of the brim's lower edge; the body's top is near −1).
HAT_SEAT = {"circle": -0.88, "square": -0.74, "triangle": -0.52, "star": -0.55, "heart": -0.60,
            "hexagon": -0.76, "diamond": -0.55, "cross": -0.82}
_BRIM = (0.72, 0.17)  # half-width, height (body radii)
_CROWN = (0.44, 0.70)
_BAND_HEIGHT = 0.22
#: Rows above the body's box a hat needs, as a fraction of the diameter (top of the highest hat + 1 px).
_HAT_EXTENT = (-min(HAT_SEAT.values()) + _BRIM[1] + _CROWN[1] - 1) / 2


def _inside_polygon(u: np.ndarray, v: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    inside = np.zeros(np.broadcast_shapes(u.shape, v.shape), dtype=bool)
    for (x1, y1), (x2, y2) in zip(vertices, np.roll(vertices, -1, axis=0)):
        if y1 == y2:
            continue
        crosses = (y1 > v) != (y2 > v)
        x_at = x1 + (v - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (u < x_at)
    return inside


def _inside_shape(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    if shape == "circle":
        return u**2 + v**2 <= 0.98**2
    if shape == "square":
        return (np.abs(u) <= 0.84) & (np.abs(v) <= 0.84)
    if shape == "cross":
        arm, reach = 0.34, 0.95
        return ((np.abs(u) <= arm) & (np.abs(v) <= reach)) | ((np.abs(v) <= arm) & (np.abs(u) <= reach))
    if shape == "heart":
        # (x² + y² − 1)³ − x² y³ ≤ 0 spans x ∈ [−1.14, 1.14], y ∈ [−1, 1.24] (y up): map onto the box
        x, y = 1.17 * u, 0.12 - 1.14 * v
        return (x**2 + y**2 - 1) ** 3 - x**2 * y**3 <= 0
    return _inside_polygon(u, v, _POLYGONS[shape])


def _grid(diameter: int, top: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Normalized pixel-centre coordinates of fine-grid rows top..diameter−1 and columns 0..diameter−1."""
    half = diameter / 2
    rows = (np.arange(top, diameter) + 0.5 - half) / half
    cols = (np.arange(diameter) + 0.5 - half) / half
    return cols[None, :], rows[:, None]


@functools.lru_cache(maxsize=256)
def _body(shape: str, diameter: int, outline: int) -> tuple[np.ndarray, np.ndarray]:
    """Body and fill (body minus an inner outline ``outline`` fine pixels wide) on the fine grid."""
    u, v = _grid(diameter)
    body = _inside_shape(shape, u, v)
    fill = ndimage.distance_transform_edt(np.pad(body, 1))[1:-1, 1:-1] > outline
    return body, fill


@functools.lru_cache(maxsize=256)
def _pattern(pattern: str, diameter: int, cycles: float) -> np.ndarray | None:
    """Where the pattern colour goes, on the fine grid; its scale follows the body, not the image:
    ``cycles`` stripe pairs (at 45°), dot spacings or check cells span the body's bounding box."""
    if pattern == "plain":
        return None
    u, v = _grid(diameter)
    if pattern == "striped":
        period = 2 / cycles
        return ((u + v) / np.sqrt(2) / period + 0.25) % 1 < 0.5
    if pattern == "dotted":
        spacing = 2 / cycles
        row = np.floor(v / (spacing * 0.866) + 0.5)
        dy = v - row * spacing * 0.866
        dx = (u + (row % 2) * spacing / 2 + spacing / 2) % spacing - spacing / 2
        return dx**2 + dy**2 <= (0.3 * spacing) ** 2
    if pattern == "checkered":
        cell = 2 / cycles
        return (np.floor(u / cell + 0.5) + np.floor(v / cell + 0.5)) % 2 == 0
    raise ValueError(f"unknown pattern '{pattern}'")


@functools.lru_cache(maxsize=256)
def _hat(shape: str, diameter: int, extent: int) -> tuple[np.ndarray, np.ndarray]:
    """Top hat (crown + brim) and its band on the fine grid rows −extent..diameter−1."""
    u, v = _grid(diameter, top=-extent)
    seat = HAT_SEAT[shape]
    brim_top = seat - _BRIM[1]
    crown_top = brim_top - _CROWN[1]
    brim = (np.abs(u) <= _BRIM[0]) & (v >= brim_top) & (v <= seat)
    crown_band = (np.abs(u) <= _CROWN[0]) & (v >= crown_top) & (v < brim_top)
    band = crown_band & (v >= brim_top - _BAND_HEIGHT)
    return (brim | crown_band) & ~band, band


@functools.lru_cache(maxsize=8192)
def _object_coverage(shape: str, pattern: str, cycles: float, hat: bool, diameter: int, outline: int,
                     phase_y: int, phase_x: int) -> np.ndarray:
    """Output-pixel coverage of each paint layer, (5, h, w) uint8 counts of covered fine pixels
    (out of SUPERSAMPLE², stored as counts to keep the cache small), for one sub-pixel phase.

    The fine-grid window starts ``phase_y``/``phase_x`` fine pixels before the first output-pixel
    boundary; rows above the body's box (for the hat) are included when ``hat`` is set.
    """
    extent = _hat_rows(diameter) if hat else 0
    body, fill = _body(shape, diameter, outline)
    body = np.pad(body, ((extent, 0), (0, 0)))
    fill = np.pad(fill, ((extent, 0), (0, 0)))
    layers = np.zeros((5,) + body.shape, dtype=bool)
    if hat:
        layers[_HAT], layers[_BAND] = _hat(shape, diameter, extent)
        covered = layers[_HAT] | layers[_BAND]
        body, fill = body & ~covered, fill & ~covered
    pattern_mask = _pattern(pattern, diameter, cycles)
    if pattern_mask is not None:
        pattern_mask = np.pad(pattern_mask, ((extent, 0), (0, 0)))
        layers[_PATTERN] = fill & pattern_mask
        layers[_BASE] = fill & ~pattern_mask
    else:
        layers[_BASE] = fill
    layers[_OUTLINE] = body & ~fill
    s = SUPERSAMPLE
    h, w = body.shape
    out_h, out_w = -(-(h + phase_y) // s), -(-(w + phase_x) // s)
    fine = np.zeros((5, out_h * s, out_w * s), dtype=bool)
    fine[:, phase_y:phase_y + h, phase_x:phase_x + w] = layers
    return fine.reshape(5, out_h, s, out_w, s).sum(axis=(2, 4), dtype=np.uint8)


def _hat_rows(diameter: int) -> int:
    return int(np.ceil(_HAT_EXTENT * diameter)) + SUPERSAMPLE


#: Per object colour, the RGB of each paint layer (5, 3) in layer order.
_PAINTS = {c: np.array([COLOUR_RGB[c], pattern_rgb(c), OUTLINE_RGB, HAT_RGB, HAT_BAND_RGB], dtype=np.float32)
           for c in COLOUR_RGB}


# ---------------------------------------------------------------------------------------------
# Composition
# ---------------------------------------------------------------------------------------------
def render_scene(spec: SceneSpec, size: int = 64) -> RenderedScene:
    """Render ``spec`` at ``size``×``size``: the image, per-object masks and visible coverage."""
    background = render_background(spec.background, spec.texture_seed, size)
    return _compose(background, [(obj, 0) for obj in spec.objects], size, spec.profile)


def render_pair(spec_left: SceneSpec, spec_right: SceneSpec, size: int = 64) -> RenderedScene:
    """Render two scenes side by side as one (size, 2·size) image over one continuous background.

    The background kind and texture seed come from ``spec_left`` (``sample_pair`` makes both sides
    share them). Each side's objects are placed in their own half; masks list the left objects first.
    """
    background = render_background(spec_left.background, spec_left.texture_seed, size, 2 * size)
    placed = [(obj, 0) for obj in spec_left.objects] + [(obj, size) for obj in spec_right.objects]
    return _compose(background, placed, size, spec_left.profile)


def _compose(image: np.ndarray, placed: list, side: int, profile: str) -> RenderedScene:
    """Composite objects (drawing order) over ``image`` (modified in place); ``side`` scales them and
    ``profile`` sets their sizes and pattern scale."""
    profile = world_profile(profile)
    height, width = image.shape[:2]
    n = len(placed)
    s = SUPERSAMPLE
    outline = max(1, round(s * side / BASE_SIZE))
    body_vis = np.zeros((n, height, width), dtype=np.float32)
    hat_vis = np.zeros((n, height, width), dtype=np.float32)
    background_vis = np.ones((height, width), dtype=np.float32)
    for i, (obj, x_offset) in enumerate(placed):
        diameter = 2 * round(profile.diameter(obj.size) * side * s / 2)
        hat = obj.accessory == "hat"
        top = round(obj.y * side * s) - diameter // 2 - (_hat_rows(diameter) if hat else 0)
        left = round((obj.x * side + x_offset) * s) - diameter // 2
        cycles = profile.cycles(obj.pattern) if obj.pattern != "plain" else 0.0
        coverage = _object_coverage(obj.shape, obj.pattern, cycles, hat, diameter, outline, top % s, left % s)
        y0, x0 = top // s, left // s
        y1, x1 = y0 + coverage.shape[1], x0 + coverage.shape[2]
        cy0, cx0, cy1, cx1 = max(y0, 0), max(x0, 0), min(y1, height), min(x1, width)
        if cy0 >= cy1 or cx0 >= cx1:
            continue
        coverage = coverage[:, cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] * np.float32(1 / s**2)  # exact: s² = 2^k
        body_alpha = coverage[_BASE] + coverage[_PATTERN] + coverage[_OUTLINE]
        hat_alpha = coverage[_HAT] + coverage[_BAND]
        keep = 1 - (body_alpha + hat_alpha)
        premultiplied = np.tensordot(coverage, _PAINTS[obj.colour], axes=(0, 0))  # (h, w, 3)
        window = (slice(cy0, cy1), slice(cx0, cx1))
        image[window] = image[window] * keep[..., None] + premultiplied
        body_vis[(slice(0, i),) + window] *= keep
        hat_vis[(slice(0, i),) + window] *= keep
        background_vis[window] *= keep
        body_vis[(i,) + window] = body_alpha
        hat_vis[(i,) + window] = hat_alpha
    alpha = body_vis + hat_vis
    owner = np.argmax(np.concatenate([background_vis[None], alpha]), axis=0)  # 0 = background
    masks = owner[None] == np.arange(1, n + 1)[:, None, None]
    on_hat = hat_vis > body_vis
    return RenderedScene(image=np.clip(image, 0.0, 1.0, out=image), masks=masks, body_masks=masks & ~on_hat,
                         hat_masks=masks & on_hat, alpha=alpha)
