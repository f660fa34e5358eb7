"""The HTTP client under both HTTP engines: httpx's API on :class:`FastTransport`'s wire.

The official ``ollama`` and ``openai`` clients each take an ``httpx.AsyncClient``; both
engines give them a :class:`LeanAsyncClient` over a :class:`FastTransport`, so one HTTP layer
serves every upstream and one set of tests (tests/engines/test_transport*.py) covers it.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from .transport import FastTransport

__all__ = ["LeanAsyncClient", "lean_client"]


def lean_client(**kwargs: Any) -> LeanAsyncClient:
    """A :class:`LeanAsyncClient` on a new :class:`FastTransport` (``kwargs`` go to httpx)."""
    return LeanAsyncClient(transport=FastTransport(), **kwargs)


class LeanAsyncClient(httpx.AsyncClient):
    """httpx's client without what an engine API never uses on the hot path.

    ``send`` goes straight to the transport, skipping the auth-flow generator, the redirect
    loop and cookie extraction (about 70 us per request, measured). Engine APIs do not
    redirect, and their clients send keys as plain headers; a call that asks for an auth
    flow or for redirects to be followed gets httpx's own ``send``. Response event hooks
    run as httpx runs them.

    A request that only names a path and a JSON body (what the official clients send) is
    built from the base URL joined once per path, the client's headers and orjson: about
    40 us less than httpx's general merge of URL, headers, cookies and parameters. Anything
    else is built by httpx as usual.
    """

    def __init__(self, *args: Any, transport: httpx.AsyncBaseTransport, **kwargs: Any) -> None:
        super().__init__(*args, transport=transport, **kwargs)
        self._lean_transport = transport
        # send() never stores cookies, so a client built without any never has them.
        self._plain = not self.cookies and not self.params
        self._timeouts = self.timeout.as_dict()
        self._json_headers = httpx.Headers({**self.headers, "Content-Type": "application/json"})
        self._urls: dict[str, httpx.URL] = {}
        self._response_hooks = list(self.event_hooks["response"])

    def build_request(
        self,
        method: str,
        url: httpx.URL | str,
        *,
        content: Any = None,
        data: Any = None,
        files: Any = None,
        json: Any = None,
        params: Any = None,
        headers: Any = None,
        cookies: Any = None,
        timeout: Any = httpx.USE_CLIENT_DEFAULT,
        extensions: Any = None,
    ) -> httpx.Request:
        plain = (
            self._plain
            and isinstance(url, str)
            and all(v is None for v in (content, data, files, params, headers, cookies, extensions))
            and timeout is httpx.USE_CLIENT_DEFAULT
        )
        if not plain:
            return super().build_request(
                method,
                url,
                content=content,
                data=data,
                files=files,
                json=json,
                params=params,
                headers=headers,
                cookies=cookies,
                timeout=timeout,
                extensions=extensions,
            )
        assert isinstance(url, str)
        target = self._urls.get(url)
        if target is None:
            target = self._merge_url(url)
            if len(self._urls) < 64:  # the engine API's few paths
                self._urls[url] = target
        if json is None:
            return httpx.Request(
                method, target, headers=self.headers, extensions={"timeout": self._timeouts}
            )
        return httpx.Request(
            method,
            target,
            content=orjson.dumps(json),
            headers=self._json_headers,
            extensions={"timeout": self._timeouts},
        )

    async def send(
        self,
        request: httpx.Request,
        *,
        stream: bool = False,
        auth: Any = httpx.USE_CLIENT_DEFAULT,
        follow_redirects: Any = httpx.USE_CLIENT_DEFAULT,
    ) -> httpx.Response:
        if (auth is not httpx.USE_CLIENT_DEFAULT and auth is not None) or follow_redirects is True:
            return await super().send(
                request, stream=stream, auth=auth, follow_redirects=follow_redirects
            )
        request.extensions.setdefault("timeout", self._timeouts)
        response = await self._lean_transport.handle_async_request(request)
        response.request = request
        try:
            for hook in self._response_hooks:
                await hook(response)
            if not stream:
                await response.aread()
        except BaseException:
            await response.aclose()
            raise
        if not stream:
            await response.aclose()
        return response
