"""Routes: a name clients request (``chat``, ``embed``) that resolves, per request, to the cheapest served
variant whose *measured* quality meets the route's floors and whose queue meets its SLO.

``--route embed=auto:max_sts_drop=0.5`` or ``--route chat=auto:min_top1_agreement=0.95,max_queue_ms=200``.
Quality comes from each artifact's manifest (what ``optimize`` measured against its source); the source
model itself, served as is, meets every floor. A variant whose manifest lacks the figure a floor needs does
not qualify: an unmeasured variant is never assumed good enough.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ConfigDict, Field, ValidationError

from ..errors import LeaninferError
from ..pipeline import split_step_text
from ..quality import Floors

PERFECT = {"mean_cosine_to_reference": 1.0, "sts_drop_pts": 0.0, "perplexity_increase_pct": 0.0,
           "top1_agreement": 1.0}  # the source model against itself


class RouteConfig(Floors):
    """A route's floors (those of ``optimize`` recipes) and its queue SLO."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_queue_ms: float = Field(500.0, gt=0, description="a variant whose queue would make a request wait "
                                                         "longer than this (estimated) is skipped")


@dataclass(frozen=True)
class Route:
    name: str
    config: RouteConfig

    def qualifies(self, quality: dict | None) -> bool:
        return not self.config.misses(quality or {})


def parse_route(text: str) -> Route:
    """``"embed=auto:max_sts_drop=0.5"`` -> :class:`Route` (the only policy is ``auto``).

    Example:
        >>> parse_route("chat=auto:min_top1_agreement=0.95").config.min_top1_agreement
        0.95
    """
    name, eq, spec = text.partition("=")
    if not eq or not name.strip():
        raise LeaninferError(f"--route {text!r}: expected NAME=auto:FLOOR=VALUE[,...], e.g. "
                             "embed=auto:max_sts_drop=0.5")
    try:
        parts = split_step_text(spec)
    except LeaninferError as e:
        raise LeaninferError(f"--route {text!r}: {e}") from None
    if len(parts) != 1 or parts[0].pop("step") != "auto":
        raise LeaninferError(f"--route {text!r}: the policy must be 'auto' followed by its floors")
    try:
        config = RouteConfig(**parts[0])
    except ValidationError as e:
        fields = ", ".join(f for f in RouteConfig.model_fields)
        err = e.errors()[0]
        raise LeaninferError(f"--route {text!r}: {'.'.join(map(str, err['loc']))}: {err['msg']} "
                             f"(valid: {fields})") from None
    if not any(getattr(config, f) is not None for f in Floors.model_fields):
        raise LeaninferError(f"--route {text!r} sets no quality floor: name one of {', '.join(Floors.model_fields)}")
    return Route(name.strip(), config)
