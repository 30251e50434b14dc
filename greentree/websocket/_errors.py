"""Errors of :mod:`greentree.websocket`, all :class:`greentree.GreentreeError` subclasses."""

from __future__ import annotations

from .._errors import GreentreeError

__all__ = [
    "WebSocketError", "FrameError", "ConnectionClosedError", "SlowConsumerError",
    "KeepaliveTimeoutError", "RequestTimeoutError", "RemoteError", "BackpressureError",
]


class WebSocketError(GreentreeError):
    """Base class of every error raised by :mod:`greentree.websocket`."""


class FrameError(WebSocketError, ValueError):
    """A received frame is not a valid greentree frame: the peer's fault.

    ``code`` is the WebSocket close code the connection is closed with
    (1003 unsupported data, 1007 invalid payload, 1009 too big) and
    ``reason`` the close reason sent to the peer.
    """

    def __init__(self, code: int, reason: str):
        super().__init__(f"close {code}: {reason}")
        self.code = code
        self.reason = reason


class ConnectionClosedError(WebSocketError, ConnectionError):
    """The connection is closed (or was lost) before the operation completed.

    Raised by ``send``/``request`` on a closed :class:`Connection`, and set on
    every request still waiting for its reply when the socket goes away.
    """


class SlowConsumerError(WebSocketError):
    """The peer does not read: the connection's bounded send queue is full, or
    one write stalled past ``write_timeout``.

    This is the :class:`Connection`'s crash reason (a supervised failure,
    reported once); the connection is closed with 1008 when possible.
    """


class KeepaliveTimeoutError(WebSocketError, TimeoutError):
    """Nothing (not even a pong) came from the peer within ``ping_interval +
    ping_timeout``: the connection is half-open and was closed (1011)."""


class RequestTimeoutError(WebSocketError, TimeoutError):
    """No reply to a ``request`` within its timeout (the connection stays open)."""


class RemoteError(WebSocketError):
    """The peer answered a request with an error frame (``"t": "err"``)."""


class BackpressureError(WebSocketError):
    """A conversation already holds ``conversation_inbox`` unsent messages:
    wait for earlier sends to be acknowledged before sending more."""
