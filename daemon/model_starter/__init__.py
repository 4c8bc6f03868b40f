"""model-starter: start inference models on demand behind nginx, stop them when idle."""

from model_starter.config import Config, ConfigError, ModelSpec, load_config, parse_config

__all__ = ["Config", "ConfigError", "ModelSpec", "__version__", "load_config", "parse_config"]

__version__ = "0.1.0"
