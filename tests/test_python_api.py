"""The Python API: the README's example runs as written, and `import unirl_kit` stays light."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "the README's Python API section has no python code block"
    return blocks[0]


def test_readme_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(_readme_example(), "README.md[Python API]", "exec"), {"__name__": "__readme__"})
    summary = json.loads((tmp_path / "geneval" / "summary.json").read_text())
    assert summary["total_prompts"] == 2 and summary["total_images"] == 2
    assert 0.0 <= summary["overall"] <= 1.0
    assert len((tmp_path / "prompts.jsonl").read_text().splitlines()) == 2
    assert str(summary["overall"]) in capsys.readouterr().out


def test_import_does_not_import_torch():
    code = ("import sys, unirl_kit; assert unirl_kit.__version__; "
            "from unirl_kit import GenerateConfig, GRPOConfig, LoopConfig, generate, self_improve; "
            "heavy = sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules); print(heavy)")
    out = subprocess.run([sys.executable, "-c", "import sys, unirl_kit; print('torch' in sys.modules)"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "torch" not in out


def test_config_forms_agree(tmp_path):
    import unirl_kit
    from unirl_kit import GenerateConfig, InputError
    from unirl_kit.api import resolve_config

    (tmp_path / "g.yaml").write_text("group_size: 2\nseed: 5\n")
    from_file = resolve_config(GenerateConfig, tmp_path / "g.yaml", ["seed=7"], out=tmp_path / "o", batch_size=None)
    assert (from_file.group_size, from_file.seed, from_file.out, from_file.batch_size) == (2, 7, str(tmp_path / "o"), 16)
    obj = GenerateConfig(group_size=3)
    assert resolve_config(GenerateConfig, obj) is obj
    changed = resolve_config(GenerateConfig, obj, ["sampling.top_k=5"], backbone={"options": {"chat_template": True}})
    assert (changed.group_size, changed.sampling.top_k, changed.backbone.options) == (3, 5, {"chat_template": True})
    assert changed.backbone.dtype == "auto" and changed.backbone.name == "tiny-shapes"  # the rest kept
    assert obj.sampling.top_k is None  # the caller's object is left alone
    flat = resolve_config(GenerateConfig, obj, ["top_k=5"], backbone_options={"chat_template": True}, model="M")
    assert (flat.sampling.top_k, flat.backbone.options, flat.backbone.model) == (5, {"chat_template": True}, "M")
    with pytest.raises(InputError, match="group_sise"):
        resolve_config(GenerateConfig, None, group_sise=2)
    with pytest.raises(TypeError, match="GenerateConfig"):
        resolve_config(GenerateConfig, {"group_size": 2})
    with pytest.raises(InputError, match="prompts"):
        unirl_kit.generate(out=str(tmp_path / "x"))  # no prompts: the CLI's one-line error
    assert callable(unirl_kit.self_improve)
    assert sorted(unirl_kit.__all__) == sorted(["__version__", *unirl_kit._LAZY])
    for name in unirl_kit.__all__:
        assert getattr(unirl_kit, name) is not None
    assert (ROOT / "unirl_kit" / "py.typed").exists()
