"""Scene specifications and their seeded sampling.

A scene is a background texture plus one to three objects, drawn in tuple order (later objects occlude
earlier ones). ``objects[0]`` is the main object: fixed attributes, judge labels and pair edits refer
to it. Specs are frozen dataclasses, so they hash, compare and travel between processes; everything
random comes from the ``np.random.Generator`` the caller passes in.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from retouch.world.vocabulary import (
    ACCESSORIES,
    BACKGROUNDS,
    DEFAULT_PROFILE,
    PROFILES,
    VOCABULARIES,
    WorldProfile,
    position_word,
    world_profile,
)

MAX_OBJECTS = 3
#: Space kept free above every body for a hat (as a fraction of the body's bounding diameter), so an
#: "add a hat" edit never pushes the hat out of the image.
HAT_ROOM = 0.42
#: Free margin between an object (with its hat room) and the image border, as a fraction of the side.
MARGIN = 0.02
#: Two objects may overlap by this fraction of the sum of their bounding radii at most.
MAX_OVERLAP = 0.15
PLACEMENT_TRIES = 30
_OBJECT_FIELDS = ("shape", "colour", "pattern", "accessory", "size", "x", "y")
_SCENE_FIELDS = ("background", "texture_seed")


@dataclass(frozen=True)
class ObjectSpec:
    """One object: its attributes and the centre (x, y) of its body in [0, 1] of the image side."""

    shape: str
    colour: str
    pattern: str = "plain"
    accessory: str = "none"
    size: str = "medium"
    x: float = 0.5
    y: float = 0.5

    def __post_init__(self):
        for name in ("shape", "colour", "pattern", "accessory", "size"):
            value = getattr(self, name)
            if value not in VOCABULARIES[name]:
                raise ValueError(f"unknown {name} '{value}'; choose one of {', '.join(VOCABULARIES[name])}")
        if not (0.0 <= self.x <= 1.0 and 0.0 <= self.y <= 1.0):
            raise ValueError(f"object centre ({self.x}, {self.y}) must lie in [0, 1]")

    @property
    def position(self) -> str:
        """The caption word for the horizontal position: left, center or right."""
        return position_word(self.x)


@dataclass(frozen=True)
class SceneSpec:
    """A background kind, the objects in drawing order, the seed of the background crop, and the
    world profile whose object sizes and pattern scale the renderer uses."""

    background: str
    objects: tuple[ObjectSpec, ...]
    texture_seed: int = 0
    profile: str = DEFAULT_PROFILE

    def __post_init__(self):
        if self.profile not in PROFILES:
            raise ValueError(f"unknown world profile '{self.profile}'; choose one of {', '.join(PROFILES)}")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"unknown background '{self.background}'; choose one of {', '.join(BACKGROUNDS)}")
        if not isinstance(self.objects, tuple):
            object.__setattr__(self, "objects", tuple(self.objects))


def bounding_radius(size: str, profile: str | WorldProfile | None = None) -> float:
    """Half the body's bounding diameter, as a fraction of the image side."""
    return world_profile(profile).diameter(size) / 2


def position_range(size: str, profile: str | WorldProfile | None = None
                   ) -> tuple[tuple[float, float], tuple[float, float]]:
    """The (x, y) ranges a body centre of this size may take: inside the image with room for a hat."""
    r = bounding_radius(size, profile)
    hat = HAT_ROOM * 2 * r
    return (r + MARGIN, 1 - r - MARGIN), (r + hat + MARGIN, 1 - r - MARGIN)


