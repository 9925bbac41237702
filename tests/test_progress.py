"""Progress without a terminal (nohup, SLURM, CI): plain `logging` lines every $UNIRL_LOG_EVERY_S
seconds and at the end, with done/total, rate and ETA; a bar on a terminal; and the generate bar moving
inside one batch of images."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest

from unirl_kit import progress
from unirl_kit.progress import Progress, log_every_s
from unirl_kit.types import InputError

pytest_plugins = ["_janus_fixtures"]


@pytest.fixture
def no_terminal(monkeypatch):
    monkeypatch.setattr(progress, "interactive", lambda: False)
    monkeypatch.setenv("UNIRL_LOG_EVERY_S", "0.02")


def _messages(caplog, name: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == name]


def test_a_log_gets_periodic_lines_and_one_at_the_end(no_terminal, caplog):
    with caplog.at_level(logging.INFO, logger="unirl_kit.stage"), Progress("stage") as p:
        task = p.task("work", 4, "images")
        time.sleep(0.1)  # no work done yet: the lines say so, with no rate
        task.advance(1)
        time.sleep(0.15)  # long enough for several periodic lines
        task.update(4, info="last batch")
    lines = _messages(caplog, "unirl_kit.stage")
    assert lines[0] == "work: 0/4 images (0%)"
    middle = [ln for ln in lines[1:-1] if ln.startswith("work: 1/4 images (25%)")]
    assert len(middle) >= 2 and all("ETA " in ln and ("images/s" in ln or "s/image" in ln) for ln in middle)
    assert lines[-1].startswith("work: 4/4 images (100%)") and "done in" in lines[-1]
    assert lines[-1].endswith("last batch")
    assert not any(t.name == "unirl_kit.stage" for t in threading.enumerate())  # the timer has stopped


def test_a_terminal_gets_a_bar_and_no_log_lines(monkeypatch, caplog):
    monkeypatch.setattr(progress, "interactive", lambda: True)
    with caplog.at_level(logging.INFO, logger="unirl_kit.stage"), Progress("stage") as p:
        p.task("work", 2).advance(2)
        assert p.mode == "bar"
    assert not _messages(caplog, "unirl_kit.stage")


def test_disabled_is_silent_and_a_bad_interval_is_one_line(no_terminal, monkeypatch, caplog):
    with caplog.at_level(logging.INFO), Progress("stage", enabled=False) as p:
        p.task("work", 3).advance(3)
    assert not caplog.records
    monkeypatch.setenv("UNIRL_LOG_EVERY_S", "soon")
    with pytest.raises(InputError, match="UNIRL_LOG_EVERY_S: expected a positive number of seconds, got 'soon'"):
        log_every_s()
    monkeypatch.setenv("UNIRL_LOG_EVERY_S", "")
    assert log_every_s() == 30.0


def test_generate_advances_per_image_inside_a_batch(tiny_janus, tmp_path, no_terminal, monkeypatch, caplog):
    """One batch of 16 holds all 6 images: the count still moves while it is drawn (issue 18: the bar
    sat at 0/6 until the end), and the log shows the stage's lines."""
    from unirl_kit.backbones.config import BackboneConfig, SamplingConfig
    from unirl_kit.generation.run import GenerateConfig, run_generate

    seen: list[float] = []
    changed = Progress.changed
    monkeypatch.setattr(Progress, "changed", lambda self, task: (seen.append(task.completed), changed(self, task)))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"tag": "single_object", "include": [{"class": c, "count": 1}],
                                           "prompt": f"a photo of a {c}"}) + "\n" for c in ("circle", "square", "star")))
    cfg = GenerateConfig(backbone=BackboneConfig(name="janus", model="unused", device="cpu"),
                         sampling=SamplingConfig(cfg_scale=2.0), prompts=str(prompts), out=str(tmp_path / "out"),
                         group_size=2, batch_size=16)
    with caplog.at_level(logging.INFO, logger="unirl_kit.generate"):
        run_generate(cfg, tiny_janus)
    assert seen[-1] == 6 and any(0 < x < 6 for x in seen) and seen == sorted(seen)
    assert {int(x) for x in seen} == set(range(7))  # every count of images from 0 to 6 shown
    lines = _messages(caplog, "unirl_kit.generate")
    assert lines[-1].startswith("generate: 6/6 images (100%)") and "done in" in lines[-1]
