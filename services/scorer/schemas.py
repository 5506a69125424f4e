"""The scorer's HTTP bodies."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field


class Window(StrEnum):
    """Rolling windows, counted back from now to the start of that hour."""

    HOUR = "1h"
    DAY = "24h"
    WEEK = "7d"
    MONTH = "30d"
    QUARTER = "90d"


class _Score(BaseModel):
    window: Window | None = Field(description="The rolling window, or null for a custom range.")
    from_: datetime = Field(alias="from", description="Start of the first hourly bucket counted.")
    to: datetime = Field(description="End of the range (exclusive).")
    n: int = Field(description="Responses counted: every score carries its sample size.")
    filters: dict[str, str] = Field(description="The segment filters applied.")


class NpsScore(_Score):
    """NPS with its category counts, shares and 95% margin of error."""

    metric: Literal["nps"] = "nps"
    score: float | None = Field(description="%promoters − %detractors, −100 to +100; null if n=0.")
    promoters: int
    passives: int
    detractors: int
    promoter_share: float | None
    passive_share: float | None
    detractor_share: float | None
    margin_of_error: float | None = Field(description="± points at 95% confidence.")


class CsatScore(_Score):
    """CSAT as the share of 4s and 5s, and as a mean."""

    metric: Literal["csat"] = "csat"
    score: float | None = Field(description="% of answers that are 4 or 5; null if n=0.")
    satisfied: int
    mean: float | None


class CesScore(_Score):
    """CES on one scale: the mean (higher is easier) and the share of easy answers."""

    metric: Literal["ces"] = "ces"
    scale: int
    score: float | None = Field(description="Mean effort score on the scale; null if n=0.")
    easy: int
    easy_share: float | None
