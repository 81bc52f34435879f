"""Kept for callers of `shared.bulk`: the bulk helpers now live in shared.ingest.bulk (which re-exports them)."""

from shared.ingest.bulk import *  # noqa: F401,F403
