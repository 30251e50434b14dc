"""WebSocket connections, each in its own supervision tree (seed 001, in Python).

::

    ConnectionsSupervisor (DynamicSupervisor, app level; trees are temporary children)
    └── ConnectionSupervisor (rest_for_one)          one per connection
        ├── Connection        the socket's owner: one reader, one writer, request/reply ids
        └── SenderSupervisor  (DynamicSupervisor)    one ConversationSender per conversation

A server in a few lines (``handler`` answers each message; with the JSON
codec a browser's ``new WebSocket(url)`` talks to it directly)::

    import greentree
    from greentree.websocket import WebSocketService, WebSocketServer

    service = WebSocketService(lambda conn, conversation, body: body, codec="json")   # echo
    root = greentree.Supervisor([
        service.child_spec(),
        WebSocketServer.child_spec(service, ("127.0.0.1", 8000)),
    ], name="app")
    greentree.run(root)

Needs ``websockets`` (``pip install greentree-otp[websocket]``).  This package is
not imported by ``import greentree``.

>>> from greentree.websocket import Codec
>>> Codec().decode(Codec().encode("msg", [1, 2])).body
(1, 2)
"""

from ._client import ClientManager as ClientManager
from ._client import ClientTransport as ClientTransport
from ._connection import Connection as Connection
from ._errors import BackpressureError as BackpressureError
from ._errors import ConnectionClosedError as ConnectionClosedError
from ._errors import FrameError as FrameError
from ._errors import KeepaliveTimeoutError as KeepaliveTimeoutError
from ._errors import RemoteError as RemoteError
from ._errors import RequestTimeoutError as RequestTimeoutError
from ._errors import SlowConsumerError as SlowConsumerError
from ._errors import WebSocketError as WebSocketError
from ._flask import flask_route as flask_route
from ._frames import VERSION as VERSION
from ._frames import BaseCodec as BaseCodec
from ._frames import BytesCodec as BytesCodec
from ._frames import Codec as Codec
from ._frames import Frame as Frame
from ._frames import JsonCodec as JsonCodec
from ._frames import MsgpackCodec as MsgpackCodec
from ._frames import TextCodec as TextCodec
from ._handler import SOCKET_KEY as SOCKET_KEY
from ._handler import Request as Request
from ._handler import ServerTransport as ServerTransport
from ._handler import WebSocketApp as WebSocketApp
from ._handler import WebSocketHandler as WebSocketHandler
from ._handler import WebSocketServer as WebSocketServer
from ._handler import upgrade as upgrade
from ._options import Event as Event
from ._options import Options as Options
from ._options import Stats as Stats
from ._protocol import ConnectionCore as ConnectionCore
from ._topics import Topics as Topics
from ._tree import ConnectionsSupervisor as ConnectionsSupervisor
from ._tree import ConnectionSupervisor as ConnectionSupervisor
from ._tree import ConversationSender as ConversationSender
from ._tree import SenderSupervisor as SenderSupervisor
from ._tree import WebSocketService as WebSocketService
from ._tree import start_instance as start_instance
from ._tree import stop_instance as stop_instance

__all__ = [
    "BackpressureError", "BaseCodec", "BytesCodec", "ClientManager", "ClientTransport", "Codec", "Connection",
    "ConnectionClosedError", "ConnectionCore", "ConnectionSupervisor", "ConnectionsSupervisor",
    "ConversationSender", "Event", "Frame", "FrameError", "JsonCodec", "KeepaliveTimeoutError",
    "MsgpackCodec", "Options", "RemoteError", "Request", "RequestTimeoutError", "SOCKET_KEY",
    "SenderSupervisor", "ServerTransport", "SlowConsumerError", "Stats", "TextCodec", "Topics", "VERSION",
    "WebSocketApp", "WebSocketError", "WebSocketHandler", "WebSocketServer", "WebSocketService",
    "flask_route", "start_instance", "stop_instance", "upgrade",
]
