"""The console blueprint: sign-in and out, the language switch, static assets, CSRF and error pages."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, redirect, render_template, request, send_from_directory, session, url_for
from flask_babel import gettext
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import Forbidden as HTTPForbidden

from services.segmentation.console import LOCALES, PACKAGE_DIR, csrf, select_locale
from services.segmentation.console import access
from services.segmentation.console.labels import DIMENSION_LABELS, status_label, value_label
from shared.auth import Unauthorized
from shared.errors import DomainError

bp = Blueprint("console", __name__, url_prefix="/console", template_folder="templates", static_folder=None)

NAV = (
    ("console.overview", "segments:read"),
    ("console.movements", "segments:read"),
    ("console.explorer", "segments:read"),
    ("console.customer", "segments:read"),
    ("console.campaigns", "campaigns:write"),
    ("console.recommendations", "recs:read"),
    ("console.runs", "segments:read"),
)
# Everything the pages load comes from this server: no CDN, so the console works offline and in mainland China.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'"
)


@bp.before_request
def check_csrf():
    """Every state-changing console request carries the form's (or header's) CSRF token."""
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        csrf.protect()


@bp.after_request
def security_headers(response):
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if response.mimetype == "text/html":
        response.headers.setdefault("Cache-Control", "no-store")
    return response


@bp.app_context_processor
def console_helpers() -> dict:
    if not request.blueprint == "console":
        return {}
    return {
        "allows": access.allows,
        "principal": access.current_principal,
        "nav_pages": [endpoint for endpoint, scope in NAV if access.allows(scope)],
        "locale": select_locale(),
        "locales": LOCALES,
        "value_label": value_label,
        "status_label": status_label,
        "dimension_label": lambda name: str(DIMENSION_LABELS.get(name, name)),
    }


def safe_next(target: str | None) -> str | None:
    """Only local console paths may be redirected to after sign-in."""
    if not target:
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/console"):
        return None
    return target


@bp.route("/login", methods=["GET", "POST"])
@access.public_page
def login():
    """The sign-in form: paste an API key once."""
    error = None
    if request.method == "POST":
        try:
            access.sign_in(request.form.get("api_key", ""))
        except Unauthorized:
            error = gettext("This key is unknown or revoked.")
        else:
            return redirect(safe_next(request.args.get("next")) or url_for("console.home"))
    return render_template("console/login.html", error=error), (401 if error else 200)


@bp.post("/logout")
@access.public_page
def logout():
    access.sign_out()
    return redirect(url_for("console.login"))


@bp.get("/lang/<code>")
@access.public_page
def switch_language(code):
    """The language switch on every page; back to where the user was."""
    if code in LOCALES:
        session["lang"] = code
    return redirect(safe_next(request.args.get("next")) or url_for("console.home"))


@bp.get("/assets/<path:filename>")
@access.public_page
def asset(filename):
    """The console's own scripts, styles and the vendored ECharts (no CDN)."""
    return send_from_directory(PACKAGE_DIR / "static", filename, max_age=3600)


@bp.get("/")
@access.console_page(None)
def home():
    """The first page the key may open."""
    endpoint = access.first_allowed_page()
    if endpoint is None:
        return render_template("console/error.html", message=gettext("This key opens no console page.")), 403
    return redirect(url_for(endpoint))


@bp.errorhandler(CSRFError)
def csrf_failed(error):
    message = gettext("The form's security token is missing or expired. Reload the page and try again.")
    return render_template("console/error.html", message=message), 400


@bp.errorhandler(HTTPForbidden)
def forbidden(error):
    return render_template("console/error.html", message=gettext("Your key's scopes do not allow this.")), 403


@bp.errorhandler(DomainError)
def domain_error(error):
    if isinstance(error, Unauthorized):
        return redirect(url_for("console.login"))
    return render_template("console/error.html", message=error.message, details=error.details), error.status
