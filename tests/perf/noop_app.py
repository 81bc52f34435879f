"""The baseline of the serving benchmark: a Flask app whose one endpoint does nothing."""

from flask import Flask, jsonify


def create_app() -> Flask:
    """A bare Flask app served by the same gunicorn configuration as the real services."""
    app = Flask(__name__)

    @app.route("/noop", methods=["GET", "POST"])
    def noop():
        return jsonify({"ok": True})

    return app
