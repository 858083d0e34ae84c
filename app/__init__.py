"""Cycles authority server: a Postgres-native implementation of the Cycles protocol.

This module must stay importable with the standard library alone: ``python3 -m app``
uses it to bootstrap the virtual environment before any dependency is installed.
"""

from __future__ import annotations

__version__ = "0.1.0"
