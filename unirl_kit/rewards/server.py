"""A reward behind HTTP (standard library only), so it can run in its own environment or machine.

POST /score takes a wire.py request and answers scores and details; GET /health answers
{"ok": true, "reward": NAME}. One batch is scored at a time (a lock): rewards hold one model and
are not written to be re-entrant; concurrent requests queue. There is no authentication, so the
server binds to loopback unless told otherwise, and warns when it is.

Bounded by construction: a body over `max_request_bytes` is refused before it is read; at most
`max_active` requests hold a body (read, decoded or being scored) at once, the others wait before
reading theirs, so memory peaks near max_active x (body + its decoded images); the decoded images
of one request are held to `max_request_pixels`. Every failure, the standard library's own (a bad
request line, an unknown method) included, is answered with {"error": "one line"} and its status.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from unirl_kit.rewards.base import Reward, RewardError, build_rewards, call_reward
from unirl_kit.rewards.wire import decode_samples, dumps, encode_output, loads
from unirl_kit.types import InputError

# A request is remote.batch_size base64 PNGs: 32 GenEval images of 512 px (about 0.6 MB each in
# base64) are 20 MB, so 32 MiB passes the client's default batch; 1024 px images want batch_size <= 16.
MAX_REQUEST_BYTES = 32 * 2**20
MAX_REQUEST_PIXELS = 32 * 2**20  # 32 images of 1024x1024: 100 MB of RGB per request
MAX_ACTIVE = 2  # one batch scored while the next is read and decoded; more only adds memory
LISTEN_BACKLOG = 128  # http.server's 5 reset 12-35 of 200 connections at 50 concurrent clients
MAX_THREADS = 64  # live connection threads: each holds a stack and may wait on a silent client for 60 s
_THREAD_WAIT_S = 5.0  # a connection over MAX_THREADS waits this long in the accept loop, then gets a 503
_QUEUE_WAIT_S = 50.0  # below the client's default 60 s timeout, so it reads a 503 (and retries)
_BODY_DEADLINE_S = 120.0  # a client trickling its body must not hold a slot for long
_DRAIN_BYTES = 2**30  # a refused body up to this is read and dropped, so the client reads the reply
_CHUNK = 2**20
_MAX_ERROR_CHARS = 1000


class RewardServer(ThreadingHTTPServer):
    """The HTTP server plus the one reward it serves."""

    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, address: tuple[str, int], name: str, reward: Reward, max_request_bytes: int,
                 log_requests: bool, max_active: int = MAX_ACTIVE, max_request_pixels: int = MAX_REQUEST_PIXELS,
                 max_threads: int = MAX_THREADS) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.reward_name = name
        self.reward = reward
        self.max_request_bytes = max_request_bytes
        self.max_request_pixels = max_request_pixels
        self.log_requests = log_requests
        self.lock = threading.Lock()
        self.slots = threading.BoundedSemaphore(max_active)
        self.max_threads = max_threads
        self.threads = threading.BoundedSemaphore(max_threads)

    def process_request(self, request: Any, client_address: Any) -> None:
        """One thread per connection, at most max_threads alive: ThreadingHTTPServer has no cap, so a
        flood of (or silent) clients would grow threads and their stacks without bound. Over the cap a
        connection waits briefly here (the listen backlog holds the next ones), then is answered 503."""
        if not self.threads.acquire(timeout=_THREAD_WAIT_S):
            _answer_busy(request, f"server busy: {self.max_threads} connections already open; "
                                  "retry later")
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started, so none will release the slot
            self.threads.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """The connection's thread; its slot is freed however the exchange ends."""
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.threads.release()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-exchange is routine; anything else keeps its traceback."""
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)


def _answer_busy(request: socket.socket, message: str) -> None:
    """A 503 in JSON written from the accept loop (no handler thread is free): a short send, then what the
    client already sent is read for at most 0.5 s, so closing does not reset the connection before the client
    reads the reply. A client that is gone is not our error."""
    body = dumps({"error": _one_line(message)})
    head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
            "\r\nConnection: close\r\n\r\n")
    try:
        request.settimeout(0.2)
        request.sendall(head.encode() + body)
        request.shutdown(socket.SHUT_WR)
        deadline, drained = time.monotonic() + 0.5, 0
        while time.monotonic() < deadline and drained < 4 * _CHUNK:  # the accept loop is held only briefly
            data = request.recv(65536)
            if not data:
                break
            drained += len(data)
    except OSError:
        pass


def _one_line(message: str) -> str:
    """Error text as one bounded line (messages may quote a huge hostile value)."""
    text = " ".join(str(message).split())
    return text if len(text) <= _MAX_ERROR_CHARS else text[:_MAX_ERROR_CHARS] + "..."


class _Handler(BaseHTTPRequestHandler):
    server: RewardServer
    timeout = 60  # seconds a socket read may wait: a silent client must not hold a thread forever

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (the base class's name)
        if self.server.log_requests:
            super().log_message(format, *args)

    def _reply(self, status: int, payload: dict[str, Any] | bytes) -> None:
        """Send JSON; a client that has gone away cannot be answered, which is not our error."""
        body = payload if isinstance(payload, bytes) else dumps(payload)
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except OSError:
            self.close_connection = True

    def _error(self, status: int, message: str) -> None:
        self._reply(status, {"error": _one_line(message)})

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (bad request line, unknown method, oversized headers) in JSON."""
        self.close_connection = True
        reason = message or self.responses.get(code, ("error",))[0]
        self._error(code, f"HTTP {code}: {reason}; use POST /score or GET /health")

    def do_GET(self) -> None:  # noqa: N802  (http.server's naming)
        if self.path.rstrip("/") == "/health":
            self._reply(200, {"ok": True, "reward": self.server.reward_name})
        else:
            self._error(404, f"no such path {self.path!r}; use GET /health or POST /score")

    def do_POST(self) -> None:  # noqa: N802
        """Every failure is answered: a bug in here is a 500 naming it, never a dropped connection."""
        try:
            self._post()
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            self.close_connection = True
            self._error(500, f"reward server failed: {type(exc).__name__}: {exc}")

    def _post(self) -> None:
        length = self._content_length()
        if length is None:
            return
        if self.path.rstrip("/") != "/score":
            self._refuse(length, 404, f"no such path {self.path!r}; use POST /score or GET /health")
            return
        limit = self.server.max_request_bytes
        if length > limit:
            self._refuse(length, 413, f"request of {length} bytes exceeds the server's limit of {limit} bytes; "
                                      "send fewer samples per request (remote.batch_size)")
            return
        if not self.server.slots.acquire(timeout=_QUEUE_WAIT_S):
            self._refuse(length, 503, f"server busy: no slot within {_QUEUE_WAIT_S:.0f} s; retry later")
            return
        try:
            samples = self._read_samples(length)
            if samples is not None:
                self._score(samples)
        finally:
            self.server.slots.release()

    def _content_length(self) -> int | None:
        """The declared body size, or None after a 411/400 (a body of unknown size is not read)."""
        raw = self.headers.get("Content-Length")
        if raw is None:
            self.close_connection = True
            self._error(411, "request: a Content-Length header is required")
            return None
        try:
            length = int(raw)
            if length < 0:
                raise ValueError(length)
        except ValueError:
            self.close_connection = True
            self._error(400, f"request: bad Content-Length {raw[:40]!r}")
            return None
        return length

    def _refuse(self, length: int, status: int, message: str) -> None:
        """Answer without keeping the body: it is read and dropped (up to _DRAIN_BYTES, in chunks),
        since closing on unread data resets the connection before the client reads the reply."""
        remaining, deadline = min(length, _DRAIN_BYTES), time.monotonic() + _BODY_DEADLINE_S
        try:
            while remaining > 0 and time.monotonic() < deadline:
                chunk = self.rfile.read(min(remaining, _CHUNK))
                if not chunk:
                    break
                remaining -= len(chunk)
        except OSError:
            pass  # the client stopped sending; the reply below is tried all the same
        self.close_connection = True
        self._error(status, message)

    def _read_body(self, length: int) -> bytearray | None:
        """Exactly `length` bytes into one buffer, or None after a 400/408 (a short or stalled body)."""
        buf = bytearray(length)
        view, got, deadline = memoryview(buf), 0, time.monotonic() + _BODY_DEADLINE_S
        try:
            while got < length:
                if time.monotonic() > deadline:
                    raise TimeoutError
                n = self.rfile.readinto1(view[got:got + _CHUNK])  # one socket read: progress counts
                if not n:
                    self.close_connection = True
                    self._error(400, f"request: body ended after {got} of {length} bytes")
                    return None
                got += n
        except (TimeoutError, OSError) as exc:
            self.close_connection = True
            self._error(408, f"request: body not received in time ({got} of {length} bytes; "
                             f"{type(exc).__name__})")
            return None
        finally:
            view.release()
        return buf

    def _read_samples(self, length: int) -> list[Any] | None:
        """The request's samples for this server's reward, or None after a 4xx reply; the body and
        its JSON are dropped here, before scoring waits for the lock."""
        body = self._read_body(length)
        if body is None:
            return None
        name = self.server.reward_name
        try:
            wanted, samples = decode_samples(loads(body), self.server.max_request_pixels)
            if wanted != name:
                raise InputError(f"request.reward: this server scores {name!r}, not {wanted!r}")
        except InputError as exc:
            self._error(400, str(exc))
            return None
        return samples

    def _score(self, samples: list[Any]) -> None:
        name = self.server.reward_name
        try:
            with self.server.lock:
                out = call_reward(name, self.server.reward, samples)
            body = dumps(encode_output(out))  # unserializable details fail here, as a 500 naming the reward
        except RewardError as exc:
            self._error(500, str(exc))
        except InputError as exc:
            self._error(400, f"reward {name!r}: {exc}")
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            self._error(500, f"reward {name!r} server failed: {type(exc).__name__}: {exc}")
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
                       log_requests: bool = True, max_active: int = MAX_ACTIVE,
                       max_request_pixels: int = MAX_REQUEST_PIXELS, max_threads: int = MAX_THREADS) -> RewardServer:
    """Build the reward (failing fast on bad options) and bind; port 0 picks a free port."""
    if ":" in reward_name:
        raise InputError(f"--reward {reward_name!r}: give the reward's name only; weights belong to the client")
    composed = build_rewards([reward_name], {reward_name: dict(options)} if options else None, backbone)
    name, _, reward = composed.parts[0]
    try:
        server = RewardServer((host, port), name, reward, max_request_bytes, log_requests, max_active,
                              max_request_pixels, max_threads)
    except OSError as exc:
        raise InputError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --host/--port") from None
    if not is_loopback(host):  # once it listens: a host it cannot bind gets the one error line alone
        print(f"warning: the reward server has no authentication; on {host} anyone who can reach port {port} "
              "can use it (and its GPU). Prefer 127.0.0.1 and an SSH tunnel.", file=sys.stderr)
    return server


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
