"""The model card (README.md) of every exported folder: what the Hugging Face Hub reads (YAML front matter:
base_model, library_name, tags) and what a reader needs to trust the weights (recipe, settings, results).

One helper for every trainer's `final/` and LoRA `adapter/`, so all exports describe themselves the same way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from unirl_kit.backbones.loading import is_hub_id

CARD = "README.md"
_ROUND = re.compile(r"^round-(\d+)$")


def card_metadata(folder: Path) -> dict[str, Any]:
    """The YAML front matter of a folder's README.md ({} when there is none or it does not parse)."""
    path = Path(folder) / CARD
    try:
        text = path.read_text(encoding="utf-8") if path.is_file() else ""
        head = text.split("\n---", 1)[0][4:] if text.startswith("---\n") else ""
        meta = yaml.safe_load(head) if head else {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return meta if isinstance(meta, dict) else {}


def hub_base(base: str | None) -> str | None:
    """The hub id these weights descend from: `base` itself, or the one the base folder's own card names
    (a previous round's export); None when only a local folder is known (the Hub wants a model id there)."""
    if not base:
        return None
    if is_hub_id(base):
        return base
    found = card_metadata(Path(base)).get("base_model")
    return found if isinstance(found, str) and is_hub_id(found) else None


def eval_pointer(out: Path) -> str:
    """Where this run's weights get evaluated, for a trainer that evaluates nothing itself."""
    out = Path(out).resolve()
    match = _ROUND.match(out.parent.name)
    loop = out.parent.parent
    if match and (loop / "config.yaml").is_file():
        return (f"The trainer does not evaluate. This is round {int(match.group(1))} of the `unirl loop` in "
                f"`{loop}`: the loop evaluates `{out.parent / 'train' / 'final'}` after the round's training, "
                f"and its GenEval and understanding numbers per round are in `{loop / 'report.md'}` "
                "(and `report.json`).")
    return ("The trainer does not evaluate. Run `unirl generate` with this folder as the model, then "
            "`unirl eval geneval` and `unirl eval understanding`; or `unirl loop`, which evaluates every round "
            "and writes `report.md` in its output folder.")


def _table(rows: Mapping[str, Any], head: tuple[str, str]) -> str:
    lines = [f"| {head[0]} | {head[1]} |", "|---|---|"]
    lines += [f"| {k} | {_cell(v)} |" for k, v in rows.items()]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def write_model_card(folder: Path, *, title: str, base: str | None, library_name: str, tags: list[str],
                     recipe: Mapping[str, Any], settings: Mapping[str, Any], usage: str,
                     evals: Mapping[str, float] | None = None, eval_note: str = "",
                     training: Mapping[str, Any] | None = None) -> Path:
    """folder/README.md: front matter, then recipe, how to load, evaluation (a table of `evals`, else
    `eval_note`), the last training step's numbers, and the resolved settings (also ../config.yaml)."""
    meta: dict[str, Any] = {}
    if (hub := hub_base(base)) is not None:
        meta["base_model"] = hub
    source = f"`{base}`" if base else "the backbone's default weights"
    meta.update({"library_name": library_name, "tags": list(dict.fromkeys(tags))})
    parts = ["---\n" + yaml.safe_dump(meta, sort_keys=False) + "---", f"# {title}",
             f"Trained with unirl-kit (`unirl_kit`) from {source}.",
             "## Recipe", _table(recipe, ("setting", "value")), "## How to load", usage, "## Evaluation",
             _table(evals, ("metric", "value")) if evals else eval_note]
    numbers = {k: v for k, v in (training or {}).items()
               if isinstance(v, int | float) and not isinstance(v, bool) and not k.startswith("time/") and k != "images_per_s"}
    if numbers:
        parts += ["## Training, last step", _table(numbers, ("metric", "value"))]
    parts += ["## Configuration", "The resolved settings of the run (also `../config.yaml`, beside this folder):",
              "```yaml\n" + yaml.safe_dump(dict(settings), sort_keys=False) + "```"]
    path = Path(folder) / CARD
    path.write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    return path
