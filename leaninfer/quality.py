"""Quality floors: the one check that optimize (before writing) and benchmarks (in reports) share."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from .errors import QualityFloorError


class Floors(BaseModel):
    """Quality floors a recipe may declare; a missed floor fails the pipeline and writes nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_cosine: float | None = Field(None, gt=0, le=1, description="embeddings: least mean cosine to the source")
    max_sts_drop: float | None = Field(None, ge=0, description="embeddings: most STS Spearman points lost")
    max_ppl_increase_pct: float | None = Field(None, ge=0, description="causal LMs: most perplexity increase, %")
    min_top1_agreement: float | None = Field(None, gt=0, le=1,
                                             description="causal LMs: least top-1 next-token agreement")

    def misses(self, quality: dict) -> list[str]:
        """Every floor ``quality`` misses, as a sentence naming the figure and the floor."""
        checks = [("mean_cosine_to_reference", self.min_cosine, "min_cosine", lambda v, f: v >= f),
                  ("sts_drop_pts", self.max_sts_drop, "max_sts_drop", lambda v, f: v <= f),
                  ("perplexity_increase_pct", self.max_ppl_increase_pct, "max_ppl_increase_pct",
                   lambda v, f: v <= f),
                  ("top1_agreement", self.min_top1_agreement, "min_top1_agreement", lambda v, f: v >= f)]
        return [f"{key} = {quality[key]:.4f}, floor {name} = {floor}"
                for key, floor, name, ok in checks
                if floor is not None and not ok(quality[key], floor)]

    def check(self, quality: dict) -> None:
        """Raise :class:`QualityFloorError` naming the first missed floor."""
        missed = self.misses(quality)
        if missed:
            raise QualityFloorError(f"quality floor missed: {missed[0]}; nothing was written")
