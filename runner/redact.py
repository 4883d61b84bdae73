"""Making what receivers send safe to store, and what the runner logs safe to show.

A receiver's answer is hostile input: a NUL byte cannot be stored in a jsonb string (PostgreSQL
refuses `\\u0000`), and one refused result used to sink a whole report batch and send every
delivery in it again, forever. A webhook URL is a secret of sorts: its path, query and
`user:password@` often carry credentials, so logs show only scheme://host[:port].
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit


def clean_text(value: str | None, limit: int | None = None) -> str | None:
    """`value` without NUL characters and lone surrogates (which no UTF-8 database text holds)."""
    if value is None:
        return None
    if limit is not None:
        value = value[:limit]
    if "\x00" in value:
        value = value.replace("\x00", "")
    # str from bytes.decode(errors="replace") has no surrogates, but error strings built from
    # exceptions might (surrogateescape'd OS messages); encode/decode turns them into "?".
    return value.encode("utf-8", "replace").decode("utf-8")


def clean_result(result: dict[str, Any]) -> dict[str, Any]:
    """A result for complete() whose strings the database will accept."""
    return {k: clean_text(v) if isinstance(v, str) else v for k, v in result.items()}


def origin(url: str) -> str:
    """scheme://host[:port] of `url`: no credentials, path, query or fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparsable url>"
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    scheme = parts.scheme or "?"
    return f"{scheme}://{host}:{port}" if port is not None else f"{scheme}://{host}"


def scrub(text: str | None, url: str) -> str | None:
    """`text` (an error message) with `url` reduced to its origin and its secret parts removed."""
    if not text:
        return text
    text = text.replace(url, origin(url))
    try:
        parts = urlsplit(url)
    except ValueError:
        return text
    if "@" in parts.netloc:
        text = text.replace(parts.netloc.rsplit("@", 1)[0] + "@", "")
    tail = url.split(parts.netloc, 1)[-1] if parts.netloc else ""
    if len(tail) > 1:  # more than "/"
        text = text.replace(tail, "")
    return text
