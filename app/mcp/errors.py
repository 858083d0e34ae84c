"""Failures of the MCP commands an operator can act on (no heavy imports here:
the ``cycles`` command loads this module on every start)."""

from __future__ import annotations


class UpstreamError(RuntimeError):
    """The gateway's upstream could not be started or reached."""
