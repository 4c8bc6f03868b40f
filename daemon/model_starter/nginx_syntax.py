"""Small pieces of nginx config text shared by the generators."""

from __future__ import annotations

import re

__all__ = ["block", "comment", "upstream_var", "word"]


def block(header: str, lines: list[str]) -> str:
    """``location HEADER { LINES }``, one line per directive."""
    body = "".join(f"    {line}\n" for line in lines)
    return f"location {header} {{\n{body}}}\n"


def upstream_var(header: str) -> str:
    """The nginx variable of an upstream response header."""
    return "$upstream_http_" + header.lower().replace("-", "_")


# What a config value may look like once pasted into nginx text: the config's validation
# admits less (see config.convert); this is the generator's own last line of defence.
_WORD = re.compile(r"[A-Za-z0-9._:*=\[\]-]+")
_COMMENT_UNSAFE = re.compile(r"[^\x20-\x7e]")


def word(value: str) -> str:
    """`value` as one nginx word, or ValueError: nothing from a config may end a directive."""
    if not _WORD.fullmatch(value):
        raise ValueError(f"refusing to write {value!r} into the nginx config")
    return value


def comment(text: str) -> str:
    """`text` made safe inside a `#` comment: one line, printable ASCII."""
    return _COMMENT_UNSAFE.sub("?", text)
