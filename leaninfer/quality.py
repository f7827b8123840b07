"""Quality floors: the one check that optimize (before writing) and benchmarks (in reports) share."""

from __future__ import annotations

from dataclasses import dataclass, fields

from pydantic import BaseModel, ConfigDict, Field

from .errors import QualityFloorError


def _number(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


@dataclass(frozen=True)
class Quality:
    """The figures of an ``evaluate()`` result that floors and reports read; None where not measured.

    evaluate() writes a note instead of a number where a figure means nothing (random weights); such a
    note reads as not measured here, so no caller compares a string with a floor.
    """

    mean_cosine_to_reference: float | None = None
    sts_drop_pts: float | None = None
    perplexity_increase_pct: float | None = None
    top1_agreement: float | None = None

    @classmethod
    def from_dict(cls, quality: dict | None) -> Quality:
        quality = quality or {}
        return cls(**{f.name: _number(quality.get(f.name)) for f in fields(cls)})

    def summary(self) -> str:
        """One line for a report's quality column, e.g. ``cosine 0.9991, STS -0.12 pts``."""
        parts = []
        if self.mean_cosine_to_reference is not None:
            parts.append(f"cosine {self.mean_cosine_to_reference:.4f}")
        if self.sts_drop_pts is not None:
            parts.append(f"STS {-self.sts_drop_pts:+.2f} pts")
        if self.perplexity_increase_pct is not None:
            parts.append(f"ppl {self.perplexity_increase_pct:+.2f}%")
        if self.top1_agreement is not None and not parts:
            parts.append(f"top-1 agree {self.top1_agreement:.3f}")
        return ", ".join(parts) or "evaluated"


class Floors(BaseModel):
    """Quality floors a recipe may declare; a missed floor fails the pipeline and writes nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_cosine: float | None = Field(None, gt=0, le=1, description="embeddings: least mean cosine to the source")
    max_sts_drop: float | None = Field(None, ge=0, description="embeddings: most STS Spearman points lost")
    max_ppl_increase_pct: float | None = Field(None, ge=0, description="causal LMs: most perplexity increase, %")
    min_top1_agreement: float | None = Field(None, gt=0, le=1,
                                             description="causal LMs: least top-1 next-token agreement")

    @property
    def given(self) -> bool:
        """True when at least one floor is set."""
        return any(v is not None for v in self.model_dump().values())

    def misses(self, quality: dict | Quality) -> list[str]:
        """Every floor ``quality`` misses, as a sentence naming the figure and the floor.

        A floor whose figure was not measured is missed: passing it unchecked would be a silent pass.
        """
        q = quality if isinstance(quality, Quality) else Quality.from_dict(quality)
        checks = [("mean_cosine_to_reference", self.min_cosine, "min_cosine", lambda v, f: v >= f),
                  ("sts_drop_pts", self.max_sts_drop, "max_sts_drop", lambda v, f: v <= f),
                  ("perplexity_increase_pct", self.max_ppl_increase_pct, "max_ppl_increase_pct",
                   lambda v, f: v <= f),
                  ("top1_agreement", self.min_top1_agreement, "min_top1_agreement", lambda v, f: v >= f)]
        out = []
        for key, floor, name, ok in checks:
            if floor is None:
                continue
            value = getattr(q, key)
            if value is None:
                out.append(f"{key} not measured, floor {name} = {floor}")
            elif not ok(value, floor):
                out.append(f"{key} = {value:.4f}, floor {name} = {floor}")
        return out

    def check(self, quality: dict | Quality) -> None:
        """Raise :class:`QualityFloorError` naming the first missed floor."""
        missed = self.misses(quality)
        if missed:
            raise QualityFloorError(f"quality floor missed: {missed[0]}; nothing was written")
