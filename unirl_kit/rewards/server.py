"""A reward behind HTTP (standard library only), so it can run in its own environment or machine.

POST /score takes a wire.py request and answers scores and details; GET /health answers
{"ok": true, "reward": NAME}. One batch is scored at a time (a lock): rewards hold one model and
are not written to be re-entrant; concurrent requests queue. There is no authentication, so the
server binds to loopback unless told otherwise, and warns when it is.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import sys
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from unirl_kit.rewards.base import Reward, RewardError, build_rewards, call_reward
from unirl_kit.rewards.wire import decode_samples, dumps, encode_output
from unirl_kit.types import InputError

MAX_REQUEST_BYTES = 256 * 2**20
_DRAIN_LIMIT = 4 * MAX_REQUEST_BYTES  # beyond this an oversized body is not even read before the 413


class RewardServer(ThreadingHTTPServer):
    """The HTTP server plus the one reward it serves."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], name: str, reward: Reward, max_request_bytes: int,
                 log_requests: bool) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.reward_name = name
        self.reward = reward
        self.max_request_bytes = max_request_bytes
        self.log_requests = log_requests
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}"


class _Handler(BaseHTTPRequestHandler):
    server: RewardServer
    timeout = 300  # a client that stops sending mid-body must not hold a thread forever

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (the base class's name)
        if self.server.log_requests:
            super().log_message(format, *args)

    def _reply(self, status: int, payload: dict[str, Any] | bytes) -> None:
        body = payload if isinstance(payload, bytes) else dumps(payload)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802  (http.server's naming)
        if self.path.rstrip("/") == "/health":
            self._reply(200, {"ok": True, "reward": self.server.reward_name})
        else:
            self._reply(404, {"error": f"no such path {self.path!r}; use GET /health or POST /score"})

    def do_POST(self) -> None:  # noqa: N802
        if self.path.rstrip("/") != "/score":
            self._reply(404, {"error": f"no such path {self.path!r}; use POST /score or GET /health"})
            return
        body = self._read_body()
        if body is None:
            return
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            self._reply(400, {"error": f"request: malformed JSON ({exc})"})
            return
        self._score(payload)

    def _read_body(self) -> bytes | None:
        """The request body, or None after replying 400/413 (an oversized body is drained first so
        the client reads the 413 instead of a reset connection)."""
        try:
            length = int(self.headers.get("Content-Length", ""))
            if length < 0:
                raise ValueError(length)
        except ValueError:
            self._reply(400, {"error": "request: a Content-Length header is required"})
            return None
        limit = self.server.max_request_bytes
        if length > limit:
            if length <= _DRAIN_LIMIT:
                remaining = length
                while remaining > 0:
                    chunk = self.rfile.read(min(remaining, 2**20))
                    if not chunk:
                        break
                    remaining -= len(chunk)
            self.close_connection = True
            self._reply(413, {"error": f"request of {length} bytes exceeds the server's limit of {limit} bytes; "
                                       "send fewer samples per request (batch_size)"})
            return None
        return self.rfile.read(length)

    def _score(self, payload: Any) -> None:
        name = self.server.reward_name
        try:
            wanted, samples = decode_samples(payload)
            if wanted != name:
                raise InputError(f"request.reward: this server scores {name!r}, not {wanted!r}")
        except InputError as exc:
            self._reply(400, {"error": str(exc)})
            return
        try:
            with self.server.lock:
                out = call_reward(name, self.server.reward, samples)
            body = dumps(encode_output(out))  # unserializable details fail here, as a 500 naming the reward
        except RewardError as exc:
            self._reply(500, {"error": str(exc)})
        except InputError as exc:
            self._reply(400, {"error": f"reward {name!r}: {exc}"})
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            self._reply(500, {"error": f"reward {name!r} server failed: {type(exc).__name__}: {exc}"})
        else:
            self._reply(200, body)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: assume it may be reachable from outside
        return False


def make_reward_server(reward_name: str, options: dict[str, Any] | None = None, host: str = "127.0.0.1",
                       port: int = 8000, backbone: Any = None, max_request_bytes: int = MAX_REQUEST_BYTES,
                       log_requests: bool = True) -> RewardServer:
    """Build the reward (failing fast on bad options) and bind; port 0 picks a free port."""
    if ":" in reward_name:
        raise InputError(f"--reward {reward_name!r}: give the reward's name only; weights belong to the client")
    composed = build_rewards([reward_name], {reward_name: dict(options)} if options else None, backbone)
    name, _, reward = composed.parts[0]
    if not is_loopback(host):
        print(f"warning: the reward server has no authentication; on {host} anyone who can reach port {port} "
              "can use it (and its GPU). Prefer 127.0.0.1 and an SSH tunnel.", file=sys.stderr)
    try:
        return RewardServer((host, port), name, reward, max_request_bytes, log_requests)
    except OSError as exc:
        raise InputError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --host/--port") from None


def serve_reward(reward_name: str, options: dict[str, Any] | None = None, host: str = "127.0.0.1",
                 port: int = 8000, backbone: Any = None) -> None:
    """Serve one reward until Ctrl-C (which is the normal way to stop it)."""
    server = make_reward_server(reward_name, options, host, port, backbone)
    print(f"serving reward {server.reward_name!r} at {server.url} (POST /score, GET /health); Ctrl-C stops it",
          file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("reward server stopped", file=sys.stderr)
    finally:
        server.server_close()
