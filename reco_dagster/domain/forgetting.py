"""Forgotten users: how their ids are recognised once only a key of them is kept, and their
rows taken out of event files in every format the landing zone reads."""

from __future__ import annotations

import hashlib


def user_key(user_id: str) -> str:
    """What a tombstone keeps of a user id: its SHA-256. Enough to recognise the user's events
    (and to confirm that a given id was forgotten), not to recover the id."""
    return hashlib.sha256(user_id.encode("utf-8", "surrogatepass")).hexdigest()
