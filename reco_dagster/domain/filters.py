"""Request-time filters over precomputed lists: each item's categories and availability as
one integer (a bit per category, bit 0 for "may be served"), so a list is filtered by a few
integer operations per item, and a list left short is filled from another under the same
filter."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from reco_dagster.domain.lists import SCORE_DECIMALS

AVAILABLE = 1
"""The bit of an item that may be served."""


@dataclass(frozen=True, slots=True)
class ItemFilter:
    required: int
    """Bits an item must have: AVAILABLE, or none when unavailable items are asked for."""
    any_of: int | None
    """Category bits an item must have one of; None: no category asked for (0: categories
    the catalog does not name, so no item passes)."""
    exclude: frozenset[str]
    passes_everything: bool = False
    """No item of the catalog is left out: a list's first k are the answer."""


class CatalogIndex:
    """Every catalog item's mask; an item the catalog does not list may be served and is in
    no category."""

    __slots__ = ("bits", "hides_some", "masks", "revision", "titles")

    def __init__(self, revision: str | None, entries: Iterable[Mapping[str, Any]]) -> None:
        self.revision = revision
        self.bits: dict[str, int] = {}
        self.masks: dict[str, int] = {}
        self.titles: dict[str, str] = {}
        """For lists the store does not keep (a session's, a new item's similar items),
        titled as stored lists are."""
        for entry in entries:
            if "title" in entry:
                self.titles[entry["item_id"]] = entry["title"]
            mask = AVAILABLE if entry["available"] else 0
            for category in entry["categories"]:
                bit = self.bits.get(category)
                if bit is None:
                    bit = self.bits[category] = 1 << (len(self.bits) + 1)
                mask |= bit
            if mask != AVAILABLE:  # the default needs no entry
                self.masks[entry["item_id"]] = mask
        self.hides_some = any(not mask & AVAILABLE for mask in self.masks.values())
        """Whether some item is unavailable, so that an unfiltered answer leaves it out."""

    def masks_of(self, items: Sequence[Mapping[str, Any]]) -> list[int]:
        if not self.masks:
            return [AVAILABLE] * len(items)
        get = self.masks.get
        return [get(item["item_id"], AVAILABLE) for item in items]

    def alike(self, item_id: str, popular: Sequence[str]) -> list[dict[str, Any]]:
        """Items sharing a category with `item_id`, by the Jaccard index of their category
        sets (the score), ties by their order in `popular`: the neighbours of an item the
        model cannot place, from what the catalog says about it. Empty when it has none."""
        mine = self.masks.get(item_id, 0) & ~AVAILABLE
        if not mine:
            return []
        rank = {item: position for position, item in enumerate(popular)}
        scored = []
        for other, mask in self.masks.items():
            shared = (mask & mine).bit_count()
            if shared and other != item_id:
                union = ((mask & ~AVAILABLE) | mine).bit_count()
                scored.append((-shared / union, rank.get(other, len(rank)), other))
        scored.sort()
        listed = []
        for score, _, other in scored:
            item = {"item_id": other, "score": round(-score, SCORE_DECIMALS)}
            if other in self.titles:
                item["title"] = self.titles[other]
            listed.append(item)
        return listed

    def item_filter(
        self,
        categories: Collection[str] = (),
        exclude: Collection[str] = (),
        include_unavailable: bool = False,
    ) -> ItemFilter:
        """Items in any of `categories` (all items without any), not in `exclude`, and only
        available ones unless `include_unavailable`."""
        any_of = None
        if categories:
            any_of = 0
            for category in categories:
                any_of |= self.bits.get(category, 0)
        passes_everything = (
            any_of is None and not exclude and (include_unavailable or not self.hides_some)
        )
        return ItemFilter(
            0 if include_unavailable else AVAILABLE, any_of, frozenset(exclude), passes_everything
        )


def pick(
    items: Sequence[Mapping[str, Any]], masks: Sequence[int], wanted: ItemFilter, k: int
) -> list[Any]:
    """The first `k` items that pass the filter, in list order."""
    if wanted.passes_everything:
        return list(items[: max(k, 0)])
    picked: list[Any] = []
    if k <= 0:
        return picked
    # Inlined rather than a method per item: this runs on the API's request path.
    required, any_of, exclude = wanted.required, wanted.any_of, wanted.exclude
    for item, mask in zip(items, masks, strict=True):
        if mask & required != required or (any_of is not None and not mask & any_of):
            continue
        if item["item_id"] in exclude:
            continue
        picked.append(item)
        if len(picked) == k:
            break
    return picked


def pick_with_fill(
    items: Sequence[Mapping[str, Any]],
    masks: Sequence[int],
    fallback: Callable[[], tuple[Sequence[Mapping[str, Any]], Sequence[int]]],
    wanted: ItemFilter,
    k: int,
) -> tuple[list[Any], int]:
    """`pick` from a list; where the filter leaves out items the answer would have had, the
    fallback list (items, masks: called only then) under the same filter fills in (leaving
    out what the list gave), so the answer is as long as the unfiltered one, `k` or the whole
    list if shorter. A list that is short by itself stays so: its user may have consumed what
    the fallback would bring back. Returns the items and how many came from the fallback."""
    picked = pick(items, masks, wanted, k)
    short = min(k, len(items)) - len(picked)
    if short <= 0:
        return picked, 0
    given = wanted.exclude.union(item["item_id"] for item in picked)
    fill = pick(*fallback(), replace(wanted, exclude=given, passes_everything=False), short)
    return picked + fill, len(fill)
