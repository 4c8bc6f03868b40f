"""Small pieces of nginx config text shared by the generators."""

from __future__ import annotations

__all__ = ["block", "upstream_var"]


def block(header: str, lines: list[str]) -> str:
    """``location HEADER { LINES }``, one line per directive."""
    body = "".join(f"    {line}\n" for line in lines)
    return f"location {header} {{\n{body}}}\n"


def upstream_var(header: str) -> str:
    """The nginx variable of an upstream response header."""
    return "$upstream_http_" + header.lower().replace("-", "_")
