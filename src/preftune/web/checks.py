"""The labeling store's errors and the checks on values before they reach the database."""

from __future__ import annotations

import time
import unicodedata

# Longest a login link may be set to last (the invite form offers days).
MAX_LINK_SECONDS = 365 * 24 * 3600
# Ids are 32-bit integer columns on PostgreSQL (SQLite takes 64 bits): the smaller bound for both.
MAX_ID = 2**31 - 1


class StoreError(ValueError):
    """A request the store refuses (duplicate name, bad setting...): one-line message."""


class NotFound(StoreError):
    """No such project, item or user (maps to HTTP 404)."""


def expiry(expires_in: float | None) -> float | None:
    """When a link made now for `expires_in` seconds stops working; None: never."""
    if expires_in is None:
        return None
    if not 0 < expires_in <= MAX_LINK_SECONDS:
        raise StoreError(f"a link can last from a moment to {MAX_LINK_SECONDS // 86400} days")
    return time.time() + expires_in


def isolate(text: str) -> str:
    """User text for a plain-text message: wrapped in FIRST STRONG ISOLATE ... POP DIRECTIONAL
    ISOLATE, so a right-to-left override inside it cannot reverse the words around it (pages
    isolate with <bdi>; notices and error messages are plain strings)."""
    return f"\u2068{text}\u2069"


def check_id(value: int, what: str) -> int:
    """An id the database can hold, or NotFound: ids past the column's range exist nowhere, and
    passing one to the driver fails with an overflow (a 500) instead of finding nothing."""
    if not 1 <= value <= MAX_ID:
        raise NotFound(f"no {what} with id {value}")
    return value


def check_text(value: str, what: str) -> str:
    """Refuse NUL: PostgreSQL cannot store it in text, and no person types it."""
    if "\x00" in value:
        raise StoreError(f"{what} contains a NUL character (\\x00), which cannot be stored")
    return value


def check_name(name: str) -> str:
    """A person's name: 1 to 200 characters, no control characters (line breaks, NUL, escapes)."""
    name = name.strip()
    if not name or len(name) > 200:
        raise StoreError("a name needs 1 to 200 characters")
    if any(unicodedata.category(ch) == "Cc" for ch in name):
        raise StoreError("a name cannot contain control characters (line breaks, tabs, NUL)")
    return name


def check_settings(overlap: int, gold_rate: float) -> None:
    if not 1 <= int(overlap) <= 100:
        raise StoreError(f"overlap must be between 1 and 100, not {overlap}")
    if not 0.0 <= float(gold_rate) < 1.0:
        raise StoreError(f"gold rate must be in [0, 1), not {gold_rate}")
