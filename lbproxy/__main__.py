"""``python -m lbproxy``: the same as the ``lbproxy`` console script."""

from __future__ import annotations

from lbproxy.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
