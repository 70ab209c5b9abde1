"""TLS pieces as units: SNI from real ClientHellos, certificate choice, config errors naming files."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lbproxy.config.loader import load_config_text
from lbproxy.errors import ConfigError
from lbproxy.tls.clienthello import NotTls, match_server_name, read_sni
from tests.certs import LocalCA


def client_hello(server_name: str | None) -> bytes:
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_reads_sni_from_a_real_client_hello_in_pieces() -> None:
    hello = client_hello("API.Shop.Test")
    for cut in (0, 1, 4, 5, 40, len(hello) - 1):
        assert read_sni(hello[:cut]) == (False, None)
    assert read_sni(hello) == (True, "api.shop.test")
    assert read_sni(hello + b"trailing application data") == (True, "api.shop.test")


def test_client_hello_without_sni() -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    assert read_sni(outgoing.read()) == (True, None)


def test_not_tls() -> None:
    with pytest.raises(NotTls):
        read_sni(b"GET / HTTP/1.1\r\n")
    with pytest.raises(NotTls):
        read_sni(b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00")


_FUZZ_HELLO: list[bytes] = []


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(min_value=0, max_value=600))
def test_read_sni_fuzz(noise: bytes, cut: int) -> None:
    if not _FUZZ_HELLO:
        _FUZZ_HELLO.append(client_hello("fuzz.test"))
    hello = _FUZZ_HELLO[0]
    data = hello[:cut] + noise
    try:
        complete, name = read_sni(data)
    except NotTls:
        return
    assert name is None or isinstance(name, str)


def test_match_server_name() -> None:
    patterns = [("api.shop.test", "api"), ("*.shop.test", "shop"), ("other.test", "other")]
    assert match_server_name("api.shop.test", patterns) == "api"
    assert match_server_name("www.shop.test", patterns) == "shop"
    assert match_server_name("shop.test", patterns) is None
    assert match_server_name(None, patterns) is None


def test_bad_certificate_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    ca = LocalCA(tmp_path / "ca")
    good = ca.issue("shop.test")
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    base = (
        "pools:\n  web: {backends: ['127.0.0.1:1']}\n"
        "listeners:\n  - name: https\n    bind: 127.0.0.1:0\n    routes: [{pool: web}]\n"
        "    tls:\n      certificates:\n        - {cert: CERT, key: KEY}\n"
    )
    config = load_config_text(base.replace("CERT", str(good.cert)).replace("KEY", str(good.key)), "lb.yaml")
    assert config.listeners[0].tls is not None
    for cert, key, expected in (
        (str(broken), str(good.key), str(broken)),
        (str(tmp_path / "missing.pem"), str(good.key), "missing.pem"),
        (str(good.cert), str(ca.key), "not a usable certificate and key"),
    ):
        with pytest.raises(ConfigError) as err:
            load_config_text(base.replace("CERT", cert).replace("KEY", key), "lb.yaml")
        (problem,) = err.value.problems
        assert problem.startswith("lb.yaml:8: listeners[0].tls.certificates: ") and expected in problem, problem


def test_tls_keys_only_where_they_belong() -> None:
    text = (
        "pools:\n  web: {backends: ['127.0.0.1:1']}\n"
        "listeners:\n  - {name: t, bind: 127.0.0.1:0, mode: tcp, pool: web, redirect_https: true}\n"
        "  - {name: h, bind: 127.0.0.1:0, routes: [{pool: web}], sni_routes: []}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config_text(text, "lb.yaml")
    assert any("redirect_https" in p for p in err.value.problems)
    assert any("'sni_routes' is for tcp listeners" in p for p in err.value.problems)