def sample_scene(rng: np.random.Generator, *, n_objects: int | None = None,
                 profile: str | WorldProfile | None = None, **fixed_attributes) -> SceneSpec:
    """Sample a scene of ``profile``; ``fixed_attributes`` pin the background or main object's attributes.

    ``sample_scene(rng, background="snow", shape="star", pattern="dotted")``. Other objects get
    random attributes, a (shape, colour) pair different from every other object so captions stay
    unambiguous, and positions found by rejection sampling on bounding circles (the hat room counts
    as part of the circle): each object tries ``PLACEMENT_TRIES`` positions and keeps the first whose
    overlap with placed objects is at most ``MAX_OVERLAP``. An object that does not fit is tried one
    size smaller (unless its size is fixed); if it still does not fit it is left out when the object
    count was random, or kept at its least overlapping position when ``n_objects`` was given.
    """
    unknown = set(fixed_attributes) - set(_OBJECT_FIELDS) - set(_SCENE_FIELDS)
    if unknown:
        fixable = ", ".join(_OBJECT_FIELDS + _SCENE_FIELDS)
        raise ValueError(f"cannot fix {', '.join(sorted(unknown))}; fixable: {fixable}")
    profile = world_profile(profile)
    fixed_count = n_objects is not None
    if n_objects is None:
        n_objects = int(np.searchsorted(np.cumsum(profile.object_count_weights), rng.random(), side="right")) + 1
    if not 1 <= n_objects <= MAX_OBJECTS:
        raise ValueError(f"n_objects must be 1..{MAX_OBJECTS}, got {n_objects}")
    backgrounds = profile.backgrounds
    background = fixed_attributes.get("background") or backgrounds[rng.integers(len(backgrounds))]
    texture_seed = int(fixed_attributes.get("texture_seed", rng.integers(2**31)))
    main_fixed = {k: v for k, v in fixed_attributes.items() if k in _OBJECT_FIELDS}

    objects: list[ObjectSpec] = []
    circles: list[tuple[float, float, float]] = []
    used = set()
    for i in range(n_objects):
        fixed = main_fixed if i == 0 else {}
        attrs = _sample_attributes(rng, fixed, used, profile)
        placed = _place(rng, attrs["size"], circles, fixed, profile)
        smaller = [size for size in profile.sizes if profile.diameter(size) < profile.diameter(attrs["size"])]
        while placed[2] > MAX_OVERLAP and "size" not in fixed and smaller:
            attrs["size"] = smaller.pop()  # a smaller object may still fit
            placed = _place(rng, attrs["size"], circles, fixed, profile)
        if placed[2] > MAX_OVERLAP and i > 0 and not fixed_count:
            break  # no room: a random object count just comes out lower
        used.add((attrs["shape"], attrs["colour"]))
        objects.append(ObjectSpec(**attrs, x=placed[0], y=placed[1]))
        circles.append(_footprint(attrs["size"], placed[0], placed[1], profile))
    return SceneSpec(background=background, objects=tuple(objects), texture_seed=texture_seed, profile=profile.name)


def _sample_attributes(rng: np.random.Generator, fixed: dict, used: set, profile: WorldProfile) -> dict:
    for _ in range(20):
        attrs = {
            "shape": fixed.get("shape") or profile.shapes[rng.integers(len(profile.shapes))],
            "colour": fixed.get("colour") or profile.colours[rng.integers(len(profile.colours))],
            "pattern": fixed.get("pattern") or profile.patterns[rng.integers(len(profile.patterns))],
            "accessory": fixed.get("accessory") or ACCESSORIES[int(rng.random() < profile.hat_probability)],
            "size": fixed.get("size") or profile.sizes[rng.integers(len(profile.sizes))],
        }
        if (attrs["shape"], attrs["colour"]) not in used:
            break
    return attrs


def _footprint(size: str, x: float, y: float, profile: WorldProfile) -> tuple[float, float, float]:
    """A circle covering the body and its hat room: (centre x, centre y, radius)."""
    r = bounding_radius(size, profile)
    hat = HAT_ROOM * 2 * r
    return x, y - hat / 2, r + hat / 2


