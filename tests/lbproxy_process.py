"""``python -m lbproxy run`` as a real process for tests: its stderr collected, its admin at hand.

Only the PIDs a test started are signalled (the supervisor; a test that kills a worker checks it
is a child of that supervisor first).
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from tests.client import Response, fetch
from tests.conftest import ROOT

LISTENING = re.compile(r"listener (\S+) \((\w+)\) on (\S+):(\d+)")
ADMIN = re.compile(r"admin listener on (\S+):(\d+)")


class LbProcess:
    """A running lbproxy process; ``lines`` is everything it wrote to stderr so far."""

    def __init__(self, proc: asyncio.subprocess.Process, config: Path) -> None:
        self.proc = proc
        self.config = config
        self.lines: list[str] = []
        self.addresses: dict[str, tuple[str, int]] = {}
        self.admin: tuple[str, int] | None = None
        self._new_line = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def start(cls, config: Path, *args: str, timeout: float = 30) -> LbProcess:
        """Start lbproxy and wait until it says it is running (fails if it exits first)."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "lbproxy", "run", "-c", str(config), *args,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
        )  # fmt: skip
        process = cls(proc, config)
        try:
            await process.wait_line("running:", timeout=timeout)
        except BaseException:
            await process.stop(signal.SIGKILL)
            raise
        return process

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while True:
            raw = await self.proc.stderr.readline()
            if not raw:
                break
            line = raw.decode(errors="replace")
            self.lines.append(line)
            if (match := LISTENING.search(line)) is not None:
                self.addresses[match.group(1)] = (match.group(3), int(match.group(4)))
            if (match := ADMIN.search(line)) is not None:
                self.admin = (match.group(1), int(match.group(2)))
            self._new_line.set()
        self._new_line.set()

    async def wait_line(self, needle: str, timeout: float = 10, after: int = 0) -> str:
        """The first line (from index ``after``) containing ``needle``; fails after ``timeout``."""
        async with asyncio.timeout(timeout):
            index = after
            while True:
                while index < len(self.lines):
                    if needle in self.lines[index]:
                        return self.lines[index]
                    index += 1
                if self._reader.done():
                    raise AssertionError(f"lbproxy exited without saying {needle!r}:\n{''.join(self.lines)}")
                self._new_line.clear()
                await self._new_line.wait()

    def address(self, name: str = "public") -> tuple[str, int]:
        return self.addresses[name]

    async def get(self, path: str) -> Response:
        assert self.admin is not None, "no admin listener"
        return await fetch(*self.admin, path=path)

    async def post(self, path: str) -> Response:
        assert self.admin is not None, "no admin listener"
        return await fetch(*self.admin, "POST", path, body=b"")

    async def status(self) -> Any:
        return (await self.get("/status")).json()

    async def served(self) -> list[int]:
        """Requests each worker has answered so far (from /status)."""
        return [w.get("requests_total", 0) for w in (await self.status())["workers"]]

    async def requests_from_every_worker(self, listener: str = "public", limit: int = 300) -> Counter[str]:
        """Send requests (a fresh connection each) until every worker has answered at least one
        more than before; returns which backend answered each. Fails after ``limit`` requests.

        With one shared listening socket, the worker that wins each accept is up to the kernel:
        under light load one worker may win most of them, so this keeps going until both did.
        """
        before = await self.served()
        backends: Counter[str] = Counter()
        while sum(backends.values()) < limit:
            for _ in range(10):
                response = await fetch(*self.address(listener))
                assert response.status == 200, response
                backends[response.json()["backend"]] += 1
            if all(after > b for after, b in zip(await self.served(), before)):
                return backends
        raise AssertionError(f"{limit} requests did not reach every worker: {await self.served()} (was {before})")

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Signal the process (if it still runs) and wait for it; SIGKILL if it overstays."""
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        try:
            async with asyncio.timeout(timeout):
                code = await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            code = await self.proc.wait()
        async with asyncio.timeout(5):
            await self._reader
        return code
