"""A managed engine process: the service starts an engine server (``vllm serve`` or any
command), waits for its health endpoint, routes to it as an upstream, restarts it with
exponential backoff when it dies, and stops it on shutdown (SIGTERM, then SIGKILL after a
grace period). The supervisor is generic over the command.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator

import httpx2

from vllm_service.engine.base import (
    EngineError,
    EngineHealth,
    EngineState,
    EngineUnavailableError,
    GenerationRequest,
    ModelCard,
    TokenDelta,
)
from vllm_service.engine.capabilities import Embeddings
from vllm_service.engine.options import ProcessOptions, SamplingDefaultsConfig, UpstreamOptions
from vllm_service.engine.upstream import UpstreamEngine

logger = logging.getLogger(__name__)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ProcessEngine:
    """Supervises one engine server process and forwards requests to it."""

    def __init__(
        self,
        name: str,
        options: ProcessOptions,
        defaults: SamplingDefaultsConfig | None = None,
    ) -> None:
        self.name = name
        self.options = options
        self.port = options.port or _free_port()
        self.argv = options.argv(self.port)
        self._upstream = UpstreamEngine(
            name,
            UpstreamOptions(
                base_url=f"http://127.0.0.1:{self.port}/v1",
                model=options.served_model,
                read_timeout=options.read_timeout,
                max_model_len=options.max_model_len,
            ),
            defaults,
        )
        self._process: asyncio.subprocess.Process | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._state: EngineState = "starting"
        self._stopping = False
        self.restarts = 0
        self.last_exit: int | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Launch the process; also after ``stop()`` (the manager unloads and reloads it)."""
        self._stopping = False
        self._state = "starting"
        await self._upstream.start()
        try:
            await self._launch()
        except BaseException:
            self._state = "failed"
            await self._terminate()
            raise
        self._state = "ready"
        self._watcher = asyncio.create_task(self._watch(), name=f"supervise {self.name}")

    async def _launch(self) -> None:
        """Start the process and wait until its health endpoint answers 200."""
        logger.info("starting %s: %s", self.name, " ".join(self.argv))
        self._process = await asyncio.create_subprocess_exec(*self.argv, start_new_session=True)
        deadline = time.monotonic() + self.options.startup_timeout
        url = f"http://127.0.0.1:{self.port}{self.options.health_path}"
        async with httpx2.AsyncClient(timeout=2.0) as client:
            while True:
                if self._process.returncode is not None:
                    raise EngineError(
                        f"{self.argv[0]} exited with status {self._process.returncode} "
                        "before it was healthy"
                    )
                try:
                    if (await client.get(url)).status_code == 200:
                        return
                except httpx2.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise EngineError(
                        f"{self.argv[0]} was not healthy after {self.options.startup_timeout:g} s"
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._process.wait(), timeout=0.2)

    async def _watch(self) -> None:
        """Restart the process whenever it exits, with exponential backoff."""
        backoff = self.options.restart_backoff
        while not self._stopping:
            assert self._process is not None
            self.last_exit = await self._process.wait()
            if self._stopping:
                return
            self._state = "starting"
            self.restarts += 1
            logger.error(
                "%s exited with status %s; restart %d in %.1f s",
                self.name,
                self.last_exit,
                self.restarts,
                backoff,
            )
            await asyncio.sleep(backoff)
            try:
                await self._launch()
            except EngineError as exc:
                logger.error("restart of %s failed: %s", self.name, exc)
                await self._terminate()
                backoff = min(backoff * 2, self.options.restart_backoff_max)
                continue
            self._state = "ready"
            backoff = self.options.restart_backoff

    async def _terminate(self) -> None:
        process = self._process
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout=self.options.stop_grace)
        except TimeoutError:
            logger.warning(
                "%s ignored SIGTERM for %.0f s: SIGKILL", self.name, self.options.stop_grace
            )
            process.kill()
            await process.wait()

    async def stop(self) -> None:
        failed = self._state == "failed"
        self._stopping = True
        self._state = "stopping"
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        await self._terminate()
        await self._upstream.stop()
        self._state = "failed" if failed else "unloaded"

    # -- the contract -------------------------------------------------------------------------

    def models(self) -> list[ModelCard]:
        return self._upstream.models()

    async def health(self) -> EngineHealth:
        process = self._process
        return EngineHealth(
            state=self._state,
            device="process",
            info={
                "command": " ".join(self.argv),
                "port": self.port,
                "pid": process.pid if process is not None and process.returncode is None else 0,
                "restarts": self.restarts,
                "last_exit": self.last_exit if self.last_exit is not None else "",
            },
        )

    async def embed(
        self, texts: list[str], *, dimensions: int | None, max_total_tokens: int
    ) -> Embeddings:
        """The managed server's /embeddings (when it serves them)."""
        if self._state != "ready":
            raise EngineUnavailableError(
                f"the managed engine of {self.name!r} is {self._state}", retry_after=1.0
            )
        return await self._upstream.embed(
            texts, dimensions=dimensions, max_total_tokens=max_total_tokens
        )

    async def generate(self, req: GenerationRequest) -> AsyncIterator[TokenDelta]:
        if self._state != "ready":
            raise EngineUnavailableError(
                f"the managed engine of {self.name!r} is {self._state}", retry_after=1.0
            )
        inner = self._upstream.generate(req)
        try:
            async for delta in inner:
                yield delta
        finally:
            await inner.aclose()  # type: ignore[attr-defined]
