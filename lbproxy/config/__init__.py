"""Configuration: YAML in, validated frozen dataclasses out.

``load_config(path)`` / ``load_config_text(text)`` return a ``Config`` or raise ``ConfigError``
listing every problem as ``FILE:LINE: key.path: message``.
"""

from __future__ import annotations

from lbproxy.config.loader import load_config, load_config_text
from lbproxy.config.model import Config

__all__ = ["Config", "load_config", "load_config_text"]
