"""The console's blueprint with every page registered on it (importing a page module adds its routes)."""

from __future__ import annotations

from services.segmentation.console import pages_campaigns, pages_runs, pages_segments, recommendations  # noqa: F401
from services.segmentation.console.blueprint import bp

__all__ = ["bp"]
