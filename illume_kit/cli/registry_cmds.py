"""Torch-free verbs that look at the registry: plugins, list, show, recipes, schema."""

from __future__ import annotations

import json
from pathlib import Path

from illume_kit.core.registry import ROLE_ALIASES, ROLES


def _registry():
    from illume_kit.core.plugins import get_registry

    return get_registry()


def cmd_plugins(args) -> int:
    from rich.markup import escape
    from rich.table import Table

    from illume_kit.cli.output import console
    from illume_kit.core.plugins import get_manager

    reg = _registry()
    infos = list(get_manager().infos.values())
    if args.json:
        console.print_json(json.dumps([i.__dict__ for i in infos]))
        return 0
    t = Table(title="illume-kit plugins")
    for col in ("plugin", "distribution", "version", "status", "components"):
        t.add_column(col)
    for i in infos:
        status = {
            "ok": "[green]ok[/]",
            "disabled": "[yellow]disabled[/]",
            "conflict": f"[yellow]conflict[/]: {escape(i.reason)}",
        }.get(i.status, f"[red]failed[/]: {escape(i.reason)}")
        t.add_row(escape(i.name), escape(i.dist), escape(i.version), status, ", ".join(i.components))
    console.print(t)
    if reg.failed:
        console.print(
            f"[yellow]{len(reg.failed)} plugin(s) failed to load; the rest work. Use --strict to make this an error.[/]"
        )
    if reg.conflicts:
        console.print(
            f"[yellow]{len(reg.conflicts)} plugin(s) provide names another plugin already serves; those "
            "components are withdrawn, the rest work. Use --strict to make this an error.[/]"
        )
    return 0


def _role(name: str) -> str:
    role = ROLE_ALIASES.get(name, name)
    if role not in ROLES:
        raise ValueError(f"unknown role {name!r} (valid: {', '.join(ROLES)})")
    return role


def cmd_list(args) -> int:
    from rich.table import Table

    from illume_kit.cli.output import console

    reg = _registry()
    roles = [_role(args.role)] if args.role else list(ROLES)
    rows = [s for r in roles for s in reg.specs(r)]
    if args.json:
        console.print_json(
            json.dumps(
                [
                    {"role": s.role, "name": s.name, "summary": s.summary, "dist": s.dist, "version": s.dist_version}
                    for s in rows
                ]
            )
        )
        return 0
    # names and summaries only: presets and params live in each component's params module, which
    # `show ROLE NAME` imports (importing all of them here would double list's start-up time)
    t = Table(title="components (presets and params: illume-kit show ROLE NAME)")
    for col in ("role", "name", "provider", "summary"):
        t.add_column(col, overflow="fold")
    for s in rows:
        t.add_row(s.role, s.name, f"{s.dist} {s.dist_version}", s.summary)
    console.print(t)
    return 0


def cmd_show(args) -> int:
    from rich.table import Table

    from illume_kit.cli.output import console
    from illume_kit.core import params_digest

    spec = _registry().get(_role(args.role), args.name)
    info = params_digest.cached(spec) or params_digest.render(spec)
    presets = info["presets"]
    if args.json:
        console.print_json(
            json.dumps(
                {
                    "role": spec.role,
                    "name": spec.name,
                    "dist": spec.dist,
                    "version": spec.dist_version,
                    "schema": info["schema"],
                    "presets": presets,
                }
            )
        )
        return 0
    console.print(f"[bold]{spec.role} {spec.name}[/] — {spec.summary}")
    console.print(f"provider: {spec.dist} {spec.dist_version} (plugin {spec.plugin})")
    t = Table(title="params")
    for col in ("key", "type", "default", "description"):
        t.add_column(col, overflow="fold")
    for row in info["fields"]:
        t.add_row(*row)
    console.print(t)
    vocab = info["schema"].get("x-vocabulary")
    if vocab:  # the words a dataset's texts use: what a model trained on it can be asked
        v = Table(title="vocabulary (captions, questions and edit instructions use only these)")
        v.add_column("kind")
        v.add_column("words and patterns", overflow="fold")
        for kind, words in vocab:
            v.add_row(kind, "\n".join(words) if any("{" in w or "?" in w for w in words) else ", ".join(words))
        console.print(v)
    if presets:
        p = Table(title="presets")
        p.add_column("preset")
        p.add_column("params", overflow="fold")
        for name, vals in presets.items():
            p.add_row(name, ", ".join(f"{k}={v}" for k, v in vals.items()))
        console.print(p)
    return 0


def shipped_recipes() -> list[tuple[str, Path]]:
    from illume_kit.core.recipe import shipped_recipes as shipped

    return shipped(_registry())


def cmd_recipes(args) -> int:
    from rich.table import Table

    from illume_kit.cli.output import console
    from illume_kit.core import yamlio

    t = Table(title="shipped recipes (use a name wherever a recipe file goes: illume-kit compose NAME)")
    for col in ("recipe", "description"):
        t.add_column(col, overflow="fold")
    for name, path in shipped_recipes():
        try:
            desc = (yamlio.load_file(path) or {}).get("description", "")
        except Exception:
            desc = "[red]unreadable[/]"
        t.add_row(name, str(desc))
    console.print(t)
    return 0


def cmd_schema(args) -> int:
    from illume_kit.core.recipe import recipe_json_schema

    print(json.dumps(recipe_json_schema(), indent=2))
    return 0


def register(sub) -> None:
    p = sub.add_parser("plugins", help="installed plugins, their distribution, version and status")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plugins)
    p = sub.add_parser("list", help="registered components, optionally of one role")
    p.add_argument("role", nargs="?", help=f"one of: {', '.join(ROLES)}")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("show", help="a component's params schema, defaults, docs, presets and provider")
    p.add_argument("role")
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)
    p = sub.add_parser("recipes", help="shipped recipes")
    p.set_defaults(func=cmd_recipes)
    p = sub.add_parser("schema", help="print the recipe JSON Schema (for editor completion)")
    p.set_defaults(func=cmd_schema)
