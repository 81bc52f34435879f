"""The ops and marketing console (看板) under /console: server-rendered pages with ECharts, zh-CN and English.

`register_console(app)` adds the blueprint, the signed session, CSRF protection for the console's forms only
(the JSON API keeps its bearer keys and no cookies) and the translations.
"""

from __future__ import annotations

import logging
import os
import secrets
from datetime import timedelta
from pathlib import Path

from flask import Flask, request, session
from flask.sessions import SecureCookieSessionInterface
from flask_babel import Babel
from flask_wtf.csrf import CSRFProtect

log = logging.getLogger("segrec.console")

PACKAGE_DIR = Path(__file__).resolve().parent
# Locale codes as Babel names them; the browser's Accept-Language picks one, the switch overrides it.
LOCALES = ("zh_CN", "en")
csrf = CSRFProtect()


class ConsoleSessionInterface(SecureCookieSessionInterface):
    """The signed session cookie, Secure whenever the request came over https (unless forced by config)."""

    def get_cookie_secure(self, app: Flask) -> bool:
        setting = str(app.config.get("CONSOLE_COOKIE_SECURE", "auto")).strip().lower()
        if setting == "auto":
            return request.is_secure if request else False
        return setting in {"1", "true", "yes", "on"}


def select_locale() -> str:
    """The language the user picked with the switch, else the best match of Accept-Language, else English."""
    chosen = session.get("lang") if request else None
    if chosen in LOCALES:
        return chosen
    if not request:
        return "en"
    best = request.accept_languages.best_match([code.replace("_", "-") for code in LOCALES])
    return best.replace("-", "_") if best else "en"


def secret_key(config: dict) -> str:
    """SECRET_KEY from the configuration, else a random one made once per machine under VAR_DIR."""
    if config.get("SECRET_KEY"):
        return str(config["SECRET_KEY"])
    path = Path(config["VAR_DIR"]) / "console-secret-key"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: of several workers starting at once, one writes the key and the others read it.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_hex(32))
        log.warning("SECRET_KEY is not set: generated a random one in %s (set SECRET_KEY in production)", path)
    key = path.read_text().strip()
    if not key:  # another worker created the file and has not written it yet
        raise RuntimeError(f"{path} is empty; remove it or set SECRET_KEY")
    return key


def register_console(app: Flask) -> None:
    """Mount /console on the app: session, CSRF, translations and the pages."""
    from services.segmentation.console.views import bp

    app.config["SECRET_KEY"] = secret_key(app.config)
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    app.config["SESSION_COOKIE_NAME"] = "segrec_console"
    app.config["SESSION_COOKIE_PATH"] = "/console"
    app.config["PERMANENT_SESSION_LIFETIME"] = timedelta(hours=int(app.config["CONSOLE_SESSION_HOURS"]))
    app.session_interface = ConsoleSessionInterface()
    # CSRF is checked by the console blueprint itself; API calls carry bearer keys, never cookies.
    app.config["WTF_CSRF_CHECK_DEFAULT"] = False
    app.config.setdefault("WTF_CSRF_TIME_LIMIT", None)
    csrf.init_app(app)
    app.config.setdefault("BABEL_TRANSLATION_DIRECTORIES", str(PACKAGE_DIR / "translations"))
    app.config.setdefault("BABEL_DEFAULT_LOCALE", "en")
    Babel(app, locale_selector=select_locale)
    app.register_blueprint(bp)
