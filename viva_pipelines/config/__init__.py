"""Layered configuration: ``conf/base`` overlaid by ``conf/<env>`` and ``conf/local``."""

from viva_pipelines.config.loader import ConfigError, load_settings
from viva_pipelines.config.schema import Settings

__all__ = ["ConfigError", "Settings", "load_settings"]
