"""Strategy lookup: builtin names and user classes named ``package.module:Class``."""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING

from lbproxy.balancing.cookie_affinity import CookieAffinity
from lbproxy.balancing.ip_hash import IpHash
from lbproxy.balancing.least_connections import LeastConnections
from lbproxy.balancing.random_two import RandomTwoChoices
from lbproxy.balancing.round_robin import RoundRobin
from lbproxy.config.model import BUILTIN_STRATEGIES

if TYPE_CHECKING:
    from lbproxy.balancing.base import Strategy
    from lbproxy.pool.backend import Backend

BUILTINS: dict[str, type] = {
    "round_robin": RoundRobin,
    "least_connections": LeastConnections,
    "ip_hash": IpHash,
    "random": RandomTwoChoices,
    "cookie_affinity": CookieAffinity,
}
assert tuple(BUILTINS) == BUILTIN_STRATEGIES, "BUILTINS must match config.model.BUILTIN_STRATEGIES"

_REQUIRED_METHODS = ("pick", "update")


def _unknown(name: str) -> ValueError:
    suggestion: str | None = None
    if ":" not in name and "." in name:
        module, _, attr = name.rpartition(".")
        suggestion = f"{module}:{attr}"
    else:
        close = difflib.get_close_matches(name, BUILTIN_STRATEGIES, n=1, cutoff=0.6)
        if close:
            suggestion = close[0]
    hint = f" (did you mean '{suggestion}'?)" if suggestion else ""
    return ValueError(
        f"unknown strategy '{name}'{hint}; builtins are {', '.join(BUILTIN_STRATEGIES)}, "
        "or use 'package.module:Class'"
    )


def resolve_strategy_class(name: str) -> type:
    """The class for strategy ``name``: a builtin name or ``package.module:Class``.

    A user class is imported with importlib (``Class`` may be dotted, ``Outer.Inner``) and must be
    a class with callable ``pick`` and ``update``. Raises ``ValueError`` with a message fit for
    the operator for an unknown name, a malformed reference, a module that fails to import, a
    missing attribute, or an attribute that is not a strategy class.
    """
    builtin = BUILTINS.get(name)
    if builtin is not None:
        return builtin
    if ":" not in name:
        raise _unknown(name)
    module_name, _, attr_path = name.partition(":")
    module_name = module_name.strip()
    attr_path = attr_path.strip()
    if not module_name or not attr_path:
        raise ValueError(f"strategy '{name}': expected 'package.module:Class'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ValueError(
            f"strategy '{name}': cannot import module '{module_name}': "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    obj: object = module
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(
                f"strategy '{name}': module '{module_name}' has no attribute '{attr_path}'"
            ) from None
    if not inspect.isclass(obj):
        raise ValueError(
            f"strategy '{name}': '{attr_path}' is a {type(obj).__name__}, not a class"
        )
    missing = [m for m in _REQUIRED_METHODS if not callable(getattr(obj, m, None))]
    if missing:
        raise ValueError(
            f"strategy '{name}': class '{attr_path}' lacks method(s) {', '.join(missing)}; "
            "a strategy needs pick(key, exclude) and update(backends) "
            "(see lbproxy.balancing.base.Strategy)"
        )
    return obj


def create_strategy(name: str, backends: Sequence[Backend]) -> Strategy:
    """A new strategy ``name`` over a copy of ``backends``.

    That is ``resolve_strategy_class(name)(list(backends))``.

    Raises ``ValueError`` as ``resolve_strategy_class`` does; an exception raised by a user
    class's constructor is also reported as ``ValueError`` naming the strategy.
    """
    cls = resolve_strategy_class(name)
    if name in BUILTINS:
        strategy: Strategy = cls(list(backends))
        return strategy
    try:
        strategy = cls(list(backends))
    except Exception as exc:
        raise ValueError(
            f"strategy '{name}': {cls.__name__}(backends) failed: {type(exc).__name__}: {exc}"
        ) from exc
    return strategy
