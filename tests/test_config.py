"""Unit tests for lbproxy.config: parsing, defaults and every reported problem (no sockets)."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest

from lbproxy.config import Config, load_config, load_config_text
from lbproxy.config.model import (
    AccessLogConfig,
    Address,
    CookieConfig,
    HealthCheckConfig,
    HttpLimits,
    MatchConfig,
)
from lbproxy.config.values import parse_address, parse_cidr, parse_duration, parse_status_ranges
from lbproxy.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
SRC = "test.yaml"


def load(text: str) -> Config:
    return load_config_text(textwrap.dedent(text), source=SRC)


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(text)
    assert info.value.problems, "ConfigError without problems"
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def one_problem(text: str) -> str:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


def assert_problem(text: str, prefix: str, *fragments: str) -> str:
    """Exactly one problem, starting with ``prefix`` and containing every fragment."""
    problem = one_problem(text)
    assert problem.startswith(prefix), problem
    for fragment in fragments:
        assert fragment in problem, problem
    return problem


# A valid base: lines are 1-based as written (line 1 is "pools:").
BASE = """\
pools:
  web:
    backends:
      - 127.0.0.1:8001
listeners:
  - name: public
    bind: 127.0.0.1:8080
    routes:
      - pool: web
"""


# ------------------------------------------------------------------------------------------
# Example configurations


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_config_loads(path: Path) -> None:
    config = load_config(str(path))
    assert config.source == str(path)
    assert config.pools and config.listeners


def test_example_yaml_contents() -> None:
    config = load_config(str(CONFIG_DIR / "example.yaml"))
    assert config.admin is not None and config.admin.bind == Address("127.0.0.1", 9901)
    web = config.pools["web"]
    assert web.strategy == "round_robin"
    assert [(str(b.address), b.weight) for b in web.backends] == [
        ("127.0.0.1:8001", 1),
        ("127.0.0.1:8002", 2),
    ]
    public, raw = config.listeners
    assert public.mode == "http" and public.pool is None
    assert public.routes[0].match == MatchConfig(host="shop.example.com", path_prefix="/api/")
    assert public.routes[1].match == MatchConfig()
    assert raw.mode == "tcp" and raw.pool == "echo" and raw.routes == ()


def test_minimal_and_reference_configs_exist() -> None:
    for name in ("minimal.yaml", "lbproxy.yaml", "example.yaml"):
        assert (CONFIG_DIR / name).is_file()


# ------------------------------------------------------------------------------------------
# Defaults and shorthand forms


def test_defaults_applied() -> None:
    config = load(BASE)
    assert config.source == SRC
    assert config.admin is None
    assert config.access_log is None
    assert config.drain_timeout == 30.0
    assert config.shutdown_delay == 0.0
    pool = config.pools["web"]
    assert pool.name == "web"
    assert pool.strategy == "round_robin"
    assert pool.health_check is None
    assert (pool.connect_timeout, pool.response_timeout) == (5.0, 60.0)
    assert (pool.retries, pool.max_idle_connections, pool.idle_connection_timeout) == (2, 512, 60.0)
    assert pool.proxy_protocol is None
    assert pool.cookie == CookieConfig()
    backend = pool.backends[0]
    assert backend.address == Address("127.0.0.1", 8001)
    assert (backend.weight, backend.max_connections, backend.proxy_protocol) == (1, None, None)
    listener = config.listeners[0]
    assert listener.mode == "http"
    assert listener.max_connections == 10000
    assert listener.idle_timeout == 300.0
    assert listener.backlog == 1024
    assert listener.accept_sockets == 4
    assert listener.accept_proxy_protocol is False
    assert listener.proxy_protocol_from == ("127.0.0.0/8", "::1/128")
    assert listener.trusted_proxies == ()
    assert listener.limits == HttpLimits()
    assert listener.routes[0].name == "route0"
    assert listener.routes[0].match == MatchConfig()


def test_health_check_true_means_defaults_and_partial_mapping_fills_defaults() -> None:
    config = load(BASE.replace("    backends:\n", "    health_check: true\n    backends:\n"))
    assert config.pools["web"].health_check == HealthCheckConfig()
    config = load(
        BASE.replace(
            "    backends:\n",
            "    health_check: {type: http, interval: 500ms, path: /health, method: head}\n"
            "    backends:\n",
        )
    )
    check = config.pools["web"].health_check
    assert check is not None
    assert (check.type, check.interval, check.path, check.method) == ("http", 0.5, "/health", "HEAD")
    assert (check.timeout, check.healthy_threshold, check.unhealthy_threshold) == (1.0, 2, 3)
    assert check.expect_status == ((200, 399),)


def test_health_check_false_means_off() -> None:
    config = load(BASE.replace("    backends:\n", "    health_check: false\n    backends:\n"))
    assert config.pools["web"].health_check is None


def test_access_log_shorthand_and_mapping() -> None:
    assert load(BASE + "access_log: true\n").access_log == AccessLogConfig()
    assert load(BASE + "access_log: false\n").access_log is None
    log = load(BASE + "access_log: {format: json, path: /var/log/lbproxy.log}\n").access_log
    assert log == AccessLogConfig(format="json", path="/var/log/lbproxy.log")


def test_backend_string_shorthand_equals_mapping_form() -> None:
    short = load(BASE).pools["web"].backends
    long = load(BASE.replace("- 127.0.0.1:8001", "- address: 127.0.0.1:8001")).pools["web"].backends
    assert short == long


def test_full_values_are_converted() -> None:
    config = load(
        """\
        admin: {bind: "[::1]:0", token: s3cret}
        drain_timeout: 1m
        shutdown_delay: 250ms
        pools:
          web:
            strategy: cookie_affinity
            connect_timeout: 1.5s
            response_timeout: 2
            retries: 0
            proxy_protocol: v2
            cookie: {name: sid, max_age: 3600, secure: true, same_site: strict, secret: k}
            backends:
              - {address: "[2001:db8::1]:80", weight: 1000, max_connections: 5, proxy_protocol: v1}
              - backend.internal:8080
        listeners:
          - name: public
            bind: 0.0.0.0:0
            accept_proxy_protocol: true
            proxy_protocol_from: 10.1.2.3/8
            trusted_proxies: [192.168.0.0/16, "2001:db8::/32"]
            limits: {max_body_bytes: 1024, request_header_timeout: 5s}
            routes:
              - name: api
                match: {host: API.Example.COM, path: /exact}
                pool: web
        """
    )
    assert config.admin is not None
    assert config.admin.bind == Address("::1", 0) and config.admin.token == "s3cret"
    assert (config.drain_timeout, config.shutdown_delay) == (60.0, 0.25)
    pool = config.pools["web"]
    assert (pool.connect_timeout, pool.response_timeout, pool.retries) == (1.5, 2.0, 0)
    assert pool.proxy_protocol == "v2"
    assert pool.cookie == CookieConfig(
        name="sid", max_age=3600, secure=True, same_site="Strict", secret="k"
    )
    first, second = pool.backends
    assert first.address == Address("2001:db8::1", 80)
    assert str(first.address) == "[2001:db8::1]:80"
    assert (first.weight, first.max_connections, first.proxy_protocol) == (1000, 5, "v1")
    assert second.address == Address("backend.internal", 8080)
    listener = config.listeners[0]
    assert listener.bind == Address("0.0.0.0", 0)
    assert listener.accept_proxy_protocol is True
    assert listener.proxy_protocol_from == ("10.0.0.0/8",)
    assert listener.trusted_proxies == ("192.168.0.0/16", "2001:db8::/32")
    assert listener.limits.max_body_bytes == 1024
    assert listener.limits.request_header_timeout == 5.0
    route = listener.routes[0]
    assert route.name == "api"
    assert route.match == MatchConfig(host="api.example.com", path="/exact")


def test_same_site_null_omits_attribute() -> None:
    config = load(BASE.replace("    backends:\n", "    cookie: {same_site: null}\n    backends:\n"))
    assert config.pools["web"].cookie.same_site is None


def test_custom_strategy_class_is_accepted() -> None:
    text = BASE.replace("    backends:\n", "    strategy: lbproxy.balancing.round_robin:RoundRobin\n    backends:\n")
    assert load(text).pools["web"].strategy == "lbproxy.balancing.round_robin:RoundRobin"


def test_merge_keys_and_anchors_work() -> None:
    config = load(
        """\
        pools:
          web: &web
            connect_timeout: 3s
            backends: [127.0.0.1:8001]
          api:
            <<: *web
            retries: 5
        listeners:
          - {name: public, bind: 127.0.0.1:8080, routes: [{pool: api}]}
        """
    )
    assert config.pools["api"].connect_timeout == 3.0
    assert config.pools["api"].retries == 5


def test_config_is_frozen() -> None:
    config = load(BASE)
    with pytest.raises(AttributeError):
        config.drain_timeout = 1.0  # type: ignore[misc]


# ------------------------------------------------------------------------------------------
# File-level problems


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(str(missing))
    assert info.value.problems == [f"{missing}: cannot read: No such file or directory"]


def test_load_config_reports_file_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BASE.replace("8001", "99999"))
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert info.value.problems == [
        f"{path}:4: pools.web.backends[0]: port 99999 out of range 1-65535"
    ]


@pytest.mark.parametrize("text", ["", "\n\n", "# just a comment\n", "---\n", "{}\n"])
def test_empty_configuration(text: str) -> None:
    assert one_problem(text) == f"{SRC}:1: empty configuration"


def test_top_level_not_a_mapping() -> None:
    assert_problem("- a\n- b\n", f"{SRC}:1: ", "expected a mapping at the top level, got list")


def test_yaml_syntax_error() -> None:
    assert_problem(BASE + "drain_timeout: [1, 2\n", f"{SRC}:11: yaml: ")


def test_yaml_syntax_error_line_of_bad_indentation() -> None:
    text = "pools:\n  web:\n    backends: []\n   bad: 1\n"
    problem = one_problem(text)
    assert problem.startswith(f"{SRC}:4: yaml: "), problem


def test_unquoted_ipv6_gets_a_hint() -> None:
    text = BASE.replace("127.0.0.1:8080", "[::1]:8080")
    assert_problem(text, f"{SRC}:7: yaml: ", 'quote IPv6 addresses: "[::1]:8080"')


def test_unknown_yaml_tag() -> None:
    text = BASE.replace("bind: 127.0.0.1:8080", "bind: !weird 127.0.0.1:8080")
    assert_problem(text, f"{SRC}:7: listeners[0].bind: ", "!weird")


def test_duplicate_mapping_key() -> None:
    text = BASE.replace("  web:\n", "  web:\n    retries: 1\n    retries: 2\n")
    assert_problem(text, f"{SRC}:4: pools.web.retries: ", "duplicate key 'retries' (first at line 3)")


def test_duplicate_top_level_key() -> None:
    assert_problem(BASE + "drain_timeout: 1\ndrain_timeout: 2\n", f"{SRC}:11: drain_timeout: ", "duplicate key")


# ------------------------------------------------------------------------------------------
# Keys and types


def test_unknown_key_with_suggestion() -> None:
    text = BASE.replace("  web:\n", "  web:\n    strtegy: ip_hash\n")
    assert one_problem(text) == (
        f"{SRC}:3: pools.web.strtegy: unknown key 'strtegy' (did you mean 'strategy'?)"
    )


def test_unknown_key_without_close_match() -> None:
    problem = one_problem(BASE + "zzzz: 1\n")
    assert problem == f"{SRC}:10: zzzz: unknown key 'zzzz'"


def test_unknown_key_in_nested_section() -> None:
    text = BASE.replace("      - pool: web\n", "      - pool: web\n        match: {hots: a.com}\n")
    assert_problem(
        text, f"{SRC}:10: listeners[0].routes[0].match.hots: ", "did you mean 'host'?"
    )


def test_wrong_type_integer_got_string() -> None:
    text = BASE.replace("  web:\n", "  web:\n    retries: abc\n")
    assert one_problem(text) == f"{SRC}:3: pools.web.retries: expected an integer, got string 'abc'"


def test_yaml_bool_is_not_an_integer() -> None:
    text = BASE.replace("- 127.0.0.1:8001", "- {address: 127.0.0.1:8001, weight: true}")
    assert_problem(
        text, f"{SRC}:4: pools.web.backends[0].weight: ", "expected an integer, got boolean true"
    )


def test_wrong_type_bool() -> None:
    text = BASE + "    accept_proxy_protocol: yes please\n"
    assert_problem(
        text, f"{SRC}:10: listeners[0].accept_proxy_protocol: ", "expected true or false", "yes please"
    )


def test_wrong_type_section_not_a_mapping() -> None:
    text = BASE + "    limits: 5\n"
    assert_problem(text, f"{SRC}:10: listeners[0].limits: ", "expected a mapping, got integer 5")


def test_wrong_type_list_expected() -> None:
    text = BASE.replace("    backends:\n      - 127.0.0.1:8001\n", "    backends: 127.0.0.1:8001\n")
    assert_problem(text, f"{SRC}:3: pools.web.backends: ", "expected a list")


def test_missing_required_key_reports_parent_mapping_line() -> None:
    text = BASE.replace("    bind: 127.0.0.1:8080\n", "")
    assert one_problem(text) == f"{SRC}:6: listeners[0].bind: missing required key 'bind'"


def test_missing_backend_address() -> None:
    text = BASE.replace("- 127.0.0.1:8001", "- {weight: 2}")
    assert_problem(text, f"{SRC}:4: pools.web.backends[0].address: ", "missing required key 'address'")


def test_missing_pools_and_listeners() -> None:
    found = problems("drain_timeout: 5\n")
    assert f"{SRC}:1: pools: missing required key 'pools'" in found
    assert f"{SRC}:1: listeners: missing required key 'listeners'" in found


def test_missing_listener_name() -> None:
    text = BASE.replace("  - name: public\n    bind", "  - bind")
    assert_problem(text, f"{SRC}:6: listeners[0].name: ", "missing required key 'name'")


# ------------------------------------------------------------------------------------------
# Addresses and binds


def test_malformed_backend_address() -> None:
    text = BASE.replace("- 127.0.0.1:8001", "- address: not an address")
    assert one_problem(text) == (
        f"{SRC}:4: pools.web.backends[0].address: malformed address 'not an address': "
        "expected host:port or [ipv6]:port"
    )


def test_bad_host_name() -> None:
    text = BASE.replace("127.0.0.1:8080", "bad_host!:8080")
    assert_problem(text, f"{SRC}:7: listeners[0].bind: ", "malformed address 'bad_host!:8080'")


def test_unbracketed_ipv6_address() -> None:
    text = BASE.replace("- 127.0.0.1:8001", '- "::1:8001"')
    assert_problem(text, f"{SRC}:4: pools.web.backends[0]: ", "must be bracketed")


def test_backend_port_out_of_range() -> None:
    text = BASE.replace("- 127.0.0.1:8001", "- address: 127.0.0.1:70000")
    assert one_problem(text) == (
        f"{SRC}:4: pools.web.backends[0].address: port 70000 out of range 1-65535"
    )


def test_backend_port_zero_not_allowed() -> None:
    text = BASE.replace("127.0.0.1:8001", "127.0.0.1:0")
    assert_problem(text, f"{SRC}:4: pools.web.backends[0]: ", "port 0 out of range 1-65535")


def test_listener_port_out_of_range() -> None:
    text = BASE.replace("127.0.0.1:8080", "127.0.0.1:65536")
    assert_problem(text, f"{SRC}:7: listeners[0].bind: ", "port 65536 out of range 0-65535")


def test_two_listeners_same_bind() -> None:
    text = BASE + "  - {name: other, bind: 127.0.0.1:8080, routes: [{pool: web}]}\n"
    assert_problem(
        text, f"{SRC}:10: listeners[1].bind: ", "127.0.0.1:8080", "listener 'public'", "line 7"
    )


def test_listener_clashes_with_admin() -> None:
    text = "admin:\n  bind: 127.0.0.1:8080\n" + BASE
    assert_problem(text, f"{SRC}:9: listeners[0].bind: ", "the admin listener", "line 2")


@pytest.mark.parametrize("wildcard", ["0.0.0.0:8080", '"[::]:8080"'])
def test_wildcard_bind_clashes_with_any_host(wildcard: str) -> None:
    text = BASE + f"  - {{name: other, bind: {wildcard}, routes: [{{pool: web}}]}}\n"
    assert_problem(text, f"{SRC}:10: listeners[1].bind: ", "clashes with listener 'public'")


def test_port_zero_binds_never_clash() -> None:
    text = BASE.replace("127.0.0.1:8080", "127.0.0.1:0")
    text += "  - {name: other, bind: 127.0.0.1:0, routes: [{pool: web}]}\n"
    text += "admin: {bind: 0.0.0.0:0}\n"
    config = load(text)
    assert [l.bind.port for l in config.listeners] == [0, 0]


def test_different_ports_do_not_clash() -> None:
    text = BASE + "  - {name: other, bind: 0.0.0.0:8081, routes: [{pool: web}]}\n"
    assert len(load(text).listeners) == 2


# ------------------------------------------------------------------------------------------
# Pools and strategies


def test_undefined_pool_in_route_with_suggestion() -> None:
    text = BASE.replace("      - pool: web\n", "      - pool: wbe\n")
    assert one_problem(text) == (
        f"{SRC}:9: listeners[0].routes[0].pool: undefined pool 'wbe' (did you mean 'web'?)"
    )


def test_undefined_pool_in_tcp_listener() -> None:
    text = BASE + "  - {name: raw, bind: 127.0.0.1:7000, mode: tcp, pool: webb}\n"
    assert_problem(text, f"{SRC}:10: listeners[1].pool: ", "undefined pool 'webb' (did you mean 'web'?)")


def test_unknown_builtin_strategy_with_suggestion() -> None:
    text = BASE.replace("  web:\n", "  web:\n    strategy: round_robbin\n")
    assert_problem(
        text, f"{SRC}:3: pools.web.strategy: ", "unknown strategy 'round_robbin'", "round_robin"
    )


def test_unimportable_strategy_class() -> None:
    text = BASE.replace("  web:\n", "  web:\n    strategy: no_such_pkg.mod:Cls\n")
    assert_problem(text, f"{SRC}:3: pools.web.strategy: ", "no_such_pkg.mod:Cls")


def test_strategy_attribute_missing() -> None:
    text = BASE.replace("  web:\n", "  web:\n    strategy: lbproxy.balancing.round_robin:Nope\n")
    assert_problem(text, f"{SRC}:3: pools.web.strategy: ", "Nope")


def test_cookie_affinity_pool_on_tcp_listener() -> None:
    text = BASE.replace("  web:\n", "  web:\n    strategy: cookie_affinity\n")
    text += "  - {name: raw, bind: 127.0.0.1:7000, mode: tcp, pool: web}\n"
    assert_problem(text, f"{SRC}:11: listeners[1].pool: ", "cookie_affinity", "tcp")


def test_cookie_affinity_pool_on_http_listener_is_fine() -> None:
    text = BASE.replace("  web:\n", "  web:\n    strategy: cookie_affinity\n")
    assert load(text).pools["web"].strategy == "cookie_affinity"


def test_pool_with_empty_backends() -> None:
    text = BASE.replace("    backends:\n      - 127.0.0.1:8001\n", "    backends: []\n")
    assert_problem(text, f"{SRC}:3: pools.web.backends: ", "at least one backend")


def test_pool_without_backends() -> None:
    text = BASE.replace("    backends:\n      - 127.0.0.1:8001\n", "    retries: 1\n")
    assert_problem(text, f"{SRC}:3: pools.web.backends: ", "missing required key 'backends'")


def test_duplicate_backend() -> None:
    text = BASE.replace("      - 127.0.0.1:8001\n", "      - 127.0.0.1:8001\n      - 127.0.0.1:8001\n")
    assert_problem(text, f"{SRC}:5: pools.web.backends[1]: ", "duplicate backend 127.0.0.1:8001")


@pytest.mark.parametrize("weight", [0, 1001, -1])
def test_weight_out_of_range(weight: int) -> None:
    text = BASE.replace("- 127.0.0.1:8001", f"- {{address: 127.0.0.1:8001, weight: {weight}}}")
    assert_problem(text, f"{SRC}:4: pools.web.backends[0].weight: ", "between 1 and 1000", str(weight))


def test_invalid_pool_name() -> None:
    text = BASE.replace("  web:", "  'web pool':").replace("pool: web", "pool: web pool")
    problem = problems(text)[0]
    assert problem.startswith(f"{SRC}:2: pools.web pool: invalid name"), problem


def test_empty_pools_and_listeners() -> None:
    found = problems("pools: {}\nlisteners: []\n")
    assert found == [
        f"{SRC}:1: pools: at least one pool is required",
        f"{SRC}:2: listeners: at least one listener is required",
    ]


# ------------------------------------------------------------------------------------------
# Listener shape


def test_duplicate_listener_names() -> None:
    text = BASE + "  - {name: public, bind: 127.0.0.1:8081, routes: [{pool: web}]}\n"
    assert one_problem(text) == (
        f"{SRC}:10: listeners[1].name: duplicate listener name 'public' (first at line 6)"
    )


def test_invalid_mode() -> None:
    text = BASE.replace("    bind: 127.0.0.1:8080\n", "    bind: 127.0.0.1:8080\n    mode: udp\n")
    assert_problem(text, f"{SRC}:8: listeners[0].mode: ", "expected one of http, tcp", "'udp'")


def test_tcp_listener_with_routes() -> None:
    text = BASE.replace("    bind: 127.0.0.1:8080\n", "    bind: 127.0.0.1:8080\n    mode: tcp\n    pool: web\n")
    assert_problem(text, f"{SRC}:10: listeners[0].routes: ", "tcp listener cannot have routes")


def test_tcp_listener_without_pool() -> None:
    text = BASE + "  - name: raw\n    bind: 127.0.0.1:7000\n    mode: tcp\n"
    assert_problem(text, f"{SRC}:10: listeners[1].pool: ", "missing required key 'pool'")


def test_http_listener_without_routes() -> None:
    text = BASE + "  - name: api\n    bind: 127.0.0.1:7000\n"
    assert_problem(text, f"{SRC}:10: listeners[1].routes: ", "missing required key 'routes'")


def test_http_listener_with_empty_routes() -> None:
    text = BASE + "  - {name: api, bind: 127.0.0.1:7000, routes: []}\n"
    assert_problem(text, f"{SRC}:10: listeners[1].routes: ", "at least one route")


def test_http_listener_with_pool() -> None:
    text = BASE.replace("    routes:\n", "    pool: web\n    routes:\n")
    assert_problem(text, f"{SRC}:8: listeners[0].pool: ", "http listener cannot have 'pool'")


@pytest.mark.parametrize("key", ["path_prefix", "path"])
def test_match_paths_must_start_with_slash(key: str) -> None:
    text = BASE.replace("      - pool: web\n", f"      - pool: web\n        match: {{{key}: api}}\n")
    assert_problem(text, f"{SRC}:10: listeners[0].routes[0].match.{key}: ", "must start with '/'")


def test_invalid_match_host() -> None:
    text = BASE.replace("      - pool: web\n", "      - pool: web\n        match: {host: 'a b.com'}\n")
    assert_problem(text, f"{SRC}:10: listeners[0].routes[0].match.host: ", "invalid host")


def test_invalid_trusted_proxy_cidr() -> None:
    text = BASE + "    trusted_proxies: [10.0.0.0/33]\n"
    assert_problem(text, f"{SRC}:10: listeners[0].trusted_proxies: ", "invalid CIDR network '10.0.0.0/33'")


# ------------------------------------------------------------------------------------------
# Timeouts, health checks, enumerations


@pytest.mark.parametrize(
    ("key", "value"),
    [("connect_timeout", "0"), ("response_timeout", "-1"), ("idle_connection_timeout", "0s")],
)
def test_pool_timeouts_must_be_positive(key: str, value: str) -> None:
    text = BASE.replace("  web:\n", f"  web:\n    {key}: {value}\n")
    assert_problem(text, f"{SRC}:3: pools.web.{key}: ")


@pytest.mark.parametrize(
    "key", ["request_header_timeout", "keepalive_timeout", "client_timeout"]
)
def test_limit_timeouts_must_be_positive(key: str) -> None:
    text = BASE + f"    limits: {{{key}: 0}}\n"
    assert_problem(text, f"{SRC}:10: listeners[0].limits.{key}: ", "must be greater than 0")


def test_listener_idle_timeout_must_be_positive() -> None:
    text = BASE + "    idle_timeout: 0\n"
    assert_problem(text, f"{SRC}:10: listeners[0].idle_timeout: ", "must be greater than 0")


def test_drain_timeout_may_be_zero_but_not_negative() -> None:
    assert load(BASE + "drain_timeout: 0\n").drain_timeout == 0.0
    assert_problem(BASE + "drain_timeout: -5\n", f"{SRC}:10: drain_timeout: ", "must not be negative")


def test_bad_duration_string() -> None:
    assert_problem(BASE + "shutdown_delay: 5 minutes\n", f"{SRC}:10: shutdown_delay: ", "invalid duration")


@pytest.mark.parametrize("key", ["healthy_threshold", "unhealthy_threshold"])
def test_health_check_thresholds_at_least_one(key: str) -> None:
    text = BASE.replace("    backends:\n", f"    health_check: {{{key}: 0}}\n    backends:\n")
    assert_problem(text, f"{SRC}:3: pools.web.health_check.{key}: ", "at least 1")


@pytest.mark.parametrize("key", ["interval", "timeout"])
def test_health_check_interval_and_timeout_positive(key: str) -> None:
    text = BASE.replace("    backends:\n", f"    health_check:\n      {key}: 0\n    backends:\n")
    assert_problem(text, f"{SRC}:4: pools.web.health_check.{key}: ", "greater than 0")


def test_health_check_bad_status_range() -> None:
    text = BASE.replace("    backends:\n", "    health_check: {expect_status: 200-700}\n    backends:\n")
    assert_problem(text, f"{SRC}:3: pools.web.health_check.expect_status: ", "status 700 out of range")


def test_health_check_bad_type() -> None:
    text = BASE.replace("    backends:\n", "    health_check: {type: htp}\n    backends:\n")
    assert_problem(text, f"{SRC}:3: pools.web.health_check.type: ", "did you mean 'http'?")


@pytest.mark.parametrize("where", ["pool", "backend"])
def test_proxy_protocol_version(where: str) -> None:
    if where == "pool":
        text = BASE.replace("  web:\n", "  web:\n    proxy_protocol: v3\n")
        prefix = f"{SRC}:3: pools.web.proxy_protocol: "
    else:
        text = BASE.replace("- 127.0.0.1:8001", "- {address: 127.0.0.1:8001, proxy_protocol: 2}")
        prefix = f"{SRC}:4: pools.web.backends[0].proxy_protocol: "
    assert_problem(text, prefix, "expected one of v1, v2")


def test_same_site_values() -> None:
    text = BASE.replace("    backends:\n", "    cookie: {same_site: Sometimes}\n    backends:\n")
    assert_problem(text, f"{SRC}:3: pools.web.cookie.same_site: ", "expected one of Strict, Lax, None")


def test_access_log_format() -> None:
    assert_problem(
        BASE + "access_log: {format: xml}\n",
        f"{SRC}:10: access_log.format: ",
        "expected one of combined, json",
    )


def test_admin_binds_to_loopback_by_default() -> None:
    for text in (BASE + "admin: {token: abc}\n", BASE + "admin: true\n"):
        config = load_config_text(text, SRC)
        assert config.admin is not None and config.admin.bind == Address("127.0.0.1", 9901)
    assert load_config_text(BASE + "admin: false\n", SRC).admin is None


# ------------------------------------------------------------------------------------------
# Many problems at once


def test_all_problems_reported_together_in_line_order() -> None:
    text = """\
        admin:
          bind: 127.0.0.1:9901
        pools:
          web:
            strtegy: round_robin
            backends:
              - address: 127.0.0.1:70000
                weight: 0
        listeners:
          - name: public
            bind: 127.0.0.1:9901
            routes:
              - pool: wbe
          - name: public
            mode: tcp
            pool: web
        drain_timeout: soon
        """
    found = problems(text)
    assert found == [
        f"{SRC}:5: pools.web.strtegy: unknown key 'strtegy' (did you mean 'strategy'?)",
        f"{SRC}:7: pools.web.backends[0].address: port 70000 out of range 1-65535",
        f"{SRC}:8: pools.web.backends[0].weight: must be between 1 and 1000, got 0",
        f"{SRC}:11: listeners[0].bind: address 127.0.0.1:9901 clashes with the admin listener "
        "on 127.0.0.1:9901 (line 2)",
        f"{SRC}:13: listeners[0].routes[0].pool: undefined pool 'wbe' (did you mean 'web'?)",
        f"{SRC}:14: listeners[1].name: duplicate listener name 'public' (first at line 10)",
        f"{SRC}:14: listeners[1].bind: missing required key 'bind'",
        f"{SRC}:17: drain_timeout: invalid duration 'soon': expected a number with an optional "
        "unit ms, s, m or h (e.g. '250ms', '2s', '5m')",
    ]


# ------------------------------------------------------------------------------------------
# values.py


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:80", Address("127.0.0.1", 80)),
        ("example.com:443", Address("example.com", 443)),
        ("Backend-1.Internal:8080", Address("backend-1.internal", 8080)),
        ("localhost:65535", Address("localhost", 65535)),
        ("[::1]:8080", Address("::1", 8080)),
        ("[2001:db8::10]:80", Address("2001:db8::10", 80)),
        ("[::]:1", Address("::", 1)),
    ],
)
def test_parse_address_ok(text: str, expected: Address) -> None:
    assert parse_address(text, allow_port_zero=False) == expected


def test_parse_address_port_zero() -> None:
    assert parse_address("0.0.0.0:0", allow_port_zero=True) == Address("0.0.0.0", 0)
    with pytest.raises(ValueError, match=r"port 0 out of range 1-65535"):
        parse_address("0.0.0.0:0", allow_port_zero=False)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("127.0.0.1", "expected host:port or \\[ipv6\\]:port"),
        ("127.0.0.1:", "is not a number"),
        (":80", "missing host"),
        ("::1:80", "must be bracketed"),
        ("[::1]80", "expected host:port"),
        ("[not-v6]:80", "not a valid IPv6 address"),
        ("256.1.1.1:80", "not a valid IPv4 address"),
        ("exa mple.com:80", "neither an IP address nor a valid host name"),
        ("-bad.com:80", "neither an IP address"),
        ("host:70000", "port 70000 out of range 1-65535"),
        ("host:-1", "is not a number"),
        ("host:8o", "is not a number"),
    ],
)
def test_parse_address_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_address(text, allow_port_zero=False)


def test_parse_address_rejects_non_strings() -> None:
    with pytest.raises(ValueError, match="expected an address string"):
        parse_address(8080, allow_port_zero=True)  # type: ignore[arg-type]


def test_address_str_round_trip() -> None:
    for text in ("127.0.0.1:80", "[::1]:443", "example.com:8080"):
        assert str(parse_address(text, allow_port_zero=False)) == text


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0),
        (5, 5.0),
        (1.5, 1.5),
        ("250ms", 0.25),
        ("2s", 2.0),
        ("1.5s", 1.5),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("10", 10.0),
        (" 3s ", 3.0),
    ],
)
def test_parse_duration_ok(value: object, seconds: float) -> None:
    assert math.isclose(parse_duration(value), seconds)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "got boolean true"),
        (None, "got null"),
        ([1], "got list"),
        (-1, "must not be negative"),
        ("-2s", "must not be negative"),
        ("2d", "invalid duration"),
        ("ms", "invalid duration"),
        ("", "invalid duration"),
        (float("inf"), "finite"),
        (float("nan"), "finite"),
    ],
)
def test_parse_duration_errors(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_duration(value)


@pytest.mark.parametrize(
    ("value", "ranges"),
    [
        (200, ((200, 200),)),
        ("204", ((204, 204),)),
        ("200-399", ((200, 399),)),
        ([200, "300-302", 404], ((200, 200), (300, 302), (404, 404))),
    ],
)
def test_parse_status_ranges_ok(value: object, ranges: tuple[tuple[int, int], ...]) -> None:
    assert parse_status_ranges(value) == ranges


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (99, "status 99 out of range 100-599"),
        (600, "status 600 out of range"),
        ("399-200", "399 is greater than 200"),
        ("2xx", "invalid status code"),
        ([], "at least one"),
        (True, "boolean"),
        (2.5, "float"),
    ],
)
def test_parse_status_ranges_errors(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_status_ranges(value)


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("10.1.2.3/8", "10.0.0.0/8"),
        ("192.168.1.1", "192.168.1.1/32"),
        ("::1/128", "::1/128"),
        ("2001:DB8::1/32", "2001:db8::/32"),
    ],
)
def test_parse_cidr(text: str, normal: str) -> None:
    assert parse_cidr(text) == normal


@pytest.mark.parametrize("text", ["10.0.0.0/33", "nope", "", 5])
def test_parse_cidr_errors(text: object) -> None:
    with pytest.raises(ValueError):
        parse_cidr(text)


@pytest.mark.parametrize("value", ["0", "65", "two"])
def test_accept_sockets_out_of_range_is_refused_with_its_line(value: str) -> None:
    assert_problem(BASE + f"    accept_sockets: {value}\n", f"{SRC}:10: ", "accept_sockets")


def test_accept_sockets_on_a_dns_listener_is_refused() -> None:
    text = BASE + """\
  - name: names
    bind: 127.0.0.1:5353
    mode: dns
    zone: svc.test
    records: {web: web}
    accept_sockets: 2
"""
    assert_problem(text, f"{SRC}:15: ", "'accept_sockets' is for tcp and http listeners")
