"""The one place that reads the process environment for configuration.

``VIVA_ENV`` picks the overlay (``conf/<env>``; default: base alone) and ``VIVA_CONF_DIR`` the
conf folder (default: the ``conf/`` of this checkout, else ``./conf``).
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

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
