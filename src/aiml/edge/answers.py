"""The answers the connection guard (:mod:`aiml.edge.connection_guard`) writes itself, whole, as
bytes: each closes its connection, and each JSON body has the API's error shape."""

from __future__ import annotations

__all__ = ["BUSY", "REFUSALS", "TIMEOUT", "refused", "too_large"]

REFUSALS = {  # the framing's refusals (:attr:`aiml.edge.http_framing.RequestFraming.refusal`)
    "upgrade": "protocol upgrades and CONNECT are not served",
    "tiny chunks": "a chunked body of too many tiny chunks",
}

TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"


def _answer(status: bytes, code: str, message: str, extra: bytes = b"") -> bytes:
    body = b'{"success":false,"error":{"code":"%s","message":"%s"}}' % (
        code.encode(),
        message.encode(),
    )
    return (
        b"HTTP/1.1 %s\r\ncontent-type: application/json\r\n%sconnection: close\r\n"
        b"content-length: %d\r\n\r\n%s" % (status, extra, len(body), body)
    )


BUSY = _answer(
    b"503 Service Unavailable",
    "too_many_connections",
    "too many open connections from this address",
    b"retry-after: 1\r\n",
)


def refused(refusal: str) -> bytes:
    return _answer(b"400 Bad Request", "invalid_request", REFUSALS[refusal])


def too_large(max_head_bytes: int, max_headers: int) -> bytes:
    return _answer(
        b"431 Request Header Fields Too Large",
        "request_header_fields_too_large",
        f"request headers over {max_head_bytes} bytes or {max_headers} fields "
        "(AIML_MAX_HEADER_BYTES, AIML_MAX_HEADERS)",
    )
