"""The config: YAML in, typed validated immutable specs out.

`schema` declares every key once (dataclass fields with their converter, text and launcher
rules); `parse` validates a file against it; `reference` renders the README's tables.
"""

from model_starter.config.parse import ConfigError, capacity_warnings, load_config, parse_config
from model_starter.config.schema import (
    LAUNCHERS,
    MODES,
    ONE_AT_A_TIME,
    CommandSpec,
    Config,
    CrashLoop,
    InferenceServer,
    LauncherKind,
    Mode,
    ModelSpec,
    NginxSettings,
    ProcessSpec,
    V2Spec,
)

__all__ = [
    "LAUNCHERS",
    "MODES",
    "ONE_AT_A_TIME",
    "CommandSpec",
    "Config",
    "ConfigError",
    "CrashLoop",
    "InferenceServer",
    "LauncherKind",
    "Mode",
    "ModelSpec",
    "NginxSettings",
    "ProcessSpec",
    "V2Spec",
    "capacity_warnings",
    "load_config",
    "parse_config",
]
