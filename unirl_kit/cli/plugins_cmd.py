"""`unirl plugins`: every plugin group with names and one-line descriptions."""

from __future__ import annotations

import typer


def plugins() -> None:
    """List every plugin group (built-ins and entry points from other packages)."""
    from rich.console import Console
    from rich.table import Table

    from unirl_kit.registry import REGISTRIES, registry

    console = Console()
    for group in REGISTRIES:
        reg = registry(group)
        table = Table(title=f"{group}: {reg.description}", title_justify="left")
        table.add_column("name")
        table.add_column("description")
        table.add_column("from")
        rows = reg.describe()
        for name, desc, source in rows:
            table.add_row(name, desc, source)
        if not rows:
            table.add_row("(none yet)", "", "")
        console.print(table)


def register(app: typer.Typer) -> None:
    app.command("plugins")(plugins)
