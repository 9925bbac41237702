"""Reward throughput, measured side by side in one run, on the same rendered samples.

1. `self-qa` with the tiny-shapes backbone on CPU: samples/s.
2. `geneval` with the shapes detector, in-process: samples/s.
3. `geneval` through a loopback reward server started in this process (`remote`): samples/s and
   the overhead ratio remote / in-process (seconds for the same samples; 1.0 = free), plus whether
   the scores are identical.
4. The same server under load: 1, 10 and 50 clients posting at once (each its requests in turn, no
   retries): requests/s, errors by kind (an HTTP status or a reset connection) and latency.

python benchmarks/reward_throughput.py [--size smoke|small|full] [--json OUT.json]   (smoke: seconds)
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Any

# samples for self-qa, samples for geneval, repeats (best of), batch size, requests per load client
SIZES = {"smoke": (8, 64, 1, 8, 2), "small": (32, 512, 3, 32, 4), "full": (128, 2048, 3, 32, 8)}
CLIENTS = (1, 10, 50)
LOAD_BATCH = 4  # samples per load request: small, so the numbers are the server's, not the detector's


def _samples(n: int, seed: int = 0) -> list:
    """Clean shapes-world renders of `n` prompts (every tag, with question and answer)."""
    import numpy as np

    from unirl_kit.prompts.generate import generate_prompts
    from unirl_kit.rewards.base import Sample
    from unirl_kit.worlds.shapes.render import render_scene

    rng = np.random.default_rng(seed)
    specs = generate_prompts("shapes", n, seed)
    return [Sample(spec, render_scene(spec, rng)[0], prompt_index=i) for i, spec in enumerate(specs)]


def _time(name: str, reward: Any, samples: list, batch: int, repeats: int) -> tuple[float, list[float]]:
    """Best-of-`repeats` seconds to score all samples in batches, and the scores."""
    from unirl_kit.rewards.base import call_reward

    best, scores = float("inf"), []
    for _ in range(repeats):
        t0 = time.perf_counter()
        scores = []
        for start in range(0, len(samples), batch):
            scores += call_reward(name, reward, samples[start:start + batch]).scores
        best = min(best, time.perf_counter() - t0)
    return best, scores


def _self_qa(samples: list, batch: int, repeats: int) -> dict:
    from unirl_kit.registry import registry
    from unirl_kit.rewards.base import build_rewards

    t0 = time.perf_counter()
    backbone = registry("backbones").build("tiny-shapes", device="cpu")
    load_s = time.perf_counter() - t0
    name, _, reward = build_rewards(["self-qa"], backbone=backbone).parts[0]
    _time(name, reward, samples[:2], batch, 1)  # warm-up: first-call allocations
    secs, scores = _time(name, reward, samples, batch, repeats)
    return {"samples": len(samples), "seconds": secs, "samples_per_s": len(samples) / secs,
            "backbone_load_s": load_s, "mean_score": sum(scores) / len(scores)}


def _geneval(samples: list, batch: int, repeats: int) -> dict:
    from unirl_kit.rewards.base import build_rewards
    from unirl_kit.rewards.remote import RemoteReward
    from unirl_kit.rewards.server import make_reward_server

    name, _, local = build_rewards(["geneval"]).parts[0]
    server = make_reward_server("geneval", port=0, log_requests=False)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        remote = RemoteReward(server.url, batch_size=batch, retries=0)
        _time(name, local, samples[:batch], batch, 1)  # warm-up both paths
        _time("remote", remote, samples[:batch], batch, 1)
        rows = {}
        for _ in range(repeats):  # alternate, so drift in the machine's load hits both alike
            for label, rname, reward in (("in_process", name, local), ("remote", "remote", remote)):
                secs, scores = _time(rname, reward, samples, batch, 1)
                if label not in rows or secs < rows[label][0]:
                    rows[label] = (secs, scores)
    finally:
        server.shutdown()
        server.server_close()
    n = len(samples)
    (local_s, local_scores), (remote_s, remote_scores) = rows["in_process"], rows["remote"]
    return {"samples": n, "batch_size": batch,
            "in_process": {"seconds": local_s, "samples_per_s": n / local_s},
            "remote": {"seconds": remote_s, "samples_per_s": n / remote_s},
            "overhead_ratio": remote_s / local_s, "overhead_ms_per_sample": 1000 * (remote_s - local_s) / n,
            "identical_scores": local_scores == remote_scores, "mean_score": sum(local_scores) / n}


def _client(url: str, body: bytes, requests: int, barrier: threading.Barrier, results: list) -> None:
    """One load client: `requests` POSTs in turn; (seconds, None) or (seconds, error kind) each."""
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    barrier.wait()
    for _ in range(requests):
        t0, error = time.perf_counter(), None
        request = urllib.request.Request(url + "/score", data=body, headers={"Content-Type": "application/json"})
        try:
            with opener.open(request, timeout=120) as response:
                json.loads(response.read())
        except urllib.error.HTTPError as exc:
            error = f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:  # reset, refused, timed out, not JSON
            error = type(exc).__name__
        results.append((time.perf_counter() - t0, error))


def _load_level(url: str, body: bytes, clients: int, requests: int) -> dict:
    """`clients` threads released together; requests/s over the wall time of all of them."""
    barrier, results, threads = threading.Barrier(clients + 1), [], []
    for _ in range(clients):
        threads.append(threading.Thread(target=_client, args=(url, body, requests, barrier, results)))
        threads[-1].start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    errors: dict[str, int] = {}
    for _, error in results:
        if error is not None:
            errors[error] = errors.get(error, 0) + 1
    latencies = sorted(s for s, _ in results)
    return {"clients": clients, "requests": len(results), "errors": sum(errors.values()), "error_kinds": errors,
            "seconds": wall, "requests_per_s": len(results) / wall,
            "latency_ms_p50": 1000 * latencies[len(latencies) // 2], "latency_ms_max": 1000 * latencies[-1]}


def _server_load(samples: list, requests: int) -> dict:
    """A loopback `geneval` server under 1, 10 and 50 concurrent clients, each sending the same request."""
    from unirl_kit.rewards.server import make_reward_server
    from unirl_kit.rewards.wire import dumps, encode_samples

    server = make_reward_server("geneval", port=0, log_requests=False)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        body = dumps(encode_samples("geneval", samples[:LOAD_BATCH]))
        return {"batch_size": LOAD_BATCH, "request_bytes": len(body),
                "levels": [_load_level(server.url, body, n, requests) for n in CLIENTS]}
    finally:
        server.shutdown()
        server.server_close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    n_qa, n_gen, repeats, batch, load_requests = SIZES[args.size]
    report: dict = {"benchmark": "reward_throughput", "size": args.size}
    t0 = time.perf_counter()
    samples = _samples(max(n_qa, n_gen))
    print(f"rendered {len(samples)} samples in {time.perf_counter() - t0:.2f}s")
    row = report["self-qa"] = _self_qa(samples[:n_qa], batch, repeats)
    print(f"self-qa (tiny-shapes, CPU, batch {batch}): {row['samples']} samples in {row['seconds']:.2f}s = "
          f"{row['samples_per_s']:.2f} samples/s; mean score {row['mean_score']:.3f} "
          f"(backbone load {row['backbone_load_s']:.1f}s)")
    row = report["geneval"] = _geneval(samples[:n_gen], batch, repeats)
    print(f"geneval (shapes detector, batch {batch}): in-process {row['in_process']['samples_per_s']:.0f} "
          f"samples/s, remote via loopback server {row['remote']['samples_per_s']:.0f} samples/s; "
          f"overhead ratio remote/in-process {row['overhead_ratio']:.2f} "
          f"({row['overhead_ms_per_sample']:.2f} ms/sample); identical scores: {row['identical_scores']}; "
          f"mean score {row['mean_score']:.3f}")
    row = report["server_load"] = _server_load(samples, load_requests)
    for level in row["levels"]:
        kinds = ", ".join(f"{k} x{v}" for k, v in sorted(level["error_kinds"].items())) or "none"
        print(f"server load, {level['clients']:>2} concurrent clients (geneval, batch {row['batch_size']}): "
              f"{level['requests']} requests, {level['requests_per_s']:.0f} requests/s, "
              f"{level['errors']} errors ({kinds}); latency p50 {level['latency_ms_p50']:.0f} ms, "
              f"max {level['latency_ms_max']:.0f} ms")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
