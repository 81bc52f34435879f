"""Random identifiers for things served many times a second (request ids, recommendation ids)."""

import os


def random_id() -> str:
    """32 random hex digits, as unique as `uuid.uuid4().hex` at about a third of its cost."""
    return os.urandom(16).hex()
