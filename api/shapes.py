"""What the lookup routes and the session route share: bounds, a listed item's shape, and
the answer while nothing is live (a module of its own: `api.app` imports the routes)."""

from __future__ import annotations

import msgspec

MAX_K = 100
MAX_EXCLUDED = 500
MAX_CATEGORIES = 50
NOTHING_LIVE = "no model has been published yet: materialize the batch_retrain job"


class RecommendedItem(msgspec.Struct, omit_defaults=True):
    item_id: str
    score: float
    title: str | None = None
    because: list[str] | None = None
    """With explain=true: up to three items of the user's history that raised this item's
    score most, the largest first."""
