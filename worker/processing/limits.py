"""Limits Qlik Cloud documents for what the input describes, enforced by both input formats' models
(`worker/processing/models.py`, `worker/processing/ums.py`): defined once, so neither model module needs the other."""

from __future__ import annotations

from typing import Final

# Qlik Cloud limits group names to 256 characters (API changelog, "Group validation updates").
MAX_GROUP_NAME: Final = 256
