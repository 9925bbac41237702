"""The plugin registry (`unirl_kit.registry`): decorator and lazy registration, errors with did-you-mean,
no heavy imports for listing, and a third-party detector found through its entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid

import pytest

from unirl_kit.eval.geneval.detectors.shapes import ShapesDetector
from unirl_kit.registry import REGISTRIES, Registry, UnknownPluginError, load_target, registry
from unirl_kit.types import InputError

# ---------------------------------------------------------------- registration


def test_decorator_registration_and_build():
    reg = Registry("widgets", "test widgets")

    @reg.register("box")
    class Box:
        """A box widget.

        More text that is not the description.
        """

        def __init__(self, size: int = 1):
            self.size = size

    assert Box.__name__ == "Box"  # the decorator hands the class back unchanged
    assert reg.names() == ["box"]
    assert "box" in reg
    assert reg.get("box") is Box
    assert reg.describe() == [("box", "A box widget.", "builtin")]
    assert reg.build("box", size=3).size == 3


def test_explicit_registration_with_description():
    reg = Registry("widgets", "test widgets")

    def make(**kwargs):
        return kwargs

    reg.register("maker", make, description="makes things")
    assert reg.describe() == [("maker", "makes things", "builtin")]
    assert reg.build("maker", a=1) == {"a": 1}


@pytest.fixture
def lazy_module(tmp_path, monkeypatch):
    """A fresh importable module that no one has imported yet."""
    name = f"lazy_plugin_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent('''
        class Thing:
            """A lazily imported thing."""

            def __init__(self, level: int = 0):
                self.level = level
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_lazy_registration_imports_only_on_get(lazy_module):
    reg = Registry("widgets", "test widgets")
    reg.register("thing", f"{lazy_module}:Thing", description="listed without importing")
    reg.register("bare", f"{lazy_module}:Thing")
    assert reg.names() == ["bare", "thing"]
    assert ("thing", "listed without importing", "builtin") in reg.describe()
    assert lazy_module not in sys.modules
    cls = reg.get("thing")
    assert lazy_module in sys.modules
    assert cls.__name__ == "Thing" and cls is load_target(f"{lazy_module}:Thing")
    assert reg.build("thing", level=2).level == 2
    reg.get("bare")
    assert dict((n, d) for n, d, _ in reg.describe())["bare"] == "A lazily imported thing."


def test_lazy_target_must_name_an_object():
    with pytest.raises(ValueError, match="package.module:object"):
        load_target("json")
    assert load_target("json:dumps") is json.dumps
    assert load_target("os:path.join") is os.path.join


def test_duplicate_name_is_an_error():
    reg = Registry("widgets", "test widgets")

    def one():
        """One."""

    def two():
        """Two."""

    reg.register("w", one)
    reg.register("w", one)  # the very same object again is harmless
    with pytest.raises(ValueError, match="'w' is already registered"):
        reg.register("w", two)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("w")(two)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("w", "json:dumps")
    assert reg.get("w") is one


def test_unknown_name_has_did_you_mean_and_known_names():
    with pytest.raises(UnknownPluginError) as info:
        registry("detectors").get("shapez")
    msg = str(info.value)
    assert "unknown detector 'shapez'" in msg
    assert "did you mean 'shapes'" in msg
    assert "known:" in msg and "precomputed" in msg
    assert not msg.startswith('"')  # not quoted like a plain KeyError
    with pytest.raises(UnknownPluginError, match="did you mean 'shapes'"):
        registry("color_classifiers").get("shape")
    with pytest.raises(UnknownPluginError) as info:
        registry("detectors").get("zzzzzzzz")
    assert "did you mean" not in str(info.value)


def test_unknown_group_is_an_error_with_did_you_mean():
    with pytest.raises(UnknownPluginError) as info:
        registry("detector")
    assert "unknown plugin group 'detector'" in str(info.value)
    assert "did you mean 'detectors'" in str(info.value)
    assert set(REGISTRIES) >= {"backbones", "rewards", "detectors", "color_classifiers"}


def test_build_rejects_unknown_option_naming_accepted():
    with pytest.raises(InputError) as info:
        registry("detectors").build("shapes", max_colour_distance=10)
    msg = str(info.value)
    assert msg.startswith("detectors.shapes")
    assert "'max_colour_distance'" in msg and "max_color_distance" in msg


def test_builtins_are_listed():
    names = registry("detectors").names()
    assert {"shapes", "precomputed", "mask2former"} <= set(names)
    assert {"clip", "shapes", "precomputed"} <= set(registry("color_classifiers").names())
    sources = {name: source for name, _, source in registry("detectors").describe()}
    assert sources["shapes"] == "builtin" and sources["mask2former"] == "builtin"


# ---------------------------------------------------------------- no heavy imports for listing

PY_ENV = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}


def run_python(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=env or PY_ENV)
    assert proc.returncode == 0, proc.stderr
    return proc


def last_json_line(proc: subprocess.CompletedProcess) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_unirl_plugins_imports_no_builtin_plugin_module_nor_torch():
    proc = run_python(textwrap.dedent("""
        import json, sys
        from unirl_kit.cli import app
        try:
            app(["plugins"])
        except SystemExit as exc:
            assert not exc.code, exc.code
        mods = sorted(m for m in sys.modules
                      if m.startswith(("unirl_kit.eval.geneval.detectors.", "unirl_kit.eval.geneval.colors.")))
        print(json.dumps({"mods": mods, "torch": "torch" in sys.modules,
                          "transformers": "transformers" in sys.modules}))
    """))
    assert "mask2former" in proc.stdout  # it was listed ...
    seen = last_json_line(proc)
    assert "unirl_kit.eval.geneval.detectors.mask2former" not in seen["mods"]  # ... but not imported
    assert seen["mods"] == []
    assert seen["torch"] is False and seen["transformers"] is False


def test_unirl_help_does_not_import_torch():
    proc = run_python(textwrap.dedent("""
        import json, sys, unirl_kit.cli
        try:
            unirl_kit.cli.app(["--help"])
        except SystemExit:
            pass
        print(json.dumps({"torch": "torch" in sys.modules, "transformers": "transformers" in sys.modules}))
    """))
    assert "Usage" in proc.stdout
    assert last_json_line(proc) == {"torch": False, "transformers": False}


# ---------------------------------------------------------------- a third-party plugin via entry points

FAKE_MODULE = '''
"""A third-party detector package, installed only as a .dist-info folder on PYTHONPATH."""

from unirl_kit.eval.geneval.detectors import Detector
from unirl_kit.types import Detection
from unirl_kit.worlds.shapes.vocab import SHAPES


class SquareDetector(Detector):
    """Sees one full-image red square in every image."""

    classes = SHAPES
    default_color_classifier = "shapes"

    def detect(self, images, filenames):
        return [[Detection("square", (0.0, 0.0, float(img.width), float(img.height)), 0.99, None, "red")]
                for img in images]
'''


@pytest.fixture
def fakeplug(tmp_path):
    site = tmp_path / "site"
    dist = site / "fakeplug-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[unirl_kit.detectors]\n"
        "always-square = fakeplug_mod:SquareDetector\n"
        "shapes = fakeplug_mod:SquareDetector\n"  # may not replace the built-in of that name
        "broken = fakeplug_mod:DoesNotExist\n"  # must not hide the others
    )
    (site / "fakeplug_mod.py").write_text(FAKE_MODULE)
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    return site, env


def plugin_rows(stdout: str) -> dict[str, list[str]]:
    """name -> cells of the rich tables printed by `unirl plugins` (first line of each row)."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("│┃").split("│")]
        if len(cells) == 3 and cells[0]:
            rows.setdefault(cells[0], cells)
    return rows


