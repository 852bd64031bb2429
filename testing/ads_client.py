"""A Python ADS client stream over real gRPC, for SotW and Delta alike, used by the ADS servicer tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, TypeVar

import grpc

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class AdsClient(Generic[Req, Resp]):
    """One stream; responses are read in the background (cancelling a gRPC read cancels the call)."""

    def __init__(self, method: Callable[[AsyncIterator[Req]], Any], request_type: Callable[..., Req]) -> None:
        self._request_type = request_type
        self.requests: asyncio.Queue[Req] = asyncio.Queue()
        self.responses: asyncio.Queue[Resp | grpc.aio.AioRpcError] = asyncio.Queue()
        self.call = method(self._requests())
        self.reader = asyncio.create_task(self._read())

    async def _requests(self) -> AsyncIterator[Req]:
        while True:
            yield await self.requests.get()

    async def _read(self) -> None:
        try:
            async for response in self.call:
                await self.responses.put(response)
        except grpc.aio.AioRpcError as error:
            await self.responses.put(error)

    async def send(self, **fields: object) -> None:
        await self.requests.put(self._request_type(**fields))

    async def receive(self, timeout: float = 2.0) -> Resp:
        item = await asyncio.wait_for(self.responses.get(), timeout)
        if isinstance(item, grpc.aio.AioRpcError):
            raise item
        return item

    async def silent(self, seconds: float = 0.3) -> bool:
        await asyncio.sleep(seconds)
        return self.responses.empty()

    def close(self) -> None:
        self.call.cancel()
        self.reader.cancel()
