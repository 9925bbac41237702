"""LoRA runs export a peft-native adapter (out/adapter) beside the merged final/; an adapter folder loads
wherever a model folder does (training, resume, the loop); every final/ carries a model card."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unirl_kit.types import InputError

PROMPTS = ["a red circle", "two blue squares"]


def _grpo(model: Path, prompts: Path, out: Path, **over):
    from unirl_kit.config import load_config
    from unirl_kit.testing.rewards import BRIGHTNESS, register_test_rewards
    from unirl_kit.training.config import GRPOConfig

    register_test_rewards()
    items = {"prompts": str(prompts), "prompts_per_step": 2, "group_size": 2, "rewards": [BRIGHTNESS],
             "backbone.name": "janus", "backbone.model": str(model), "backbone.device": "cpu", "optim.lr": 1e-3,
             "optim.micro_batch": 4, "run.out": str(out), "run.steps": 2, "run.checkpoint_every": 1,
             "run.progress": False, "run.report_to": ["jsonl"], "sampling.cfg_scale": 2.0,
             "lora.enabled": True, "lora.r": 4, **over}
    return load_config(GRPOConfig, None, {}, [f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
                                              for k, v in items.items()])


@pytest.fixture(scope="module")
def lora_run(small_janus, prompts, tmp_path_factory) -> Path:
    from unirl_kit.training.grpo import run_grpo

    out = tmp_path_factory.mktemp("lora_adapter") / "run"
    run_grpo(_grpo(small_janus, prompts, out))
    return out


def _load(model: Path | str):
    from unirl_kit.backbones.loading import load_backbone

    return load_backbone("janus", str(model), device="cpu")


def _logprobs(backbone) -> torch.Tensor:
    tokens = torch.randint(0, backbone.codebook_size, (len(PROMPTS), backbone.num_image_tokens),
                           generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return backbone.image_logprobs(PROMPTS, tokens, 2.0)


def _front_matter(path: Path) -> dict:
    import yaml

    text = path.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("\n---", 1)[0][4:])


def test_the_adapter_folder_is_in_peft_format(lora_run, small_janus):
    folder = lora_run / "adapter"
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] is None and cfg["bias"] == "none"
    assert (cfg["r"], cfg["lora_alpha"], cfg["lora_dropout"]) == (4, 32, 0.0)
    assert cfg["base_model_name_or_path"] == str(small_janus.resolve()) and cfg["inference_mode"] is True
    assert cfg["target_modules"].startswith(r"model\.language_model\.")  # the vision tower's q_proj stays out
    keys = load_file(folder / "adapter_model.safetensors")
    assert keys and all(k.startswith("base_model.model.model.language_model.") for k in keys)
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) and ".default." not in k for k in keys)
    assert len(keys) == 2 * 2 * 4  # 2 layers x q, k, v, o x (A, B)


def test_peft_loads_the_adapter_onto_the_base_and_matches_the_merged_final(lora_run, small_janus):
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTunerLayer

    base, merged = _load(small_janus), _load(lora_run / "final")
    before = _logprobs(base)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        PeftModel.from_pretrained(base.model, str(lora_run / "adapter"))  # injects into base.model in place
    assert not [w for w in caught if "missing adapter keys" in str(w.message)]
    assert sum(isinstance(m, BaseTunerLayer) for m in base.model.modules()) == 8
    after, want = _logprobs(base), _logprobs(merged)
    torch.testing.assert_close(after, want, atol=1e-5, rtol=1e-5)
    assert (before - want).abs().max() > 1e-4  # the adapter changed something


def test_an_adapter_folder_loads_as_a_model(lora_run):
    from peft.tuners.tuners_utils import BaseTunerLayer

    loaded, merged = _load(lora_run / "adapter"), _load(lora_run / "final")
    assert not any(isinstance(m, BaseTunerLayer) for m in loaded.model.modules())  # merged, plain weights
    a, b = loaded.model.state_dict(), merged.model.state_dict()
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_an_adapter_peft_itself_saved_loads_as_peft_merges_it(small_janus, tmp_path):
    from peft import LoraConfig, get_peft_model

    ref = _load(small_janus)
    peft_model = get_peft_model(ref.model, LoraConfig(r=2, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                      init_lora_weights=False))  # random B: not a no-op
    peft_model.save_pretrained(str(tmp_path / "peft"))
    (tmp_path / "peft" / "README.md").unlink()
    cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(small_janus)
    (tmp_path / "peft" / "adapter_config.json").write_text(json.dumps(cfg))
    want = peft_model.merge_and_unload().state_dict()
    got = _load(tmp_path / "peft").model.state_dict()
    assert got.keys() == want.keys() and all(torch.allclose(got[k], want[k], atol=1e-6) for k in got)


def _edited_adapter(lora_run: Path, tmp_path: Path, **fields) -> Path:
    folder = tmp_path / "adapter"
    shutil.copytree(lora_run / "adapter", folder)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg.update(fields)
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize(("fields", "match"), [
    ({"base_model_name_or_path": None}, r"adapter_config.json: base_model_name_or_path is empty"),
    ({"base_model_name_or_path": "/no/such/base"}, r"adapter_config.json: base_model_name_or_path '/no/such/base'"),
    ({"peft_type": "IA3"}, r"adapter_config.json: peft_type is 'IA3'"),
])
def test_a_bad_adapter_config_is_one_line_naming_the_field(lora_run, tmp_path, fields, match):
    with pytest.raises(InputError, match=match) as err:
        _load(_edited_adapter(lora_run, tmp_path, **fields))
    assert "\n" not in str(err.value)


def test_an_adapter_on_another_base_is_refused_naming_the_file(lora_run, tmp_path):
    from unirl_kit.testing.tiny_janus import save_random_janus

    other = save_random_janus(tmp_path / "other", text_hidden=32, text_layers=2, image_size=32, seed=0)
    with pytest.raises(InputError, match=r"adapter_model.safetensors: tensor .* has shape .* does not fit this base"):
        _load(_edited_adapter(lora_run, tmp_path, base_model_name_or_path=str(other)))
    loop = _edited_adapter(lora_run, tmp_path / "x")
    cfg = json.loads((loop / "adapter_config.json").read_text())
    (loop / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": str(loop)}))
    with pytest.raises(InputError, match="leads back to this adapter"):
        _load(loop)


def test_training_from_an_adapter_folder_resumes_exactly(lora_run, prompts, tmp_path):
    """backbone.model = an adapter folder: the run trains on base + adapter, resumes exactly, and its own
    adapter names the first one as its base (a chain, which load_backbone follows)."""
    from unirl_kit.training.grpo import run_grpo

    start = lora_run / "adapter"
    run_grpo(_grpo(start, prompts, tmp_path / "straight"))
    run_grpo(_grpo(start, prompts, tmp_path / "split", **{"run.steps": 1}))
    run_grpo(_grpo(start, prompts, tmp_path / "split"), resume=True)
    a, b = (load_file(tmp_path / n / "final" / "model.safetensors") for n in ("straight", "split"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    cfg = json.loads((tmp_path / "split" / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(start.resolve())
    chained = _load(tmp_path / "split" / "adapter").model.state_dict()
    assert all(torch.allclose(chained[k], a[k], atol=1e-6) for k in a)


def test_every_final_has_a_model_card(lora_run, small_janus, prompts, tmp_path):
    import yaml

    from unirl_kit.training.grpo import run_grpo

    meta = _front_matter(lora_run / "final" / "README.md")
    assert meta["library_name"] == "transformers" and "base_model" not in meta  # a local base has no hub id
    assert {"unirl-kit", "janus", "grpo", "lora"} <= set(meta["tags"])
    text = (lora_run / "final" / "README.md").read_text()
    assert "`unirl train grpo`" in text and "../config.yaml" in text and "does not evaluate" in text
    settings = yaml.safe_load(text.split("```yaml\n", 1)[1].split("```", 1)[0])
    assert settings == yaml.safe_load((lora_run / "config.yaml").read_text())
    assert _front_matter(lora_run / "adapter" / "README.md")["library_name"] == "peft"
    full = tmp_path / "full"  # full fine-tuning: a card, no adapter
    run_grpo(_grpo(small_janus, prompts, full, **{"lora.enabled": False, "run.steps": 1}))
    assert not (full / "adapter").exists() and "| LoRA | off" in (full / "final" / "README.md").read_text()


def test_an_sft_final_has_a_card_too(small_janus, prompts, tmp_path):
    from unirl_kit.config import load_config
    from unirl_kit.training.config import SFTConfig
    from unirl_kit.training.sft import run_sft

    out = tmp_path / "sft"
    run_sft(load_config(SFTConfig, None, {}, [
        f"prompts={prompts}", "backbone.name=janus", f"backbone.model={small_janus}", "backbone.device=cpu",
        "prompts_per_step=2", "group_size=1", "run.steps=1", "run.progress=false", "run.report_to=[jsonl]",
        f"run.out={out}", "mode=und"]))
    meta = _front_matter(out / "final" / "README.md")
    assert {"sft", "und"} <= set(meta["tags"]) and "| mode | und |" in (out / "final" / "README.md").read_text()


def test_the_card_inherits_a_hub_base_and_points_at_the_loop_report(tmp_path):
    from unirl_kit.training.card import eval_pointer, hub_base

    (tmp_path / "prev").mkdir()
    (tmp_path / "prev" / "README.md").write_text("---\nbase_model: deepseek-community/Janus-Pro-1B\n---\n# x\n")
    assert hub_base(str(tmp_path / "prev")) == "deepseek-community/Janus-Pro-1B"
    assert hub_base("deepseek-community/Janus-Pro-7B") == "deepseek-community/Janus-Pro-7B"
    assert hub_base(str(tmp_path)) is None
    (tmp_path / "loop" / "round-002" / "train").mkdir(parents=True)
    (tmp_path / "loop" / "config.yaml").write_text("command: loop\n")
    note = eval_pointer(tmp_path / "loop" / "round-002" / "train")
    assert "round 2" in note and str(tmp_path / "loop" / "report.md") in note


def test_the_loop_starts_from_an_adapter_folder(lora_run, tmp_path):
    from unirl_kit.config import load_config
    from unirl_kit.loop.config import LoopConfig
    from unirl_kit.loop.run import run_loop

    start = lora_run / "adapter"
    cfg = load_config(LoopConfig, None, {}, [
        "backbone.name=janus", f"backbone.model={start}", "backbone.device=cpu", f"out={tmp_path / 'loop'}",
        "rounds=1", "n_train=4", "n_eval=2", "eval_group_size=2", "understanding=[imbalance]",
        "understanding_per_tag=1", "rewards=[geneval]", "progress=false"])
    cfg.grpo_overrides = ["run.steps=1", "prompts_per_step=2", "group_size=2", "rewards=[geneval-partial]",
                          "optim.micro_batch=4", "lora.enabled=true", "lora.r=4"]
    assert run_loop(cfg)["delta"] is not None
    trained = tmp_path / "loop" / "round-001" / "train"
    cfg_json = json.loads((trained / "adapter" / "adapter_config.json").read_text())
    assert cfg_json["base_model_name_or_path"] == str(start.resolve())
    assert "round 1 of the `unirl loop`" in (trained / "final" / "README.md").read_text()


def test_a_show_o_adapter_loads_with_peft_and_as_a_model(prompts, tmp_path):
    """Show-o's LoRA sits on `showo.model` (phi), not `model.language_model`: the same round trip."""
    from peft import PeftModel

    from unirl_kit.backbones.loading import load_backbone
    from unirl_kit.testing.tiny_showo import save_random_showo
    from unirl_kit.training.grpo import run_grpo

    model, out, opts = save_random_showo(tmp_path / "showo", seed=0), tmp_path / "run", {"timesteps": 4}
    run_grpo(_grpo(model, prompts, out, **{"backbone.name": "showo", "backbone.options": opts, "group_size": 3,
                                          "lora.target_modules": ["q_proj", "v_proj", "dense"], "optim.lr": 1e-2,
                                          "sampling.cfg_scale": 3.0, "run.checkpoint_every": 2}))
    base, merged, via = (load_backbone("showo", str(p), "cpu", options=opts)
                         for p in (model, out / "final", out / "adapter"))
    PeftModel.from_pretrained(base.model, str(out / "adapter"))
    batch = merged.generate(PROMPTS[:1], seeds=0)
    with torch.no_grad():
        want = merged.image_logprobs(PROMPTS[:1], batch.tokens, trajectory=batch.trajectory)
        for backbone in (base, via):
            got = backbone.image_logprobs(PROMPTS[:1], batch.tokens, trajectory=batch.trajectory)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert _front_matter(out / "final" / "README.md")["library_name"] == "unirl-kit"
