"""Unit tests for lbproxy.balancing: pure, synchronous, no I/O."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest

from lbproxy.balancing import Strategy, create_strategy, resolve_strategy_class
from lbproxy.balancing.cookie_affinity import AffinityCookie, CookieAffinity
from lbproxy.balancing.ip_hash import IpHash
from lbproxy.balancing.least_connections import LeastConnections
from lbproxy.balancing.random_two import RandomTwoChoices
from lbproxy.balancing.round_robin import RoundRobin
from lbproxy.config.model import BUILTIN_STRATEGIES, Address, BackendConfig, CookieConfig
from lbproxy.pool.backend import Backend, BackendState

KEYS = [f"198.51.{i // 250}.{i % 250}" for i in range(10_000)]


def make_backends(
    weights: Sequence[int] = (1, 1, 1),
    *,
    first: int = 1,
    max_connections: int | None = None,
) -> list[Backend]:
    return [
        Backend(
            BackendConfig(
                Address("10.0.0.%d" % (first + i), 80), weight=w, max_connections=max_connections
            ),
            "pool",
        )
        for i, w in enumerate(weights)
    ]


def picks(strategy: Strategy, count: int, key: str | None = None) -> list[Backend | None]:
    return [strategy.pick(key) for _ in range(count)]


def max_run(seq: Sequence[object]) -> int:
    best = run = 0
    prev: object = object()
    for item in seq:
        run = run + 1 if item is prev else 1
        prev = item
        best = max(best, run)
    return best


def labels(counter: Counter[Backend | None]) -> dict[str, int]:
    return {b.label if b is not None else "-": n for b, n in counter.items()}


# --- round robin -----------------------------------------------------------------------------


def test_round_robin_equal_weights_cycles() -> None:
    bs = make_backends((1, 1, 1))
    rr = RoundRobin(bs)
    assert picks(rr, 6) == [bs[0], bs[1], bs[2], bs[0], bs[1], bs[2]]


def test_round_robin_weighted_sequence_is_smooth() -> None:
    a, b = make_backends((1, 2))
    rr = RoundRobin([a, b])
    # nginx's smooth WRR: b a b | b a b | ...
    assert picks(rr, 6) == [b, a, b, b, a, b]


def test_round_robin_weighted_share_is_exact_and_interleaved() -> None:
    bs = make_backends((5, 1, 1, 3))
    rr = RoundRobin(bs)
    seq = picks(rr, 10 * 1000)
    assert Counter(seq) == {bs[0]: 5000, bs[1]: 1000, bs[2]: 1000, bs[3]: 3000}
    # Within every full cycle of sum(weights) picks the shares are exact, too.
    for start in range(0, len(seq), 10):
        assert Counter(seq[start : start + 10]) == {bs[0]: 5, bs[1]: 1, bs[2]: 1, bs[3]: 3}
    # Smooth: weight 5 out of 10 never gets more than 2 in a row (plain WRR would give 5).
    assert max_run(seq) <= 2


def test_round_robin_reads_weights_at_pick_time() -> None:
    a, b = make_backends((1, 1))
    rr = RoundRobin([a, b])
    picks(rr, 10)
    b.weight = 3
    assert Counter(picks(rr, 400)) == {a: 100, b: 300}


def test_round_robin_skips_unavailable_excluded_and_full() -> None:
    bs = make_backends((1, 1, 1, 1), max_connections=2)
    rr = RoundRobin(bs)
    bs[0].force_state(BackendState.UNHEALTHY)
    bs[1].acquire()
    bs[1].acquire()  # at max_connections
    seq = [rr.pick(None, exclude=(bs[3],)) for _ in range(5)]
    assert seq == [bs[2]] * 5
    bs[1].release()
    assert set(picks(rr, 10)) == {bs[1], bs[2], bs[3]}


def test_round_robin_none_when_nothing_available() -> None:
    bs = make_backends((1, 2))
    rr = RoundRobin(bs)
    bs[0].force_state(BackendState.DRAINING)
    assert rr.pick(None, exclude=[bs[1]]) is None
    bs[1].force_state(BackendState.DISABLED)
    assert rr.pick(None) is None
    assert RoundRobin([]).pick(None) is None


def test_round_robin_update_changes_membership() -> None:
    bs = make_backends((1, 1, 1))
    rr = RoundRobin(bs[:2])
    assert set(picks(rr, 4)) == {bs[0], bs[1]}
    rr.update(bs)
    assert Counter(picks(rr, 30)) == {bs[0]: 10, bs[1]: 10, bs[2]: 10}
    # The strategy holds its own copy: mutating the caller's list changes nothing.
    caller = list(bs)
    rr.update(caller)
    caller.clear()
    assert rr.pick(None) is not None


# --- least connections -----------------------------------------------------------------------


def test_least_connections_chooses_lowest_load() -> None:
    bs = make_backends((1, 1, 1))
    lc = LeastConnections(bs)
    bs[0].active, bs[1].active, bs[2].active = 5, 2, 7
    assert picks(lc, 5) == [bs[1]] * 5


def test_least_connections_honours_weights() -> None:
    a, b = make_backends((1, 4))
    lc = LeastConnections([a, b])
    a.active, b.active = 2, 6  # loads 2 and 1.5
    assert lc.pick(None) is b
    b.active = 9  # load 2.25
    assert lc.pick(None) is a
    # Driven like the data path (acquire after each pick), b carries 4x a's connections.
    a.active = b.active = 0
    for _ in range(500):
        chosen = lc.pick(None)
        assert chosen is not None
        chosen.acquire()
    assert (a.active, b.active) == (100, 400)


def test_least_connections_rotates_ties() -> None:
    bs = make_backends((1, 1, 1))
    lc = LeastConnections(bs)
    seq = picks(lc, 300)  # active never changes: every pick is a three-way tie
    assert Counter(seq) == {b: 100 for b in bs}
    assert max_run(seq) == 1
    # A tie between two of three: only those two, alternating.
    bs[0].active = 3
    seq = picks(lc, 100)
    assert Counter(seq) == {bs[1]: 50, bs[2]: 50}
    assert max_run(seq) == 1


def test_least_connections_weighted_ties_and_skips() -> None:
    a, b, c = make_backends((1, 2, 1))
    lc = LeastConnections([a, b, c])
    assert Counter(picks(lc, 400)) == {a: 100, b: 200, c: 100}
    c.force_state(BackendState.EJECTED)
    assert lc.pick(None, exclude={a}) is b
    b.force_state(BackendState.UNHEALTHY)
    assert lc.pick(None, exclude={a}) is None
    assert lc.pick(None) is a


# --- ip hash ---------------------------------------------------------------------------------


def mapping(strategy: Strategy, keys: Sequence[str] = KEYS) -> dict[str, Backend]:
    out: dict[str, Backend] = {}
    for k in keys:
        b = strategy.pick(k)
        assert b is not None
        out[k] = b
    return out


def test_ip_hash_is_sticky_and_distributes_evenly() -> None:
    bs = make_backends((1,) * 5)
    ih = IpHash(bs)
    first = mapping(ih)
    assert mapping(ih) == first
    shares = Counter(first.values())
    ideal = len(KEYS) / len(bs)
    # Measured with these keys: 87%..113% of the ideal share.
    for b in bs:
        assert 0.75 * ideal <= shares[b] <= 1.25 * ideal, labels(shares)


def test_ip_hash_weight_affects_share() -> None:
    bs = make_backends((1, 1, 2))
    shares = Counter(mapping(IpHash(bs)).values())
    assert 0.40 * len(KEYS) <= shares[bs[2]] <= 0.60 * len(KEYS), labels(shares)
    assert shares[bs[2]] > 1.5 * max(shares[bs[0]], shares[bs[1]])
    # Same proportions expressed with bigger numbers build the same ring.
    scaled = make_backends((100, 100, 200))
    assert {k: b.label for k, b in mapping(IpHash(scaled)).items()} == {
        k: b.label for k, b in mapping(IpHash(bs)).items()
    }


@pytest.mark.parametrize("n", [4, 5, 10])
def test_ip_hash_removing_a_backend_moves_only_its_keys(n: int) -> None:
    bs = make_backends((1,) * n)
    before = mapping(IpHash(bs))
    removed = bs[n // 2]
    after = mapping(IpHash([b for b in bs if b is not removed]))
    moved = [k for k in KEYS if after[k] is not before[k]]
    assert all(before[k] is removed for k in moved)
    assert len(moved) == sum(1 for b in before.values() if b is removed)
    assert len(moved) / len(KEYS) < 1.5 / n


@pytest.mark.parametrize("n", [4, 5, 10])
def test_ip_hash_adding_a_backend_moves_keys_only_to_it(n: int) -> None:
    bs = make_backends((1,) * (n + 1))
    ih = IpHash(bs[:n])
    before = mapping(ih)
    ih.update(bs)  # membership change on the same instance
    after = mapping(ih)
    moved = [k for k in KEYS if after[k] is not before[k]]
    assert moved
    assert all(after[k] is bs[n] for k in moved)
    assert len(moved) / len(KEYS) < 1.5 / (n + 1)


def test_ip_hash_unavailable_backend_keys_move_and_come_back() -> None:
    bs = make_backends((1,) * 5)
    ih = IpHash(bs)
    before = mapping(ih)
    down = bs[1]
    down.force_state(BackendState.UNHEALTHY)
    during = mapping(ih)
    for k in KEYS:
        if before[k] is down:
            assert during[k] is not down
        else:
            assert during[k] is before[k]
    # The orphaned keys spread over the others rather than all landing on one neighbour.
    assert len({during[k] for k in KEYS if before[k] is down}) >= 3
    down.force_state(BackendState.HEALTHY)
    assert mapping(ih) == before


def test_ip_hash_exclude_and_full_backends_are_skipped() -> None:
    bs = make_backends((1, 1, 1), max_connections=1)
    ih = IpHash(bs)
    key = KEYS[0]
    owner = ih.pick(key)
    assert owner is not None
    second = ih.pick(key, exclude=[owner])
    assert second is not None and second is not owner
    third = ih.pick(key, exclude=[owner, second])
    assert third is not None and third not in (owner, second)
    assert ih.pick(key, exclude=bs) is None
    owner.acquire()  # full: same effect as excluding it
    assert ih.pick(key) is second
    for b in bs:
        b.force_state(BackendState.DISABLED)
    assert ih.pick(key) is None


def test_ip_hash_independent_instances_agree() -> None:
    one = IpHash(make_backends((1, 2, 1, 3)))
    # Separately built Backend objects, in a different order: the ring is the same.
    others = make_backends((1, 2, 1, 3))
    two = IpHash(list(reversed(others)))
    m1 = mapping(one)
    m2 = mapping(two)
    assert all(m1[k].label == m2[k].label for k in KEYS)


def test_ip_hash_reads_weight_changes_at_pick_time() -> None:
    bs = make_backends((1, 1))
    ih = IpHash(bs)
    before = Counter(mapping(ih).values())
    bs[0].weight = 4
    after = Counter(mapping(ih).values())
    assert after[bs[0]] > before[bs[0]] + 0.2 * len(KEYS)


def test_ip_hash_none_key_falls_back_to_round_robin() -> None:
    bs = make_backends((1, 1, 1))
    ih = IpHash(bs)
    assert Counter(picks(ih, 30)) == {b: 10 for b in bs}
    assert IpHash([]).pick(None) is None
    assert IpHash([]).pick("1.2.3.4") is None


# --- random (two choices) --------------------------------------------------------------------


def test_random_two_choices_prefers_less_loaded() -> None:
    bs = make_backends((1, 1, 1, 1))
    rt = RandomTwoChoices(bs, rng=random.Random(1))
    bs[0].active = 10
    bs[1].active = 5
    seq = picks(rt, 2000)
    counts = Counter(seq)
    # The most loaded backend is never chosen while another is eligible.
    assert bs[0] not in counts
    assert counts[bs[1]] < counts[bs[2]] and counts[bs[1]] < counts[bs[3]]
    # Load is active / weight.
    a, b = make_backends((1, 3))
    rt2 = RandomTwoChoices([a, b], rng=random.Random(2))
    a.active, b.active = 2, 5  # loads 2 and 1.67
    assert set(picks(rt2, 50)) == {b}


def test_random_two_choices_spreads_when_idle() -> None:
    bs = make_backends((1,) * 5)
    rt = RandomTwoChoices(bs, rng=random.Random(3))
    counts = Counter(picks(rt, 10_000))
    for b in bs:
        assert 1700 <= counts[b] <= 2300, labels(counts)
    # Driven like the data path, load stays balanced.
    for _ in range(1000):
        chosen = rt.pick(None)
        assert chosen is not None
        chosen.acquire()
    assert max(b.active for b in bs) - min(b.active for b in bs) <= 5


def test_random_two_choices_availability_and_exclude() -> None:
    bs = make_backends((1, 1, 1))
    rt = RandomTwoChoices(bs)
    bs[0].force_state(BackendState.UNHEALTHY)
    assert set(rt.pick(None, exclude=[bs[1]]) for _ in range(20)) == {bs[2]}
    assert rt.pick(None, exclude=bs[1:]) is None
    assert RandomTwoChoices([]).pick(None) is None
    rt.update(bs[:1])
    assert rt.pick(None) is None


# --- cookie affinity -------------------------------------------------------------------------


def test_cookie_affinity_strategy_is_weighted_round_robin() -> None:
    a, b = make_backends((1, 2))
    ca = CookieAffinity([a, b])
    assert picks(ca, 6, key="ignored") == [b, a, b, b, a, b]
    b.force_state(BackendState.UNHEALTHY)
    assert ca.pick(None) is a
    assert ca.pick(None, exclude=[a]) is None


def test_cookie_value_is_opaque_and_stable() -> None:
    bs = make_backends((1, 1, 1))
    config = CookieConfig(secret="s3cret")
    one = AffinityCookie(config, "web")
    values = [one.value_for(b) for b in bs]
    assert len(set(values)) == 3
    for b, v in zip(bs, values):
        assert len(v) == 16 and int(v, 16) >= 0
        assert "10.0.0" not in v and b.host not in v
        assert one.value_for(b) == v  # cached
    # Another instance (another process) with the same secret and fresh Backend objects agrees.
    two = AffinityCookie(CookieConfig(secret="s3cret"), "web")
    assert [two.value_for(b) for b in make_backends((1, 1, 1))] == values
    # A different secret or pool gives different values.
    assert AffinityCookie(CookieConfig(secret="other"), "web").value_for(bs[0]) != values[0]
    assert AffinityCookie(config, "api").value_for(bs[0]) != values[0]


def test_cookie_backend_for_round_trips() -> None:
    bs = make_backends((1, 1, 1))
    cookie = AffinityCookie(CookieConfig(secret="k"), "web")
    for b in bs:
        assert cookie.backend_for(cookie.value_for(b), bs) is b
    assert cookie.backend_for("0123456789abcdef", bs) is None
    assert cookie.backend_for("", bs) is None
    # A new backend list (reload) is re-indexed; values of the same addresses still resolve.
    reloaded = make_backends((1, 1, 1, 1))
    value = cookie.value_for(bs[2])
    assert cookie.backend_for(value, reloaded) is reloaded[2]
    assert cookie.backend_for(cookie.value_for(reloaded[3]), reloaded) is reloaded[3]
    assert cookie.backend_for(cookie.value_for(reloaded[3]), bs) is None


def test_cookie_set_cookie_header_value() -> None:
    (b,) = make_backends((1,))
    default = AffinityCookie(CookieConfig(secret="k"), "web")
    v = default.value_for(b)
    assert default.set_cookie_header_value(b) == (
        f"lbproxy_affinity={v}; Path=/; HttpOnly; SameSite=Lax".encode()
    )
    full = AffinityCookie(
        CookieConfig(
            name="srv", path="/app", max_age=3600, http_only=True, secure=True,
            same_site="None", secret="k",
        ),
        "web",
    )
    assert full.set_cookie_header_value(b) == (
        f"srv={v}; Path=/app; Max-Age=3600; HttpOnly; Secure; SameSite=None".encode()
    )
    bare = AffinityCookie(
        CookieConfig(name="s", path="", http_only=False, same_site=None, secret="k"), "web"
    )
    assert bare.set_cookie_header_value(b) == f"s={v}".encode()
    assert bare.set_cookie_header_value(b) is bare.set_cookie_header_value(b)  # cached


# --- registry --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("round_robin", RoundRobin),
        ("least_connections", LeastConnections),
        ("ip_hash", IpHash),
        ("random", RandomTwoChoices),
        ("cookie_affinity", CookieAffinity),
    ],
)
def test_registry_builtins(name: str, cls: type) -> None:
    assert name in BUILTIN_STRATEGIES
    assert resolve_strategy_class(name) is cls
    bs = make_backends((1, 1))
    strategy = create_strategy(name, bs)
    assert isinstance(strategy, cls)
    assert isinstance(strategy, Strategy)
    assert strategy.pick("192.0.2.1") in bs


USER_MODULE = '''
from __future__ import annotations


class FirstAvailable:
    """Always the first available backend."""

    def __init__(self, backends):
        self.backends = list(backends)

    def update(self, backends):
        self.backends = list(backends)

    def pick(self, key, exclude=()):
        for b in self.backends:
            if b.available and b not in exclude:
                return b
        return None


class Outer:
    Inner = FirstAvailable


class NoPick:
    def __init__(self, backends):
        pass

    def update(self, backends):
        pass


class Exploding(FirstAvailable):
    def __init__(self, backends):
        raise RuntimeError("boom")


not_a_class = 42
'''


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = "lbproxy_test_user_strategy"
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    broken = tmp_path / "lbproxy_test_broken_strategy.py"
    broken.write_text("raise RuntimeError('broken at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_registry_user_strategy(user_module: str) -> None:
    cls = resolve_strategy_class(f"{user_module}:FirstAvailable")
    assert cls.__name__ == "FirstAvailable"
    bs = make_backends((1, 1))
    strategy = create_strategy(f"{user_module}:FirstAvailable", bs)
    assert isinstance(strategy, Strategy)
    bs[0].force_state(BackendState.DRAINING)
    assert strategy.pick(None) is bs[1]
    assert resolve_strategy_class(f"{user_module}:Outer.Inner") is cls


def test_registry_unknown_name_suggests() -> None:
    with pytest.raises(ValueError) as info:
        resolve_strategy_class("round_robbin")
    assert str(info.value) == (
        "unknown strategy 'round_robbin' (did you mean 'round_robin'?); builtins are "
        "round_robin, least_connections, ip_hash, random, cookie_affinity, "
        "or use 'package.module:Class'"
    )
    with pytest.raises(ValueError, match=r"did you mean 'least_connections'"):
        resolve_strategy_class("least_connection")
    with pytest.raises(ValueError, match=r"did you mean 'mypkg.mod:Cls'"):
        resolve_strategy_class("mypkg.mod.Cls")
    with pytest.raises(ValueError) as info:
        resolve_strategy_class("zzz")
    assert "did you mean" not in str(info.value)
    assert str(info.value).startswith("unknown strategy 'zzz'; builtins are round_robin")


def test_registry_user_strategy_errors(user_module: str) -> None:
    with pytest.raises(
        ValueError, match=r"cannot import module 'no_such_module_xyz'.*ModuleNotFoundError"
    ):
        resolve_strategy_class("no_such_module_xyz:Cls")
    with pytest.raises(
        ValueError, match=r"cannot import module 'lbproxy_test_broken_strategy'.*broken at import"
    ):
        resolve_strategy_class("lbproxy_test_broken_strategy:Cls")
    with pytest.raises(ValueError, match=rf"module '{user_module}' has no attribute 'Missing'"):
        resolve_strategy_class(f"{user_module}:Missing")
    with pytest.raises(ValueError, match=r"'not_a_class' is a int, not a class"):
        resolve_strategy_class(f"{user_module}:not_a_class")
    with pytest.raises(ValueError, match=r"class 'NoPick' lacks method\(s\) pick;"):
        resolve_strategy_class(f"{user_module}:NoPick")
    with pytest.raises(ValueError, match=r"expected 'package.module:Class'"):
        resolve_strategy_class(f"{user_module}:")
    with pytest.raises(ValueError, match=r"expected 'package.module:Class'"):
        resolve_strategy_class(":Cls")
    with pytest.raises(ValueError, match=r"Exploding\(backends\) failed: RuntimeError: boom"):
        create_strategy(f"{user_module}:Exploding", make_backends((1,)))


def test_available_follows_acquire_release_state_and_limit_changes() -> None:
    (b,) = make_backends((1,), max_connections=2)
    assert b.available
    b.acquire()
    assert b.available
    b.acquire()
    assert not b.available, "at max_connections"
    b.release()
    assert b.available
    b.set_max_connections(1)
    assert not b.available, "a lower limit applies at once"
    b.set_max_connections(None)
    assert b.available
    b.force_state(BackendState.DRAINING)
    assert not b.available
    b.release()
    assert not b.available, "a release does not make an ineligible backend available"
    b.force_state(BackendState.HEALTHY)
    assert b.available
