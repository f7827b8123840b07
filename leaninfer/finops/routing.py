"""Routes: a name clients request (``chat``, ``embed``) that resolves, per request, to the cheapest served
variant whose *measured* quality meets the route's floors and whose queue meets its SLO.

``--route embed=auto:max_sts_drop=0.5`` or ``--route chat=auto:min_top1_agreement=0.95,max_queue_ms=200``.
Quality comes from each artifact's manifest (what ``optimize`` measured against its source); the source
model itself, served as is, meets every floor. A variant whose manifest lacks the figure a floor needs does
not qualify: an unmeasured variant is never assumed good enough.

Upstream engines (``--upstream``) join the routes of their task on the quality their tariff file declares
(measured by ``leaninfer eval --endpoint``, or stated by hand); one that declares none is never routed to.
Local variants and upstreams are ranked together by dollars per token (:meth:`.tariff.Tariff.rank_key`).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ConfigDict, Field, ValidationError

from ..errors import LeaninferError
from ..quality import Floors
from ..spec_text import split_step_text
from .variant import Variant

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


class Router:
    """Which variants may answer a requested name, best first: a served name is itself; a route is its
    qualifying variants (floors checked once, at start: manifests and tariff files don't change), cheapest
    first by dollars per token, those whose queue meets the route's SLO ahead of those whose queue doesn't
    (an upstream's queue is not seen: it always fits).

    Example:
        >>> router = Router(variants, ["embed=auto:max_sts_drop=0.5"])      # doctest: +SKIP
        >>> router.candidates("embed")                                      # doctest: +SKIP
        (['minilm-int8', 'minilm'], 'embed')
    """

    def __init__(self, variants: dict[str, Variant], routes: list[str]):
        self.variants = variants
        self.routes: dict[str, tuple[Route, list[str]]] = {}
        for text in routes:
            route = parse_route(text)
            if route.name in variants:
                raise LeaninferError(f"--route {text!r}: {route.name!r} is already a served model's name")
            self.routes[route.name] = (route, self._qualifying(route))

    def _qualifying(self, route: Route) -> list[str]:
        task = "embedding" if route.config.min_cosine is not None or route.config.max_sts_drop is not None \
            else "causal-lm"
        of_task = [v for v in self.variants.values() if v.task == task]
        local = [v for v in of_task if not v.upstream]
        sources = {v.source for v in local}
        if len(sources) > 1:
            raise LeaninferError(f"--route {route.name}: served {task} models come from several sources "
                                 f"({', '.join(sorted(sources))}); a route picks among variants of one model")
        good = [v.name for v in local if route.qualifies(PERFECT if v.quality is None else v.quality)]
        # an upstream qualifies on what its tariff declares; declaring nothing never meets a floor
        good += [v.name for v in of_task if v.upstream and v.quality is not None and route.qualifies(v.quality)]
        if not good:
            seen = ", ".join(f"{v.name}={v.quality if v.quality is not None or v.upstream else 'source'}"
                             + (" (upstream, declared)" if v.upstream else "") for v in of_task)
            raise LeaninferError(f"--route {route.name}: no served {task} variant meets its floors (quality: "
                                 f"{seen or 'none'})")
        return good

    def candidates(self, name: str) -> tuple[list[Variant], str]:
        """The variants to try for ``name``, best first ([] for an unknown name), and the route's name ("" for
        a served name)."""
        if name not in self.routes:
            v = self.variants.get(name)
            return ([v] if v is not None else []), ""
        route, names = self.routes[name]
        ranked = sorted((self.variants[n] for n in names), key=lambda v: v.tariff.rank_key())
        slo_s = route.config.max_queue_ms / 1000
        fits = [v for v in ranked if v.tariff.request_busy_s * v.pending() <= slo_s]
        # over the SLO everywhere: still try them, cheapest first (the queue's own bound answers 503)
        return fits + [v for v in ranked if v not in fits], name