def test_entry_point_plugin_is_listed(fakeplug, unirl_cli):
    _, env = fakeplug
    proc = unirl_cli("plugins", env=env)
    rows = plugin_rows(proc.stdout)
    assert rows["always-square"] == ["always-square", "Sees one full-image red square in every image.", "fakeplug"]
    assert rows["shapes"][2] == "builtin"  # built-ins win over an entry point of the same name
    assert rows["broken"][2] == "fakeplug" and "failed to load" in rows["broken"][1]
    assert rows["mask2former"][2] == "builtin"


def test_entry_point_plugin_is_loaded_in_process(fakeplug):
    _, env = fakeplug
    proc = run_python(textwrap.dedent("""
        import json
        from unirl_kit.registry import registry
        reg = registry("detectors")
        cls = reg.get("always-square")
        det = reg.build("always-square")
        print(json.dumps({"cls": cls.__module__ + ":" + cls.__name__, "shapes": reg.get("shapes").__module__,
                          "names": reg.names(), "colour": det.default_color_classifier}))
    """), env={**PY_ENV, **env})
    seen = last_json_line(proc)
    assert seen["cls"] == "fakeplug_mod:SquareDetector"
    assert seen["shapes"] == "unirl_kit.eval.geneval.detectors.shapes"
    assert {"always-square", "broken", "shapes"} <= set(seen["names"])
    assert seen["colour"] == "shapes"


