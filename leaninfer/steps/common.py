"""What every step shares: the config base class, the step registry, module selection by name pattern."""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import StepError, valid_list
from ..models.torch_modules import linearize_conv1d

log = logging.getLogger("leaninfer")

STEPS: dict[str, type[StepConfig]] = {}


def register(cls: type[StepConfig]) -> type[StepConfig]:
    """Class decorator: make a step config reachable by its ``name`` from the CLI and from recipes."""
    STEPS[cls.name] = cls
    return cls


@dataclass
class StepContext:
    """What a step may use besides the model: a working folder inside the artifact being written,
    calibration texts, and a list of notes (warnings with reasons) that end up in the manifest."""

    work_dir: Path
    calibration_texts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def note(self, message: str) -> None:
        log.warning(message)
        self.notes.append(message)


class StepConfig(BaseModel):
    """One transformation: a small validated config plus ``apply``. Subclasses set the class variables.

    ``accepts`` lists the model states (``backend:precision``) the step can start from; ``produces`` maps a
    state to the state after the step. Planning a recipe runs only these, so an impossible combination is
    refused before any work starts.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    accepts: ClassVar[tuple[str, ...]] = ()
    tasks: ClassVar[tuple[str, ...]] = ("embedding", "causal-lm")
    # A step that runs on another runtime names the step that exports a PyTorch FP32 model to it.
    export_step: ClassVar[str | None] = None

    def produces(self, state: str) -> str:
        return state

    def apply(self, model, ctx: StepContext):  # -> Model
        raise NotImplementedError

    def to_dict(self) -> dict:
        return {"step": self.name, **self.model_dump(mode="json")}


class ModuleFilter(BaseModel):
    """Choose modules by fnmatch pattern on their qualified names. Sensible default: keep ``lm_head``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    include: tuple[str, ...] = Field(
        ("*",), description="fnmatch patterns on qualified module names (e.g. 'encoder.layer.*.intermediate.dense'; "
        "a comma-separated string is accepted): the step touches a module that matches one of them and no exclude "
        "pattern; '*' selects every module")
    exclude: tuple[str, ...] = Field(
        ("lm_head", "*lm_head"), description="fnmatch patterns on qualified module names (a comma-separated string "
        "is accepted) of modules the step leaves untouched even when an include pattern matches; the default keeps "
        "the LM head")

    @field_validator("include", "exclude", mode="before")
    @classmethod
    def _split(cls, v):
        return tuple(x.strip() for x in v.split(",") if x.strip()) if isinstance(v, str) else tuple(v)

    def selects(self, name: str) -> bool:
        return (any(fnmatch.fnmatchcase(name, p) for p in self.include)
                and not any(fnmatch.fnmatchcase(name, p) for p in self.exclude))


class FilteredStep(StepConfig, ModuleFilter):
    """A step that touches only the modules its include/exclude patterns select."""

    def linear_names(self, module) -> list[str]:
        import torch

        linearize_conv1d(module)
        names = [n for n, m in module.named_modules() if isinstance(m, torch.nn.Linear) and self.selects(n)]
        if not names:
            raise StepError(f"step {self.name!r}: include={list(self.include)} exclude={list(self.exclude)} "
                            "selects no Linear module of this model")
        return names


def get_step(name: str, **params) -> StepConfig:
    cls = STEPS.get(name)
    if cls is None:
        raise StepError(f"unknown step {name!r}; valid steps: {valid_list(STEPS)}")
    try:
        return cls(**params)
    except Exception as e:  # pydantic ValidationError: name the field and the valid values
        raise StepError(f"step {name!r}: invalid parameters {params}: {pydantic_message(e)}") from None


def pydantic_message(e: Exception) -> str:
    errors = getattr(e, "errors", None)
    if callable(errors):
        return "; ".join(f"{'.'.join(str(x) for x in err['loc']) or 'value'}: {err['msg']}" for err in errors())
    return str(e)
