"""A local CA and certificates for tests, made with the openssl command line."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class Cert:
    cert: Path
    key: Path


def _run(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


class LocalCA:
    """``ca.issue(name, *alt_names)`` returns a certificate signed by this CA (``ca.cert``)."""

    def __init__(self, directory: Path) -> None:
        if shutil.which("openssl") is None:
            pytest.fail("openssl is required (installed by .ci/run)")
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cert = self.dir / "ca.pem"
        self.key = self.dir / "ca.key"
        _run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(self.key), "-out", str(self.cert), "-days", "2", "-subj", "/CN=lbproxy test CA",
             cwd=self.dir)  # fmt: skip

    def issue(self, name: str, *alt_names: str) -> Cert:
        stem = name.replace("*", "wildcard")
        key = self.dir / f"{stem}.key"
        csr = self.dir / f"{stem}.csr"
        cert = self.dir / f"{stem}.pem"
        ext = self.dir / f"{stem}.ext"
        names = [name, *alt_names]
        ext.write_text("subjectAltName=" + ",".join(
            f"IP:{n}" if n.replace(".", "").isdigit() or ":" in n else f"DNS:{n}" for n in names) + "\n")  # fmt: skip
        _run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}", cwd=self.dir)  # fmt: skip
        _run("x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key), "-CAcreateserial",
             "-out", str(cert), "-days", "2", "-extfile", str(ext), cwd=self.dir)  # fmt: skip
        return Cert(cert, key)
