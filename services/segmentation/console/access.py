"""Who is signed in to the console, and what their key's scopes let them see and do.

The session cookie holds the key's id and sha256 (never the key itself); each request reloads the key
so a revoked key signs the user out at once. Pages and buttons ask the same `allows` the API asks.
"""

from __future__ import annotations

import functools

from flask import abort, current_app, g, redirect, request, session, url_for
from sqlalchemy import select

from shared.auth import KeyVerifier, Principal, Unauthorized, hash_key
from shared.extensions import db
from shared.models import ApiKey

# Pages of the console: endpoint, the scope it needs, and the label (translated in the template).
PAGE_SCOPES = {
    "console.overview": "segments:read",
    "console.movements": "segments:read",
    "console.explorer": "segments:read",
    "console.customer": "segments:read",
    "console.campaigns": "campaigns:write",
    "console.recommendations": "recs:read",
    "console.runs": "segments:read",
}


def sign_in(raw_key: str) -> Principal:
    """Check a pasted key with the API's verifier and remember it in the session; Unauthorized if unknown."""
    verifier: KeyVerifier = current_app.extensions["segrec_keys"]
    principal = verifier.verify(f"Bearer {raw_key.strip()}")
    language = session.get("lang")
    # A fresh session on sign-in (no fixation); only the language choice carries over.
    session.clear()
    if language:
        session["lang"] = language
    session.permanent = True
    session["key_id"] = principal.key_id
    session["key_hash"] = hash_key(raw_key.strip())
    return principal


def sign_out() -> None:
    """Forget the key (the language choice stays)."""
    language = session.get("lang")
    session.clear()
    if language:
        session["lang"] = language


def current_principal() -> Principal | None:
    """The signed-in key, reloaded from the database; None when signed out or the key was revoked."""
    if "principal" in g:
        return g.principal
    principal = None
    key_id, key_hash = session.get("key_id"), session.get("key_hash")
    if key_id is not None and key_hash:
        with db.session() as db_session:
            row = db_session.execute(
                select(ApiKey).where(ApiKey.id == key_id, ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
            ).scalar_one_or_none()
            if row is not None:
                principal = Principal(key_id=row.id, name=row.name, scopes=frozenset(row.scopes.split(",")))
    g.principal = principal
    return principal


def allows(scope: str) -> bool:
    """True when the signed-in key has `scope` (templates use it to show or hide pages and buttons)."""
    principal = current_principal()
    return principal is not None and principal.allows(scope)


def first_allowed_page() -> str | None:
    """The first page the signed-in key may open."""
    for endpoint, scope in PAGE_SCOPES.items():
        if allows(scope):
            return endpoint
    return None


def console_page(scope: str | None):
    """Decorator: signed in (else to the sign-in form) with a key carrying `scope` (else 403); None: any key."""

    def decorator(view):
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            principal = current_principal()
            if principal is None:
                if request.method == "GET":
                    return redirect(url_for("console.login", next=request.full_path))
                raise Unauthorized("sign in to the console first")
            if scope is not None and not principal.allows(scope):
                abort(403)
            return view(*args, **kwargs)

        # The scope check the API's endpoint audit (shared.web.endpoints_without_scope) looks for.
        wrapper._required_scope = scope or "signed-in"
        return wrapper

    return decorator


def public_page(view):
    """Decorator marking a console endpoint anyone may open (sign-in, language switch, static assets)."""
    view._required_scope = "public"
    return view
