"""Flower on the fleet's own Celery app, with nothing secret on its command line or in its
environment: the broker URL comes from the settings (FLEET_REDIS_URL_FILE), the basic-auth
login from a 0600 Flower config file named by --conf.

    python -m fleet.observe.flower_app --conf=FILE --address=127.0.0.1 --port=5555
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from fleet.broker import make_app
    from fleet.errors import FleetError
    from fleet.settings import Settings

    args = list(sys.argv[1:] if argv is None else argv)
    if not any(a.startswith("--conf=") for a in args):
        print("fleet.observe.flower_app: --conf=FILE is required (a Flower config with basic_auth): "
              "Flower is never served without a login", file=sys.stderr)
        return 2
    try:
        app = make_app(Settings())
    except FleetError as exc:
        print(f"flower: {exc}", file=sys.stderr)
        return 2
    app.start(["flower", *args])
    return 0


if __name__ == "__main__":
    sys.exit(main())
