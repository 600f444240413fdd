"""pix2pix-zero's ablation (§4.4, Table 2) as runs of registered methods.

=====  =========================  =============================  ================  ===================================
config inversion                  edit                           method            option overrides
=====  =========================  =============================  ================  ===================================
A      DDPM (stochastic noising)  word swap                      ``ddpm``          mode=noising, strength=1
B      DDIM                       word swap                      ``ddim``          inversion=ddim
C      DDIM w/ L_auto             word swap                      ``ddim``          inversion=regularized
D      DDIM w/ L_auto             sentence directions            ``pix2pix-zero``  inversion=regularized, xa_guidance=0
E      DDIM w/ L_auto             sentence directions w/ L_xa    ``pix2pix-zero``  inversion=regularized (the full method)
=====  =========================  =============================  ================  ===================================

Config A is the forward noising of §3.1 ("the fixed forward noising process, followed by de-noising
with the reverse process"), not edit-friendly DDPM inversion, which came later; ``ddpm`` offers
that too (``mode=edit-friendly``) as a stronger stochastic inversion outside the table. The paper
runs every configuration with the same steps (100, App. D) and classifier-free guidance; pass those
as shared options to :func:`ablation_run`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

from retouch.errors import RetouchError
from retouch.methods import Method, get_method


@dataclass(frozen=True)
class AblationConfig:
    """One row of Table 2: how it inverts and edits, and the method + options that run it."""

    inversion: str
    edit: str
    method: str
    overrides: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))


PIX2PIX_ZERO_ABLATION: dict[str, AblationConfig] = {
    "A": AblationConfig("DDPM", "word swap", "ddpm", MappingProxyType({"mode": "noising", "strength": 1.0})),
    "B": AblationConfig("DDIM", "word swap", "ddim", MappingProxyType({"inversion": "ddim"})),
    "C": AblationConfig("DDIM w/ L_auto", "word swap", "ddim", MappingProxyType({"inversion": "regularized"})),
    "D": AblationConfig("DDIM w/ L_auto", "sentence directions", "pix2pix-zero",
                        MappingProxyType({"inversion": "regularized", "xa_guidance": 0.0})),
    "E": AblationConfig("DDIM w/ L_auto", "sentence directions w/ L_xa", "pix2pix-zero",
                        MappingProxyType({"inversion": "regularized"})),
}


def ablation_run(key: str, **shared) -> tuple[Method, object]:
    """The method and validated config of Table 2 row ``key``.

    ``shared`` holds the options every row gets (``edit``, ``source_text``, ``num_steps``,
    ``guidance_scale``, ``seed``, …); each row takes those its method has, then its own overrides.
    """
    if key not in PIX2PIX_ZERO_ABLATION:
        raise RetouchError(f"unknown Table 2 config {key!r}; choose one of {', '.join(PIX2PIX_ZERO_ABLATION)}")
    row = PIX2PIX_ZERO_ABLATION[key]
    method = get_method(row.method)
    names = set(method.option_names())
    config = method.config_class(**{**{k: v for k, v in shared.items() if k in names}, **row.overrides})
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate()
    return method, config
