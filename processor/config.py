"""Policy parameters: the knobs of the refund rules, loaded from `config/policy.yaml`."""

import difflib
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

_PACKAGE = Path(__file__).resolve().parent


def _default_policy_file() -> Path:
    """config/policy.yaml of a source checkout, or the copy an installed wheel carries."""
    installed = _PACKAGE / "default-config" / "policy.yaml"
    return installed if installed.exists() else _PACKAGE.parent / "config" / "policy.yaml"


MS_PER_DAY = 86_400_000


class PolicyConfigError(ValueError):
    """A policy file that cannot be used; the message names the file and the key."""


def describe_problem(error: ErrorDetails, model: type[BaseModel]) -> str:
    """``dotted.key: message`` for one of `model`'s validation errors, with what to write
    instead where pydantic's message does not say: the format of a duration, the key
    that a misspelt one resembles. (Its messages never quote the value: no secret.)"""
    where = ".".join(str(part) for part in error["loc"])
    text = f"{where or '<top level>'}: {error['msg']}"
    if error["type"].startswith("time_delta"):
        return f"{text} (an ISO 8601 duration, e.g. PT1H or P7D)"
    if error["type"] == "extra_forbidden" and error["loc"]:
        section: type[BaseModel] | None = model
        for part in error["loc"][:-1]:
            field = section.model_fields.get(str(part)) if section else None
            annotation = field.annotation if field else None
            section = (
                annotation
                if isinstance(annotation, type) and issubclass(annotation, BaseModel)
                else None
            )
        known = list(section.model_fields) if section else []
        close = difflib.get_close_matches(str(error["loc"][-1]), known, n=1)
        if close:
            return f"{text} (did you mean {close[0]!r}?)"
    return text


class PolicyConfig(BaseModel):
    """Frozen so that one decision run can never see the policy change under it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    policy_version: str = Field(min_length=1, max_length=64)
    lost_after_days: int = Field(default=20, ge=1, le=365)
    #: Negative, the clock would run ahead of the events and fire deadlines early; the
    #: rules count in milliseconds (under 1 ms, orphan_ttl would be 0), and deadlines must
    #: stay within the dates Python can show.
    allowed_lateness: timedelta = Field(
        default=timedelta(hours=1), ge=timedelta(0), le=timedelta(days=365)
    )
    orphan_ttl: timedelta = Field(
        default=timedelta(days=7), ge=timedelta(milliseconds=1), le=timedelta(days=365)
    )
    default_partial_resolution: Literal["refund", "reship"] = "refund"

    # Cached: the rules read them for nearly every event.
    @cached_property
    def lost_after_ms(self) -> int:
        return self.lost_after_days * MS_PER_DAY

    @cached_property
    def allowed_lateness_ms(self) -> int:
        return int(self.allowed_lateness.total_seconds() * 1000)

    @cached_property
    def orphan_ttl_ms(self) -> int:
        return int(self.orphan_ttl.total_seconds() * 1000)


def load_policy(path: Path | None = None) -> PolicyConfig:
    """Reads a policy YAML file; errors name the file and the offending key."""
    path = path or _default_policy_file()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PolicyConfigError(f"cannot read policy file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise PolicyConfigError(f"policy file {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise PolicyConfigError(f"policy file {path} must hold a mapping of keys to values")
    try:
        return PolicyConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(describe_problem(err, PolicyConfig) for err in exc.errors())
        raise PolicyConfigError(f"policy file {path}: {problems}") from exc
