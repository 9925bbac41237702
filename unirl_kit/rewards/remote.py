"""`remote`: a reward scored by a reward server (`unirl serve reward`) in another process or machine.

Lets a trainer use a reward whose dependencies cannot live in its environment (mmdet's pinned
mmcv, another CUDA) or that needs its own GPU. Standard library only (urllib), so it adds nothing
to the trainer's environment.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any, ClassVar
from urllib.parse import urlparse

from unirl_kit.rewards.base import RewardError, RewardOutput, Sample
from unirl_kit.rewards.server import is_loopback
from unirl_kit.rewards.wire import decode_output, dumps, encode_samples
from unirl_kit.types import InputError

_RETRY_STATUS = (502, 503, 504)  # the server (or a proxy before it) is not ready: worth another try


class RemoteRewardError(RewardError):
    """The reward server failed, refused the request, or could not be reached."""


class RemoteReward:
    """Sends samples to a reward server (`unirl serve reward`) and returns its scores."""

    name: ClassVar[str] = "remote"
    needs_backbone: ClassVar[bool] = False

    def __init__(self, url: str, batch_size: int = 32, timeout_s: float = 60.0, retries: int = 3,
                 backoff_s: float = 1.0, reward: str | None = None) -> None:
        """`retries`: extra tries after a connection error, timeout or 502/503/504, waiting
        backoff_s, 2*backoff_s, ...; a failure of the reward itself (HTTP 500) is raised at once.
        `timeout_s` must exceed the time the server takes to score one batch. `reward`: the name
        the server must be serving (checked); None takes whatever it serves."""
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise InputError(f"remote.url: expected http://HOST:PORT, got {url!r}")
        for key, value, ok in (("batch_size", batch_size, batch_size >= 1), ("timeout_s", timeout_s, timeout_s > 0),
                               ("retries", retries, retries >= 0), ("backoff_s", backoff_s, backoff_s >= 0)):
            if not ok:
                raise InputError(f"remote.{key}: out of range, got {value!r}")
        self.url = url.rstrip("/")
        self.port = parsed.port or (443 if parsed.scheme == "https" else 80)
        self.batch_size, self.timeout_s, self.retries, self.backoff_s = batch_size, timeout_s, retries, backoff_s
        self.reward = reward
        self._served: str | None = None
        # a loopback server must not be sent through an http_proxy from the environment
        handlers = [urllib.request.ProxyHandler({})] if is_loopback(parsed.hostname) else []
        self._opener = urllib.request.build_opener(*handlers)

    def __call__(self, samples: Sequence[Sample]) -> RewardOutput:
        served = self.served_reward()
        scores: list[float] = []
        details: list[dict[str, Any]] = []
        for start in range(0, len(samples), self.batch_size):
            batch = samples[start:start + self.batch_size]
            payload = self._request("/score", dumps(encode_samples(served, batch)))
            try:
                out = decode_output(payload, len(batch))
            except RewardError as exc:
                raise RemoteRewardError(f"{exc} (reward server at {self.url})") from None
            scores += out.scores
            details += out.details
        return RewardOutput(scores, details)

    def served_reward(self) -> str:
        """The name of the reward the server scores (asked once, then checked against `reward`)."""
        if self._served is None:
            health = self._request("/health", None)
            served = health.get("reward") if isinstance(health, dict) else None
            if not isinstance(served, str):
                raise RemoteRewardError(f"{self.url}/health did not name a reward; is this a unirl reward server?")
            if self.reward is not None and served != self.reward:
                raise RemoteRewardError(f"reward server at {self.url} scores {served!r}, not {self.reward!r}; "
                                        "point remote.url at the right server")
            self._served = served
        return self._served

    def _open(self, request: urllib.request.Request) -> Any:
        """One HTTP exchange -> parsed JSON (a seam for tests to count tries)."""
        with self._opener.open(request, timeout=self.timeout_s) as response:
            return json.loads(response.read())

    def _request(self, path: str, body: bytes | None) -> Any:
        """GET (body None) or POST JSON, retrying only what a later try can fix."""
        tries = 1 + self.retries
        reason = ""
        for attempt in range(tries):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url + path, data=body, method="GET" if body is None else "POST",
                                             headers={"Content-Type": "application/json"})
            try:
                return self._open(request)
            except urllib.error.HTTPError as exc:
                message = _error_message(exc)
                if exc.code in _RETRY_STATUS:
                    reason = f"HTTP {exc.code}: {message}"
                    continue
                if exc.code == 500:  # the reward itself failed: the message names reward and sample
                    raise RemoteRewardError(f"{message} (reward server at {self.url})") from None
                raise RemoteRewardError(f"reward server at {self.url} refused the request (HTTP {exc.code}): "
                                        f"{message}") from None
            except json.JSONDecodeError:
                raise RemoteRewardError(f"{self.url}{path} answered something other than JSON; "
                                        "is this a unirl reward server?") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException, OSError) as exc:
                reason = _reason(exc, self.timeout_s)
        raise RemoteRewardError(
            f"reward server at {self.url} unreachable after {tries} {'try' if tries == 1 else 'tries'}: {reason}; "
            "start it with "
            f"`unirl serve reward --reward {self.reward or self._served or 'NAME'} --port {self.port}`")


def _error_message(exc: urllib.error.HTTPError) -> str:
    """The server's {"error": ...}, or the start of whatever else it sent."""
    try:
        text = exc.read().decode("utf-8", "replace")
    except OSError:
        return exc.reason or f"HTTP {exc.code}"
    try:
        payload = json.loads(text)
    except json.JSONDecodeError:
        return text.strip().splitlines()[0][:200] if text.strip() else str(exc.reason)
    if isinstance(payload, dict) and "error" in payload:
        return str(payload["error"])
    return text[:200]


def _reason(exc: BaseException, timeout_s: float) -> str:
    inner = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(inner, TimeoutError):
        return f"timed out after {timeout_s:g} s (raise remote.timeout_s if one batch takes longer)"
    if isinstance(inner, BaseException):
        return f"{type(inner).__name__}: {inner}"
    return str(inner)
