"""The one place that reads the process environment for configuration.

``VIVA_ENV`` picks the overlay (``conf/<env>``; default: base alone) and ``VIVA_CONF_DIR`` the
conf folder (default: the ``conf/`` of this checkout, else ``./conf``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from viva_pipelines.config import Settings, load_settings

PACKAGE_DIR = Path(__file__).resolve().parent


def default_conf_dir() -> Path:
    explicit = os.environ.get("VIVA_CONF_DIR")
    if explicit:
        return Path(explicit)
    checkout = PACKAGE_DIR.parent / "conf"
    return checkout if checkout.is_dir() else Path.cwd() / "conf"


@cache
def get_settings() -> Settings:
    """Settings for this process, loaded once."""
    return load_settings(default_conf_dir(), os.environ.get("VIVA_ENV") or None)


def settings_with(overrides: Mapping[str, Any], origin: str) -> Settings:
    """This process's settings with ``overrides`` (dotted keys) set over them and validated as
    the configuration is: a command's flags for settings, checked before anything runs, and an
    error in one names ``origin`` ("viva edit's flags") and the setting."""
    return load_settings(
        default_conf_dir(),
        os.environ.get("VIVA_ENV") or None,
        overrides=overrides,
        overrides_origin=origin,
    )
