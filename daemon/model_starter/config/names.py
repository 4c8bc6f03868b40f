"""The names of models: the model name rule, and aliases (which may also look like the ids
OpenAI-style clients send to other servers)."""

from __future__ import annotations

import re
from typing import Any

from model_starter.config.convert import BAD, Ctx, Node, list_of, scalar, show

__all__ = ["ALIAS_RE", "NAME_RE", "alias", "aliases", "name"]

# Model names (and V2 names): they become nginx locations and URL paths. Always fullmatch:
# `$` alone would let a trailing newline through.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# An alias may also be an id OpenAI-style clients send: `Qwen/Qwen2.5-7B-Instruct` (a Hugging
# Face repository, vLLM's default name), `llama3.1:8b` (Ollama's); its `/`-separated parts are
# neither empty nor `.` or `..` (nginx normalises those away before matching a location).
ALIAS_RE = re.compile(
    r"(?!.*//)(?!.*/$)(?!(?:.*/)?\.\.?(?:/|$))[A-Za-z0-9][A-Za-z0-9._:@+/-]{0,127}")


def alias(ctx: Ctx, node: Node, where: str) -> Any:
    v = scalar(node)
    if not isinstance(v, str) or not ALIAS_RE.fullmatch(v):
        ctx.err(node, where, "expected a name of letters, digits and `._-:@+/` (`org/model`, "
                f"`model:tag`), got {show(node)}")
        return BAD
    return v


aliases = list_of(alias, "names")


def name(ctx: Ctx, node: Node, where: str) -> Any:
    v = scalar(node)
    if not isinstance(v, str) or not NAME_RE.fullmatch(v):
        ctx.err(node, where, f"expected a name matching {NAME_RE.pattern}, got {show(node)}")
        return BAD
    return v
