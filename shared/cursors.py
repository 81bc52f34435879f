"""Opaque page cursors (base64 JSON): they carry the run a list is read from and the last key seen."""

from __future__ import annotations

import base64
import binascii
import json

from shared.errors import BadCursor


def encode_cursor(payload: dict) -> str:
    """An opaque page cursor."""
    return base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> dict | None:
    """Decode a cursor from `encode_cursor`, or raise BadCursor."""
    if not cursor:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode()).decode())
    except (binascii.Error, ValueError, UnicodeDecodeError) as error:
        raise BadCursor("the cursor is malformed", {"cursor": [str(error)[:100]]}) from error
    if not isinstance(payload, dict):
        raise BadCursor("the cursor is malformed", {"cursor": ["not a cursor"]})
    return payload
