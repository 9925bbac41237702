"""The reward server and its `remote` client: wire format, round trips, retries and errors."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import numpy as np
import pytest

from unirl_kit.config import parse_overrides
from unirl_kit.registry import registry
from unirl_kit.rewards.base import RewardOutput, Sample, build_rewards, call_reward
from unirl_kit.rewards.remote import RemoteReward, RemoteRewardError
from unirl_kit.rewards.server import RewardServer, make_reward_server
from unirl_kit.rewards.wire import decode_output, decode_samples, dumps, encode_samples
from unirl_kit.types import InputError


class PixelReward:
    """test-only: a score from the pixels, prompt, tokens and indices, so a round trip checks them all."""

    name: ClassVar[str] = "test-pixels"
    needs_backbone: ClassVar[bool] = False

    def __init__(self, scale: float = 1.0, delay_s: float = 0.0) -> None:
        self.scale, self.delay_s = scale, delay_s
        self.active = self.max_active = 0

    def __call__(self, samples: list[Sample]) -> RewardOutput:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        time.sleep(self.delay_s)
        self.active -= 1
        scores, details = [], []
        for s in samples:
            pixels = np.asarray(s.image, dtype=np.float64)
            tokens = [] if s.tokens is None else s.tokens.tolist()
            scores.append(self.scale * (pixels.mean() / 255 + sum(tokens) * 1e-6 + s.prompt_index + s.image_index / 10))
            details.append({"prompt": s.spec.prompt, "include": s.spec.to_json()["include"], "tokens": tokens,
                            "label": s.label, "shape": pixels.shape, "mean": np.float32(pixels.mean())})
        return RewardOutput(scores, details)


class FailingReward:
    """test-only: raises on image 1 of any prompt."""

    name: ClassVar[str] = "test-fails"
    needs_backbone: ClassVar[bool] = False

    def __call__(self, samples: list[Sample]) -> RewardOutput:
        for s in samples:
            if s.image_index == 1:
                raise ValueError(f"cannot score {s.label}")
        return RewardOutput([0.0] * len(samples))


@pytest.fixture(autouse=True, scope="module")
def _test_rewards() -> Iterator[None]:
    """Register the test-only rewards for this module only (other tests may list the real ones)."""
    rewards = registry("rewards")
    rewards.register("test-pixels", PixelReward)
    rewards.register("test-fails", FailingReward)
    yield
    for name in ("test-pixels", "test-fails"):
        rewards._entries.pop(name, None)  # no public unregister: tests are its only use


def make_samples(n: int, seed: int = 0) -> list[Sample]:
    """Rendered shapes-world images of random prompts (every tag), half of them with token ids."""
    import torch

    from unirl_kit.prompts.generate import get_world, sample_prompt
    from unirl_kit.types import GENEVAL_TAGS
    from unirl_kit.worlds.shapes.render import render_scene

    world, rng = get_world("shapes"), np.random.default_rng(seed)
    samples = []
    for i in range(n):
        spec = sample_prompt(GENEVAL_TAGS[i % len(GENEVAL_TAGS)], world, rng)
        image, _ = render_scene(spec, rng)
        tokens = torch.randint(0, 512, (16,), generator=torch.Generator().manual_seed(i)) if i % 2 else None
        samples.append(Sample(spec, image, tokens, prompt_index=i // 2, image_index=i % 2,
                              path=f"{i // 2:05d}/samples/{i % 2:04d}.png" if i % 3 else None))
    return samples


def start(name: str, options: dict[str, Any] | None = None, **kw: Any) -> RewardServer:
    server = make_reward_server(name, options, port=0, log_requests=False, **kw)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


@pytest.fixture
def serve() -> Iterator[Any]:
    """start(name, options) -> a running server on a free loopback port, stopped after the test."""
    servers: list[RewardServer] = []

    def _start(name: str, options: dict[str, Any] | None = None, **kw: Any) -> RewardServer:
        servers.append(start(name, options, **kw))
        return servers[-1]

    yield _start
    for server in servers:
        server.shutdown()
        server.server_close()


def post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def normalized(details: list[dict]) -> list[dict]:
    """Details as JSON carries them (tuples become lists, numpy numbers plain ones)."""
    return json.loads(dumps(details))


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- wire format ----

def test_wire_round_trip_keeps_spec_pixels_tokens_and_indices() -> None:
    samples = make_samples(6)
    name, back = decode_samples(json.loads(dumps(encode_samples("test-pixels", samples))))
    assert name == "test-pixels"
    for a, b in zip(samples, back, strict=True):
        assert b.spec == a.spec
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
        assert (a.tokens is None and b.tokens is None) or a.tokens.tolist() == b.tokens.tolist()
        assert (b.prompt_index, b.image_index, b.path) == (a.prompt_index, a.image_index, a.path)
        assert b.label == a.label


@pytest.mark.parametrize("mutate, field", [
    (lambda r: r.update(version=2), "request.version"),
    (lambda r: r.pop("samples"), "request.samples"),
    (lambda r: r["samples"][1].pop("image_png"), "request.samples[1]: missing field 'image_png'"),
    (lambda r: r["samples"][0].update(image_png="not base64!"), "request.samples[0].image_png"),
    (lambda r: r["samples"][0].update(image_png="aGVsbG8="), "request.samples[0].image_png: unreadable image"),
    (lambda r: r["samples"][0]["spec"].pop("prompt"), "request.samples[0].spec: field 'prompt'"),
    (lambda r: r["samples"][1].update(tokens=[1, "2"]), "request.samples[1].tokens"),
    (lambda r: r["samples"][0].update(prompt_index=-1), "request.samples[0].prompt_index"),
    (lambda r: r["samples"][0].update(colour=1), "request.samples[0]: unknown field 'colour'"),
])
def test_wire_errors_name_the_field(mutate, field: str) -> None:
    request = json.loads(dumps(encode_samples("test-pixels", make_samples(2))))
    mutate(request)
    with pytest.raises(InputError) as err:
        decode_samples(request)
    assert field in str(err.value)


def test_decode_output_checks_scores() -> None:
    assert decode_output({"scores": [1, 0.5]}).details == [{}, {}]
    for payload, message in [({"error": "reward 'x' failed"}, "reward 'x' failed"),
                             ({"scores": [1.0]}, "1 scores for 2 samples"),
                             ({"scores": [1.0, "a"]}, "response.scores[1]"),
                             ({"scores": [1.0, 2.0], "details": [{}]}, "response.details")]:
        with pytest.raises(RuntimeError, match=message.replace("[", r"\[").replace("]", r"\]")):
            decode_output(payload, 2)


# ---- server + client ----

def test_remote_round_trip_equals_in_process(serve) -> None:
    samples = make_samples(7)
    server = serve("test-pixels", parse_overrides(["scale=2"]))  # as the CLI passes them: raw, typed on build
    local = call_reward("test-pixels", PixelReward(scale=2.0), samples)
    remote = RemoteReward(server.url, batch_size=3, retries=0)
    out = call_reward("remote", remote, samples)
    assert out.scores == local.scores
    assert out.details == normalized(local.details)
    assert remote.served_reward() == "test-pixels"


def test_remote_through_the_registry(serve) -> None:
    server = serve("test-pixels")
    composed = build_rewards(["remote:0.5"], {"remote": {"url": server.url, "batch_size": 2, "retries": 0}})
    samples = make_samples(3)
    out = composed(samples)
    totals, records = out.scores, out.details
    local = PixelReward()(samples).scores
    assert totals == [0.5 * s for s in local]
    assert records[0]["rewards"]["remote"] == local[0]
    assert "remote" in registry("rewards").names()


def test_geneval_round_trip_equals_in_process(serve) -> None:
    if "geneval" not in registry("rewards"):
        pytest.skip("the geneval reward is not registered yet")
    samples = make_samples(12)
    local = call_reward("geneval", build_rewards(["geneval"]).parts[0][2], samples)
    assert sum(local.scores) > 0  # clean renders: most verdicts are correct
    server = serve("geneval")
    out = call_reward("remote", RemoteReward(server.url, batch_size=5, retries=0, reward="geneval"), samples)
    assert out.scores == local.scores
    assert out.details == normalized(local.details)


def test_health_and_unknown_path(serve) -> None:
    server = serve("test-pixels")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(server.url + "/health", timeout=10) as resp:
        assert json.loads(resp.read()) == {"ok": True, "reward": "test-pixels"}
    status, body = post(server.url + "/nope", b"{}")
    assert status == 404 and "POST /score" in body["error"]


def test_server_down_retries_then_clear_error() -> None:
    port = free_port()
    client = RemoteReward(f"http://127.0.0.1:{port}", retries=2, backoff_s=0.01, reward="test-pixels")
    tries = []
    inner = client._open
    client._open = lambda request: tries.append(request.full_url) or inner(request)
    t0 = time.perf_counter()
    with pytest.raises(RemoteRewardError) as err:
        call_reward("remote", client, make_samples(2))
    assert len(tries) == 3
    assert time.perf_counter() - t0 >= 0.03  # waited 0.01 + 0.02
    message = str(err.value)
    assert f"reward server at http://127.0.0.1:{port} unreachable after 3 tries:" in message
    assert f"start it with `unirl serve reward --reward test-pixels --port {port}`" in message


def test_503_is_retried_then_reported() -> None:
    hits = []

    class Busy(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            hits.append(self.path)
            body = b'{"error": "warming up"}'
            self.send_response(503)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    stub = ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    threading.Thread(target=stub.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        client = RemoteReward(f"http://127.0.0.1:{stub.server_address[1]}", retries=3, backoff_s=0.001)
        with pytest.raises(RemoteRewardError, match="unreachable after 4 tries: HTTP 503: warming up"):
            client(make_samples(1))
        assert len(hits) == 4
    finally:
        stub.shutdown()
        stub.server_close()


def test_reward_error_on_server_names_reward_and_sample_and_is_not_retried(serve) -> None:
    server = serve("test-fails")
    client = RemoteReward(server.url, retries=3, backoff_s=0.01)
    tries = []
    inner = client._open
    client._open = lambda request: tries.append(request.full_url) or inner(request)
    samples = make_samples(4)
    with pytest.raises(RemoteRewardError) as err:
        call_reward("remote", client, samples)
    message = str(err.value)
    assert "reward 'test-fails' failed on" in message
    assert f"cannot score {samples[1].label}" in message
    assert server.url in message
    assert tries == [server.url + "/health", server.url + "/score"]  # no retry of a reward failure


def test_malformed_requests_get_400(serve) -> None:
    server = serve("test-pixels")
    status, body = post(server.url + "/score", b"{not json")
    assert status == 400 and body["error"].startswith("request: malformed JSON")
    status, body = post(server.url + "/score", b'{"version": 1, "reward": "test-pixels"}')
    assert status == 400 and "request.samples" in body["error"]
    status, body = post(server.url + "/score", dumps(encode_samples("geneval", make_samples(1))))
    assert status == 400 and "this server scores 'test-pixels', not 'geneval'" in body["error"]
    client = RemoteReward(server.url, reward="self-qa", retries=0)
    with pytest.raises(RemoteRewardError, match="scores 'test-pixels', not 'self-qa'"):
        client(make_samples(1))


def test_oversized_request_gets_413(serve) -> None:
    server = serve("test-pixels", max_request_bytes=2000)
    with pytest.raises(RemoteRewardError, match=r"HTTP 413.*exceeds the server's limit of 2000 bytes"):
        RemoteReward(server.url, retries=0)(make_samples(4))


def test_one_batch_at_a_time(serve) -> None:
    server = serve("test-pixels", {"delay_s": 0.05})
    samples = make_samples(2)
    errors: list[BaseException] = []

    def score() -> None:
        try:
            RemoteReward(server.url, retries=0)(samples)
        except BaseException as exc:  # noqa: BLE001  (reported by the assert below)
            errors.append(exc)

    threads = [threading.Thread(target=score) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert server.reward.max_active == 1


def test_non_loopback_host_warns(capsys) -> None:
    server = make_reward_server("test-pixels", host="0.0.0.0", port=0, log_requests=False)
    server.server_close()
    assert "no authentication" in capsys.readouterr().err
    local = make_reward_server("test-pixels", port=0, log_requests=False)
    local.server_close()
    assert "no authentication" not in capsys.readouterr().err


def test_bad_client_settings() -> None:
    with pytest.raises(InputError, match="remote.url"):
        RemoteReward("localhost:8000")
    with pytest.raises(InputError, match="remote.batch_size"):
        RemoteReward("http://127.0.0.1:1", batch_size=0)
    with pytest.raises(InputError, match="weights belong to the client"):
        make_reward_server("test-pixels:0.5", port=0)


# ---- CLI ----

def _cli():
    import typer

    from unirl_kit.cli import serve_cmd

    app = typer.Typer()
    app.command("noop")(lambda: None)  # two commands, so `serve` stays a sub-command group
    serve_cmd.register(app)
    return app


def test_cli_passes_options_and_fails_in_one_line(monkeypatch) -> None:
    from typer.testing import CliRunner

    import unirl_kit.rewards.server as server_mod

    seen = {}
    monkeypatch.setattr(server_mod, "serve_reward", lambda name, options, **kw: seen.update(
        name=name, options=options, **kw))
    runner = CliRunner()
    result = runner.invoke(_cli(), ["serve", "reward", "--reward", "test-pixels", "--port", "9123",
                                    "scale=2", "reward_options.delay_s=0"])
    assert result.exit_code == 0, result.output
    assert seen["name"] == "test-pixels" and seen["port"] == 9123 and seen["host"] == "127.0.0.1"
    assert seen["options"] == {"scale": "2", "delay_s": "0"} and seen["backbone"] is None

    result = runner.invoke(_cli(), ["serve", "reward", "--reward", "test-pixel"])
    assert result.exit_code == 2 and "did you mean 'test-pixels'" in result.output
    result = runner.invoke(_cli(), ["serve", "reward", "--reward", "test-pixels", "--model", "x"])
    assert result.exit_code == 2 and "need --backbone" in result.output
    result = runner.invoke(_cli(), ["serve", "reward", "--help"])
    assert "reward_options.KEY=VALUE" in result.output and "backbone.options.KEY=VALUE" in result.output


def test_cli_backbone_shortcuts_and_nested_settings(monkeypatch) -> None:
    """`--backbone/--model/--device` and `backbone.*` items build one BackboneConfig, as every stage does; the
    spelling of earlier versions (`backbone_options.KEY`) still reads; training settings are refused."""
    from typer.testing import CliRunner

    import unirl_kit.backbones.config as backbone_config
    import unirl_kit.rewards.server as server_mod
    from unirl_kit.backbones.config import BackboneConfig

    seen: dict[str, Any] = {}
    monkeypatch.setattr(server_mod, "serve_reward", lambda name, options, **kw: seen.update(options=options, **kw))
    monkeypatch.setattr(backbone_config, "build_backbone", lambda cfg: cfg)
    runner = CliRunner()
    result = runner.invoke(_cli(), ["serve", "reward", "--reward", "test-pixels", "--backbone", "janus", "--model", "M",
                                    "--device", "cpu", "backbone.options.k=1", "backbone.dtype=bf16", "scale=2"])
    assert result.exit_code == 0, result.output
    assert seen["backbone"] == BackboneConfig(name="janus", model="M", options={"k": "1"}, device="cpu", dtype="bf16")
    assert seen["options"] == {"scale": "2"}
    result = runner.invoke(_cli(), ["serve", "reward", "--reward", "test-pixels", "--backbone", "janus",
                                    "backbone_options.k=2"])
    assert result.exit_code == 0, result.output
    assert seen["backbone"] == BackboneConfig(name="janus", options={"k": "2"}, dtype="auto")
    result = runner.invoke(_cli(), ["serve", "reward", "--reward", "test-pixels", "backbone.name=janus",
                                    "backbone.fsdp=true"])
    assert result.exit_code == 2 and "backbone.fsdp: a training setting" in result.output
    result = runner.invoke(_cli(), ["serve", "reward", "--reward", "test-pixels", "backbone.options.k=1"])
    assert result.exit_code == 2 and "need --backbone" in result.output


# ---- hostile requests: bounded, and always answered in JSON ----

def raw_exchange(server: RewardServer, data: bytes) -> tuple[int, dict]:
    """Send bytes as they are (a request urllib would not make); the status and JSON body back."""
    import http.client

    host, port = server.server_address[:2]
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(data)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, json.loads(response.read())


def post_raw(server: RewardServer, body: bytes, path: str = "/score") -> tuple[int, dict]:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return raw_exchange(server, head.encode() + body)


def test_oversized_body_is_answered_413_in_json(serve) -> None:
    server = serve("test-pixels", max_request_bytes=10_000)
    status, body = post_raw(server, b"[" + b" " * 50_000 + b"]")
    assert status == 413 and "exceeds the server's limit of 10000 bytes" in body["error"]
    from unirl_kit.rewards.server import MAX_REQUEST_BYTES

    assert MAX_REQUEST_BYTES == 32 * 2**20  # the default: 256 MiB before


@pytest.mark.parametrize("levels", [40, 100_000])  # past the depth guard; past Python's recursion limit
def test_deeply_nested_json_gets_400(serve, levels: int) -> None:
    server = serve("test-pixels")
    status, body = post_raw(server, b"[" * levels + b"]" * levels)
    assert status == 400 and body["error"].startswith("request: JSON nested")


@pytest.mark.parametrize("number, reason", [
    ("9" * 30, "outside the 64-bit range"),
    ("-" + "9" * 100_000, "outside the 64-bit range"),  # past Python's 4300-digit conversion limit
    (str(2**63), "outside the 64-bit range"),
    ("NaN", "NaN is not valid JSON"),
    ("1e999", "out of range"),
])
def test_huge_or_non_finite_numbers_get_400(serve, number: str, reason: str) -> None:
    server = serve("test-pixels")
    request = dumps(encode_samples("test-pixels", make_samples(1))).replace(b'"prompt_index":0', f'"prompt_index":{number}'.encode())
    assert number.encode() in request
    status, body = post_raw(server, request)
    assert status == 400 and body["error"].startswith("request: malformed JSON") and reason in body["error"]
    assert len(body["error"]) < 1100  # the number is not echoed whole


def test_request_pixel_budget(serve) -> None:
    server = serve("test-pixels", max_request_pixels=3 * 64 * 64)
    status, _ = post_raw(server, dumps(encode_samples("test-pixels", make_samples(3))))
    assert status == 200
    status, body = post_raw(server, dumps(encode_samples("test-pixels", make_samples(4))))
    assert status == 400 and "request.samples[3]: the request's images pass 12,288 pixels" in body["error"]


def test_protocol_errors_are_json(serve) -> None:
    server = serve("test-pixels")
    status, body = raw_exchange(server, b"PUT /score HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert status == 501 and "HTTP 501" in body["error"]
    status, body = raw_exchange(server, b"GET /a b HTTP/1.1\r\n\r\n")
    assert status == 400 and "HTTP 400: Bad request syntax" in body["error"]
    status, body = raw_exchange(server, b"POST /score HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 411 and "Content-Length" in body["error"]
    status, body = raw_exchange(server, b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n")
    assert status == 400 and "bad Content-Length" in body["error"]


def test_stalled_body_gets_408(serve, monkeypatch) -> None:
    from unirl_kit.rewards.server import _Handler

    monkeypatch.setattr(_Handler, "timeout", 0.3)  # seconds a read may wait (60 in service)
    server = serve("test-pixels")
    status, body = raw_exchange(server, b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"a\"")
    assert status == 408 and "body not received in time (4 of 100 bytes" in body["error"]


def test_short_body_from_a_closing_client_gets_400(serve) -> None:
    server = serve("test-pixels")
    host, port = server.server_address[:2]
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"a\"")
        sock.shutdown(socket.SHUT_WR)
        reply = sock.makefile("rb").read()
    assert reply.startswith(b"HTTP/1.0 400") and b"body ended after 4 of 100 bytes" in reply


def test_a_bug_in_the_server_is_a_500_in_json(serve, monkeypatch, capsys) -> None:
    import unirl_kit.rewards.server as server_mod

    def broken(payload, max_total_pixels=None):
        raise RuntimeError("boom")

    monkeypatch.setattr(server_mod, "decode_samples", broken)
    server = serve("test-pixels")
    status, body = post_raw(server, dumps(encode_samples("test-pixels", make_samples(1))))
    assert status == 500 and body["error"] == "reward server failed: RuntimeError: boom"


def test_bodies_are_read_under_a_bound_on_concurrent_requests(serve, monkeypatch) -> None:
    """At most max_active requests hold a body (read, decoded or being scored) at once."""
    from unirl_kit.rewards.server import _Handler

    holding, peak, guard = [0], [0], threading.Lock()
    read, score = _Handler._read_samples, _Handler._score

    def counted_read(self, length):
        with guard:
            holding[0] += 1
            peak[0] = max(peak[0], holding[0])
        samples = read(self, length)
        if samples is None:
            with guard:
                holding[0] -= 1
        return samples

    def counted_score(self, samples):
        try:
            score(self, samples)
        finally:
            with guard:
                holding[0] -= 1

    monkeypatch.setattr(_Handler, "_read_samples", counted_read)
    monkeypatch.setattr(_Handler, "_score", counted_score)
    server = serve("test-pixels", {"delay_s": 0.05}, max_active=2)
    request = dumps(encode_samples("test-pixels", make_samples(2)))
    statuses: list[int] = []
    threads = [threading.Thread(target=lambda: statuses.append(post_raw(server, request)[0])) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 6
    assert peak[0] == 2  # concurrent clients did overlap, and no more than two held a body


def test_fifty_concurrent_clients_are_all_answered(serve) -> None:
    server = serve("test-pixels")
    assert server.request_queue_size == 128
    request = dumps(encode_samples("test-pixels", make_samples(1)))
    barrier, statuses = threading.Barrier(50), []

    def client() -> None:
        barrier.wait()
        try:
            statuses.append(post_raw(server, request)[0])
        except OSError as exc:  # a reset connection: what a backlog of 5 gave
            statuses.append(type(exc).__name__)

    threads = [threading.Thread(target=client) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 50


def test_connection_threads_are_capped_and_the_rest_get_503(serve, monkeypatch) -> None:
    """Silent clients hold every connection thread: the next connection is answered 503 in JSON from the
    accept loop (no new thread), and once they leave the server answers again."""
    import unirl_kit.rewards.server as server_mod

    monkeypatch.setattr(server_mod, "_THREAD_WAIT_S", 0.2)
    server = serve("test-pixels", max_threads=2)
    host, port = server.server_address[:2]
    silent = [socket.create_connection((host, port), timeout=10) for _ in range(2)]
    try:
        time.sleep(0.3)  # both accepted, their threads waiting on a request line
        before = threading.active_count()
        status, body = raw_exchange(server, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 503 and body["error"] == "server busy: 2 connections already open; retry later"
        status, body = post_raw(server, dumps(encode_samples("test-pixels", make_samples(1))))
        assert status == 503 and "busy" in body["error"]
        assert threading.active_count() == before
    finally:
        for sock in silent:
            sock.close()
    deadline = time.monotonic() + 5
    status, body = 503, {}
    while status == 503 and time.monotonic() < deadline:  # until the silent clients' threads have ended
        status, body = raw_exchange(server, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200 and body == {"ok": True, "reward": "test-pixels"}


def test_the_default_cap_is_64_threads(serve) -> None:
    assert serve("test-pixels").max_threads == 64
