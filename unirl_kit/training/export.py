"""A training run's exports: out/final (the merged model), out/adapter (LoRA runs: the peft adapter alone),
each with its model card. What the loop, `unirl generate` and the Hub read (see README, "Exports")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unirl_kit.training.common import Policy


def export_final(policy: Policy, out: Path, cfg: Any, stamp: dict[str, str], rank: int = 0,
                 last: dict[str, Any] | None = None) -> Path | None:
    """out/final: an HF-style folder the backbone loads (LoRA merged into the weights), and with LoRA
    out/adapter in peft's format; written by rank 0 (under FSDP every rank calls: the full weights are
    gathered first). `last` (the last step's metrics) goes into the model cards."""
    target = Path(out) / "final"
    if not _save_merged(policy, target, rank):
        return None
    base = recorded_base(cfg.backbone.model or getattr(policy.backbone, "source", None))
    card = {"cfg": cfg, "stamp": stamp, "base": base, "out": Path(out), "last": last}
    if policy.lora:
        from unirl_kit.backbones.adapters import save_adapter
        from unirl_kit.training.lora import peft_config

        adapter = save_adapter(policy.model, Path(out) / "adapter", peft_config(policy.model, cfg.lora), base)
        _card(adapter, policy, adapter=True, **card)
    _card(target, policy, adapter=False, **card)
    return target


def _save_merged(policy: Policy, target: Path, rank: int) -> bool:
    """The whole model (LoRA merged in, adapters dropped) into `target`; True on the rank that wrote it."""
    if policy.fsdp:
        from unirl_kit.training import fsdp

        state = fsdp.full_weights(policy.model)
        if rank == 0:
            policy.backbone.save(target, state_dict=state)
        return rank == 0
    if rank != 0:
        return False
    if not policy.lora:
        policy.backbone.save(target)
        return True
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in policy.model.modules() if isinstance(m, BaseTunerLayer)]
    for layer in layers:
        layer.merge()
    try:
        state = {k.replace(".base_layer.", "."): v for k, v in policy.model.state_dict().items() if "lora_" not in k}
        policy.backbone.save(target, state_dict=state)
    finally:
        for layer in layers:
            layer.unmerge()
    return True


def recorded_base(model: str | None) -> str | None:
    """The base as an adapter records it: a local folder as an absolute path (it is read from anywhere
    later), a hub id as given."""
    if model is None:
        return None
    return str(Path(model).resolve()) if Path(model).exists() else str(model)


def _card(folder: Path, policy: Policy, *, adapter: bool, cfg: Any, stamp: dict[str, str], base: str | None,
          out: Path, last: dict[str, Any] | None) -> None:
    from unirl_kit.config import run_settings
    from unirl_kit.training.card import eval_pointer, write_model_card

    name, trainer = cfg.backbone.name, stamp["config"]
    lora = cfg.lora
    recipe: dict[str, Any] = {"trainer": f"`unirl {trainer}`"}
    recipe.update({k: v for k, v in stamp.items() if k != "config"})
    for label, attr in (("target", "target"), ("loss type", "loss_type")):
        if hasattr(cfg, attr):
            recipe[label] = getattr(cfg, attr)
    recipe.update({"backbone": name, "base": f"`{base}`" if base else "the backbone's own weights",
                   "steps": cfg.run.steps, "learning rate": cfg.optim.lr, "seed": cfg.run.seed})
    if getattr(cfg, "rewards", None):
        recipe["rewards"] = ", ".join(cfg.rewards)
    if policy.lora:
        where = "this folder (peft format)" if adapter else "merged into these weights; the adapter alone: `../adapter`"
        recipe["LoRA"] = (f"r={lora.r}, alpha={lora.alpha}, dropout={lora.dropout}, on "
                          f"{', '.join(lora.target_modules)} of the language model; {where}")
    else:
        recipe["LoRA"] = "off (full fine-tuning)"
    tags = ["unirl-kit", name, trainer.split()[-1], *(v for k, v in stamp.items() if k != "config")]
    if adapter:
        library, tags, usage = "peft", [*tags, "peft", "lora"], _adapter_usage(name, base, folder)
    else:
        library = "transformers" if _is_transformers(policy.model) else "unirl-kit"
        tags = [*tags, "lora"] if policy.lora else tags
        usage = _final_usage(name, folder, library)
    write_model_card(folder, title=f"{out.name}: `unirl {trainer}` on {name}" + (" (LoRA adapter)" if adapter else ""),
                     base=base, library_name=library, tags=tags, recipe=recipe, settings=run_settings(cfg, trainer),
                     usage=usage, eval_note=eval_pointer(out), training=last)


def _is_transformers(model: Any) -> bool:
    from transformers import PreTrainedModel

    return isinstance(model, PreTrainedModel)


def _final_usage(name: str, folder: Path, library: str) -> str:
    text = (f"A whole model folder: `unirl generate --backbone {name} --model {folder} --prompts FILE --out DIR`, "
            f"`backbone.model={folder}` for a trainer or `unirl loop`, or in Python:\n\n```python\n"
            f"from unirl_kit.backbones.loading import load_backbone\n\n"
            f"backbone = load_backbone({name!r}, {str(folder)!r})\n```")
    if library == "transformers":
        text += f"\n\nIt is also a plain transformers folder (`from_pretrained({str(folder)!r})`)."
    return text


def _adapter_usage(name: str, base: str | None, folder: Path) -> str:
    return (f"A peft LoRA adapter for the base above. With unirl-kit, give the folder as the model "
            f"(`--model {folder}` or `backbone.model={folder}`): the base is loaded and the adapter merged in. "
            f"With peft, on the same torch module the backbone wraps:\n\n```python\nfrom peft import PeftModel\n"
            f"from unirl_kit.backbones.loading import load_backbone\n\n"
            f"backbone = load_backbone({name!r}, {base!r})  # the base model\n"
            f"backbone.model = PeftModel.from_pretrained(backbone.model, {str(folder)!r}).merge_and_unload()\n```")