def test_entry_point_detector_drives_eval_geneval(fakeplug, tmp_path, unirl_cli):
    _, env = fakeplug
    prompts = tmp_path / "prompts.jsonl"
    lines = [
        {"tag": "single_object", "include": [{"class": "square", "count": 1}], "prompt": "a photo of a square"},
        {"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a photo of a circle"},
        {"tag": "two_object", "include": [{"class": "square", "count": 1}, {"class": "circle", "count": 1}],
         "prompt": "a photo of a square and a circle"},
        {"tag": "counting", "include": [{"class": "square", "count": 2}],
         "exclude": [{"class": "square", "count": 3}], "prompt": "a photo of two squares"},
    ]
    prompts.write_text("".join(json.dumps(line) + "\n" for line in lines))
    images, out = tmp_path / "images", tmp_path / "out"
    unirl_cli("render", prompts, "--out", images, "--images-per-prompt", "2", "--size", "64")
    unirl_cli("eval", "geneval", images, "--detector", "always-square", "--out", out, env=env)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 8
    verdicts = {(r["prompt"], r["filename"].rsplit("/", 1)[-1]): r["correct"] for r in rows}
    assert verdicts == {
        ("a photo of a square", "0000.png"): True, ("a photo of a square", "0001.png"): True,
        ("a photo of a circle", "0000.png"): False, ("a photo of a circle", "0001.png"): False,
        ("a photo of a square and a circle", "0000.png"): False,
        ("a photo of a square and a circle", "0001.png"): False,
        ("a photo of two squares", "0000.png"): False, ("a photo of two squares", "0001.png"): False,
    }
    for r in rows:  # every verdict came from the plugin's single full-image square
        assert json.loads(r["details"]) == {"square": [[0.0, 0.0, 64.0, 64.0, 0.99]]}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tags"]["single_object"]["score"] == 0.5
    assert summary["overall"] == pytest.approx(0.5 / 3)
    # and the default `shapes` detector, on the same images, gets every clean render right
    unirl_cli("eval", "geneval", images, "--out", tmp_path / "out_shapes")
    assert json.loads((tmp_path / "out_shapes" / "summary.json").read_text())["overall"] == 1.0


def test_cli_unknown_detector_has_did_you_mean(tiny_geneval_dir, tmp_path, unirl_cli):
    proc = unirl_cli("eval", "geneval", tiny_geneval_dir, "--detector", "shapez", "--out", tmp_path / "o",
                     check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "did you mean 'shapes'" in lines[0]


def test_a_detector_plugin_missing_a_member_fails_in_one_line(tmp_path):
    """A plugin class that does not subclass Detector and lacks `check_filenames` is named, with the fix."""
    from unirl_kit.eval.geneval.detectors import check_detector

    class Bare:
        classes = None
        default_color_classifier = "shapes"

        def detect(self, images, filenames):
            return [[] for _ in images]

    with pytest.raises(InputError, match=r"detector 'bare' \(.*Bare\) lacks check_filenames; subclass "
                                         r"unirl_kit.eval.geneval.detectors.Detector"):
        check_detector(Bare(), "bare")
    assert check_detector(ShapesDetector(), "shapes").check_filenames(["x/0.png"]) is None