def _place(rng: np.random.Generator, size: str, circles: list, fixed: dict,
           profile: WorldProfile) -> tuple[float, float, float]:
    """(x, y, overlap): the first of ``PLACEMENT_TRIES`` candidate positions overlapping placed
    footprints by at most MAX_OVERLAP, else the least overlapping candidate."""
    (x0, x1), (y0, y1) = position_range(size, profile)
    xs = np.full(PLACEMENT_TRIES, float(fixed["x"])) if "x" in fixed else rng.uniform(x0, x1, PLACEMENT_TRIES)
    ys = np.full(PLACEMENT_TRIES, float(fixed["y"])) if "y" in fixed else rng.uniform(y0, y1, PLACEMENT_TRIES)
    if not circles:
        return float(xs[0]), float(ys[0]), -1.0
    r = bounding_radius(size, profile) * (1 + HAT_ROOM)
    cx, cy = xs, ys - bounding_radius(size, profile) * HAT_ROOM
    others = np.array(circles)  # (M, 3): x, y, radius
    reach = r + others[:, 2]
    distance = np.hypot(cx[:, None] - others[:, 0], cy[:, None] - others[:, 1])
    overlap = ((reach - distance) / reach).max(axis=1)  # (tries,)
    ok = np.flatnonzero(overlap <= MAX_OVERLAP)
    k = int(ok[0]) if ok.size else int(np.argmin(overlap))
    return float(xs[k]), float(ys[k]), float(overlap[k])


def with_changes(spec, index: int = 0, **attrs):
    """A copy with some attributes changed: ``with_changes(obj, pattern="striped")``.

    On a :class:`SceneSpec`, object attributes change object ``index`` (the main object by default)
    and ``background``/``texture_seed`` change the scene.
    """
    if isinstance(spec, ObjectSpec):
        unknown = set(attrs) - set(_OBJECT_FIELDS)
        if unknown:
            raise ValueError(f"objects have no attribute {', '.join(sorted(unknown))}")
        return dataclasses.replace(spec, **attrs)
    scene_attrs = {k: v for k, v in attrs.items() if k in _SCENE_FIELDS}
    object_attrs = {k: v for k, v in attrs.items() if k not in _SCENE_FIELDS}
    objects = spec.objects
    if object_attrs:
        objects = objects[:index] + (with_changes(objects[index], **object_attrs),) + objects[index + 1:]
    return dataclasses.replace(spec, objects=objects, **scene_attrs)


def attributes(spec: SceneSpec) -> dict[str, int]:
    """Judge labels of the main object as vocabulary indices (shape, colour, ..., background, position)."""
    obj = spec.objects[0]
    values = {"shape": obj.shape, "colour": obj.colour, "pattern": obj.pattern, "accessory": obj.accessory,
              "size": obj.size, "background": spec.background, "position": obj.position}
    return {name: VOCABULARIES[name].index(value) for name, value in values.items()}


def sample_pair(rng: np.random.Generator, change: dict | None = None, *,
                profile: str | WorldProfile | None = None, **fixed_attributes) -> tuple[SceneSpec, SceneSpec]:
    """A (left, right) pair for side-by-side rendering: the same single object on both halves.

    Shape, colour, size and position within the half are shared; ``change`` (e.g. ``{"pattern":
    "striped"}``, ``{"accessory": "hat"}``, ``{"shape": "square"}``) is applied to the right side only,
    and the left side is resampled where it already had the target value, so the change is visible.
    Both sides share background and texture seed: ``render_pair`` continues one crop across both.
    """
    change = dict(change or {})
    bad = set(change) - {"shape", "colour", "pattern", "accessory", "size"}
    if bad:
        raise ValueError(f"a pair can change object attributes only, not {', '.join(sorted(bad))}")
    profile = world_profile(profile)
    left = sample_scene(rng, n_objects=1, profile=profile, **fixed_attributes)
    for name, target in change.items():
        if getattr(left.objects[0], name) == target:  # the left side must differ where the right changes
            words = profile.vocabularies[name] if target in profile.vocabularies[name] else VOCABULARIES[name]
            others = [word for word in words if word != target]
            left = with_changes(left, **{name: others[rng.integers(len(others))]})
    if "size" in change:
        # one position that keeps both sizes (and their hat room) inside the half
        larger = max(left.objects[0].size, change["size"], key=profile.diameter)
        (x0, x1), (y0, y1) = position_range(larger, profile)
        left = with_changes(left, x=float(rng.uniform(x0, x1)), y=float(rng.uniform(y0, y1)))
    right = with_changes(left, **change) if change else left
    return left, right
