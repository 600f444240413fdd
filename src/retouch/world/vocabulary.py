"""The mini world's attribute vocabularies: every word a caption can use for a scene.

Each word is a single lowercase word so a BPE tokenizer trained on the captions makes it one token,
and edit directions ("circle" → "square") are differences of single-token embeddings.

Colour choices (why these RGB values): every object colour is saturated or extreme, and every
background's dominant colour is a muted, textured mid-tone, so an object never melts into its
backdrop. Object ``green`` is a pure, bright green while ``grass`` is a darker olive; ``yellow`` is
saturated while ``sand`` is a pale beige; ``blue`` is a deep royal blue while ``water`` is a muted
teal-blue and ``sky`` a light blue gradient; ``orange`` and ``red`` are pure while ``brick`` is a
dull red-brown and ``wood`` a light tan. ``white`` on ``snow`` stays visible because every object has
a thin dark outline (``OUTLINE_RGB``), so its shape is always readable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

BACKGROUNDS = ("grass", "sand", "water", "sky", "snow", "brick", "wood")
SHAPES = ("circle", "square", "triangle", "star", "heart", "hexagon", "diamond", "cross")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black", "pink", "cyan")
PATTERNS = ("plain", "striped", "dotted", "checkered")
ACCESSORIES = ("none", "hat")
SIZES = ("small", "medium", "large")
POSITIONS = ("left", "center", "right")

#: Object body colours, RGB in [0, 1].
COLOUR_RGB = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.85, 0.15),
    "blue": (0.10, 0.25, 0.95),
    "yellow": (1.00, 0.88, 0.10),
    "purple": (0.58, 0.18, 0.82),
    "orange": (1.00, 0.55, 0.05),
    "white": (1.00, 1.00, 1.00),
    "black": (0.06, 0.06, 0.06),
    "pink": (1.00, 0.50, 0.76),
    "cyan": (0.10, 0.90, 0.92),
}

#: Colours that get a lighter tint as their pattern colour; the others get a darker shade. Keeping the
#: pattern inside the object's own colour family keeps the colour attribute unambiguous.
DARK_COLOURS = frozenset({"blue", "purple", "black", "red"})

#: The thin outline every object body has (1 px at 64²): keeps white-on-snow and green-on-grass readable.
OUTLINE_RGB = (0.08, 0.07, 0.07)
#: The top hat: a near-black crown and brim with a dark brown band.
HAT_RGB = (0.09, 0.07, 0.06)
HAT_BAND_RGB = (0.42, 0.26, 0.13)

#: Bounding diameter of the object body as a fraction of the image side.
SIZE_FRACTION = {"small": 0.22, "medium": 0.32, "large": 0.44}

#: Upper limits of the horizontal position bins (x centre in [0, 1]): x < 1/3 is "left", x ≥ 2/3 "right".
POSITION_BINS = (1 / 3, 2 / 3)

#: Attribute name → its vocabulary, in the order ``attributes()`` reports them.
VOCABULARIES = {
    "shape": SHAPES,
    "colour": COLOURS,
    "pattern": PATTERNS,
    "accessory": ACCESSORIES,
    "size": SIZES,
    "background": BACKGROUNDS,
    "position": POSITIONS,
}


def pattern_rgb(colour: str) -> tuple[float, float, float]:
    """The contrasting shade that stripes, dots and checks of a ``colour`` object are drawn in."""
    r, g, b = COLOUR_RGB[colour]
    if colour == "black":
        return (0.62, 0.62, 0.62)
    if colour in DARK_COLOURS:
        return (0.45 + 0.55 * r, 0.45 + 0.55 * g, 0.45 + 0.55 * b)
    return (0.42 * r, 0.42 * g, 0.42 * b)


def position_word(x: float) -> str:
    """The caption word for a horizontal centre ``x`` in [0, 1]."""
    if x < POSITION_BINS[0]:
        return "left"
    if x >= POSITION_BINS[1]:
        return "right"
    return "center"


def attribute_of(word: str) -> str:
    """Which attribute a vocabulary word belongs to ("circle" → "shape"); ValueError if none."""
    for name, words in VOCABULARIES.items():
        if word in words:
            return name
    raise ValueError(f"'{word}' is not a mini-world word")


@dataclass(frozen=True)
class WorldProfile:
    """Which part of the vocabulary a world samples from, and how big and coarse its objects are.

    Every profile draws from the same vocabularies (so one tokenizer, one set of label indices and one
    caption grammar serve all of them); a profile restricts them and sets the object sizes, the number
    of objects per scene and the pattern scale. ``v1`` is the first world: every word, objects 14–28 px
    wide at 64², up to three objects. ``v2`` is sized to what two CPU cores can learn (issue 19,
    ``docs/world_v2.md``): one large object (half the side or more), four silhouette-distinct shapes,
    six far-apart colours, coarse patterns and low-frequency backgrounds.
    """

    name: str
    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = COLOURS
    patterns: tuple[str, ...] = PATTERNS
    backgrounds: tuple[str, ...] = BACKGROUNDS
    sizes: tuple[str, ...] = SIZES
    #: Bounding diameter of the object body per size word, as a fraction of the image side.
    size_fraction: tuple[tuple[str, float], ...] = tuple(SIZE_FRACTION.items())
    #: Probability of 1, 2 and 3 objects when a scene's object count is not fixed.
    object_count_weights: tuple[float, float, float] = (0.6, 0.28, 0.12)
    hat_probability: float = 0.35
    #: Pattern repeats across the body's bounding box: stripe pairs, dot spacing, check cells.
    pattern_cycles: tuple[tuple[str, float], ...] = (("striped", 3.4), ("dotted", 3.1), ("checkered", 4.3))
    #: Whether random captions may name the size and the position (a world whose sizes are close and
    #: whose objects are all near the centre does not caption them).
    caption_size: bool = True
    caption_position: bool = True
    vocabularies: dict = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self):
        sampled = {"shape": self.shapes, "colour": self.colours, "pattern": self.patterns,
                   "background": self.backgrounds, "size": self.sizes}
        for name, words in sampled.items():
            unknown = set(words) - set(VOCABULARIES[name])
            if unknown or not words:
                raise ValueError(f"profile {self.name}: {name} words must be some of {VOCABULARIES[name]}")
        missing = set(self.sizes) - dict(self.size_fraction).keys()
        if missing:
            raise ValueError(f"profile {self.name}: no size fraction for {', '.join(sorted(missing))}")
        vocabularies = dict(VOCABULARIES, **sampled)
        object.__setattr__(self, "vocabularies", vocabularies)

    def diameter(self, size: str) -> float:
        """Bounding diameter of a body of this size word, as a fraction of the image side."""
        return dict(self.size_fraction)[size]

    def cycles(self, pattern: str) -> float:
        return dict(self.pattern_cycles)[pattern]


PROFILES = {
    "v1": WorldProfile("v1"),
    "v2": WorldProfile(
        "v2",
        shapes=("circle", "square", "triangle", "star"),
        colours=("red", "green", "blue", "yellow", "purple", "white"),
        patterns=("plain", "striped", "checkered"),
        backgrounds=("sand", "sky", "snow", "wood"),
        sizes=("medium", "large"),
        size_fraction=(("small", 0.42), ("medium", 0.58), ("large", 0.66)),
        object_count_weights=(1.0, 0.0, 0.0),
        hat_probability=0.35,
        pattern_cycles=(("striped", 2.4), ("dotted", 2.6), ("checkered", 3.0)),
        caption_size=False,
        caption_position=False,
    ),
}
#: The profile ``World`` uses when none is named: the shipped mini models' world.
DEFAULT_PROFILE = "v2"


def world_profile(profile: "str | WorldProfile | None" = None) -> WorldProfile:
    """A profile by name (``None`` → :data:`DEFAULT_PROFILE`); a :class:`WorldProfile` passes through."""
    if isinstance(profile, WorldProfile):
        return profile
    name = DEFAULT_PROFILE if profile is None else profile
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown world profile '{name}'; choose one of {', '.join(PROFILES)}") from None
