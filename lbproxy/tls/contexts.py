"""SSL contexts built from config: server side (with SNI certificate choice) and upstream side.

``ServerTls`` has one stable *front* context (the one the listening socket was created with) and
one context per certificate. The front context's ``sni_callback`` runs for every handshake (with
``None`` when the client sends no SNI) and moves it to the context whose certificate names the
requested server (exact or wildcard), else to the default (the first certificate). ``reload``
builds the per-certificate contexts anew and swaps the list: the listening socket keeps its front
context, established connections keep their session, new handshakes get the new certificates.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from lbproxy.config.model import TlsCertificate, TlsServerConfig, UpstreamTlsConfig

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class TlsError(ValueError):
    """A certificate, key or CA file could not be used; the message names the file."""


def _server_context(cert: TlsCertificate, config: TlsServerConfig) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[config.min_version]
    try:
        context.load_cert_chain(cert.cert, cert.key)
    except FileNotFoundError as exc:
        raise TlsError(f"{exc.filename}: no such file") from exc
    except ssl.SSLError as exc:
        raise TlsError(f"{cert.cert} / {cert.key}: not a usable certificate and key: {exc.reason or exc}") from exc
    except OSError as exc:
        raise TlsError(f"{cert.cert}: {exc.strerror}") from exc
    if config.alpn:
        context.set_alpn_protocols(list(config.alpn))
    return context


def certificate_names(path: str) -> list[str]:
    """DNS names a PEM certificate is valid for (subjectAltName DNS entries, else the CN)."""
    try:
        decoded = ssl._ssl._test_decode_cert(path)  # type: ignore[attr-defined]
    except (ssl.SSLError, OSError) as exc:
        raise TlsError(f"{path}: not a readable PEM certificate: {exc}") from exc
    names = [value.lower() for kind, value in decoded.get("subjectAltName", ()) if kind == "DNS"]
    if not names:
        for rdn in decoded.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    names.append(value.lower())
    return names


@dataclass
class _Entry:
    names: list[str]
    context: ssl.SSLContext


class ServerTls:
    """The server-side TLS of one listener: certificates chosen by SNI, reloadable."""

    def __init__(self, config: TlsServerConfig) -> None:
        self.config = config
        self.entries: list[_Entry] = []
        self.handshakes = 0
        self.handshake_failures = 0
        self.reload(config)
        self.context = _server_context(config.certificates[0], config)  # the front context
        self.context.sni_callback = self._choose

    def reload(self, config: TlsServerConfig) -> None:
        """Build contexts for ``config``; raises TlsError (keeping the old ones) if a file is bad."""
        entries = [_Entry(certificate_names(c.cert), _server_context(c, config)) for c in config.certificates]
        self.config = config
        self.entries = entries
        if hasattr(self, "context"):
            self.context.minimum_version = _VERSIONS[config.min_version]

    def _choose(self, ssl_object: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext) -> None:
        self.handshakes += 1
        ssl_object.context = self.context_for(server_name)
        return None

    def context_for(self, server_name: str | None) -> ssl.SSLContext:
        """The context whose certificate covers ``server_name``, else the default one."""
        if server_name is not None:
            name = server_name.lower()
            for entry in self.entries:
                for pattern in entry.names:
                    if pattern == name:
                        return entry.context
                    if pattern.startswith("*.") and name.endswith(pattern[1:]) and name.count(".") == pattern.count("."):
                        return entry.context
        return self.entries[0].context


def upstream_context(config: UpstreamTlsConfig) -> ssl.SSLContext:
    """A client context for talking TLS to backends. Raises TlsError for an unusable CA file."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if config.ca_file is not None:
        try:
            context.load_verify_locations(cafile=config.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise TlsError(f"{config.ca_file}: not a usable CA file: {exc}") from exc
    if not config.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    return context
