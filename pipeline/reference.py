"""Reference pages generated from the code: every stages.yaml key from the configuration's
pydantic models, every command and option from the click command.

``python -m pipeline.reference`` rewrites the generated part of each page of
:data:`GENERATED_PAGES` (between its marker line and :data:`END_MARKER`), so the pages read the
same on GitHub and on the site; a test fails when a page differs from what the code generates
now. A key's meaning is its attribute docstring in :mod:`pipeline.config`, an option's its
``help``.
"""

from __future__ import annotations

import inspect
import textwrap
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from .config import PipelineConfig
from .config.heads import DenseParams, HeadConfig

#: What a ``dict[str, Section]`` key is called in a path (``stages.heads.models.<name>``).
NAME = "<name>"


@dataclass(frozen=True)
class KeyDoc:
    """One key of stages.yaml: its dotted path, type, default (as YAML) and meaning."""

    path: str
    type: str
    default: str | None     # None: a section, whose keys have the defaults
    description: str
    section: bool = False   # a mapping of further keys, documented in its own table
    owner: str = ""         # the configuration class that declares the key


def _type_name(annotation: Any) -> str:
    """A YAML-minded name of a type annotation: ``int``, ``one of a, b``, ``list of str``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Literal:
        return "one of " + ", ".join(map(str, args)) if len(args) > 1 else str(args[0])
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin in (list, tuple):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return "[" + ", ".join(_type_name(a) for a in args) + "]"
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping of {_type_name(args[1])}" if args else "mapping"
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return "section"
    if annotation is Path:
        return "path"
    if annotation is Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def _yaml(value: Any) -> str:
    """``value`` as it would be written in stages.yaml (flow style, one line)."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", exclude_defaults=True)
    elif isinstance(value, dict):
        value = {k: v.model_dump(mode="json", exclude_defaults=True)
                 if isinstance(v, BaseModel) else v for k, v in value.items()}
    if isinstance(value, (Path, tuple)):
        value = str(value) if isinstance(value, Path) else list(value)
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip() \
        .removesuffix("\n...").removesuffix("...").strip()


def _model_in(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The section model a field holds (directly, optionally, or as values of a mapping of
    names), and whether it is such a mapping."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return annotation, False
    if origin in (typing.Union, types.UnionType):
        models = [a for a in args if inspect.isclass(a) and issubclass(a, BaseModel)]
        return (models[0], False) if len(models) == 1 else (None, False)
    if origin is dict and args and inspect.isclass(args[1]) and issubclass(args[1], BaseModel):
        return args[1], True
    return None, False


def _description(field: FieldInfo, model: type[BaseModel] | None = None) -> str:
    text = field.description or ""
    if not text and model is not None:  # a section: its class docstring's first paragraph
        text = inspect.cleandoc(model.__doc__ or "").split("\n\n")[0]
    return " ".join(text.split())


def _default(field: FieldInfo, parent_default: BaseModel | None, name: str) -> Any:
    if field.is_required():
        return "(required)"
    if parent_default is not None and not isinstance(field.default, Path):
        return getattr(parent_default, name)
    return field.get_default(call_default_factory=True)


def _section_default(model: type[BaseModel], field: FieldInfo,
                     parent_default: BaseModel | None, name: str) -> BaseModel | None:
    """The value a nested section takes when it is left out (None: it has no default)."""
    value = getattr(parent_default, name, None) if parent_default is not None else None
    if isinstance(value, model):
        return value
    if field.is_required():
        return None
    default = field.get_default(call_default_factory=True)
    if isinstance(default, model):
        return default
    if isinstance(default, dict):
        try:
            return model.model_validate(default, context={"base_dir": Path(".")})
        except ValueError:  # a section with a required key (data: root)
            return None
    return None


def config_keys(model: type[BaseModel] = PipelineConfig, prefix: str = "",
                default: BaseModel | None = None) -> Iterator[KeyDoc]:
    """Every key of ``model`` and of the sections inside it, depth first in declaration
    order; a section's keys come right after the section's own row. A head's ``params`` of a
    dense head are listed as ``stages.heads.models.<name>.params.<key>``."""
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        path = f"{prefix}{name}"
        inner, named = _model_in(field.annotation)
        if inner is None:
            yield KeyDoc(path, _type_name(field.annotation),
                         _yaml(_default(field, default, name)), _description(field),
                         owner=model.__name__)
            continue
        shown = _default(field, default, name)
        yield KeyDoc(path, _type_name(field.annotation),
                     None if isinstance(shown, BaseModel) or (isinstance(shown, dict) and
                                                              not named and not shown)
                     else "(required)" if shown == "(required)" else _yaml(shown),
                     _description(field, inner), section=True, owner=model.__name__)
        if named:
            yield from config_keys(inner, f"{path}.{NAME}.")
        else:
            yield from config_keys(inner, f"{path}.",
                                   None if named else _section_default(inner, field, default,
                                                                       name))
        if inner is HeadConfig:
            yield from config_keys(DenseParams, f"{path}.{NAME}.params.")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def config_reference() -> str:
    """Markdown: one table per section of stages.yaml (key, type, default, meaning)."""
    keys = list(config_keys())
    by_path = {key.path: key for key in keys}
    groups: dict[str, list[KeyDoc]] = {}
    for key in keys:  # in declaration order, so a section's table follows its parent's
        groups.setdefault(key.path.rpartition(".")[0], []).append(key)
    blocks = []
    for section, rows in groups.items():
        title = "Top level" if not section else f"`{section}`"
        owner = by_path.get(section) or by_path.get(section.removesuffix(f".{NAME}"))
        if section.endswith(".params") and NAME in section:
            title += ", a `dense` head's parameters"
            owner = None
        blocks.append(f"### {title}\n")
        if owner is not None and owner.description:
            blocks.append(f"{owner.description}\n")
        blocks.append("| key | type | default | meaning |\n|---|---|---|---|")
        blocks.extend(f"| `{key.path}` | {_cell(key.type)} | "
                      f"{'' if key.default is None else f'`{_cell(key.default)}`'} | "
                      f"{_cell(key.description)} |" for key in rows)
        blocks.append("")
    return "\n".join(blocks)


#: The order the reference lists commands in: the main job first (others after, by name).
COMMAND_ORDER = ("run", "status", "runs", "predict", "export", "report", "cache", "info")


def _commands(group: click.Group, ctx: click.Context) -> Iterator[tuple[click.Command,
                                                                       click.Context]]:
    names = group.list_commands(ctx)
    for name in sorted(names, key=lambda n: (COMMAND_ORDER.index(n) if n in COMMAND_ORDER
                                             else len(COMMAND_ORDER), n)):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        sub = click.Context(command, info_name=name, parent=ctx)
        yield command, sub
        if isinstance(command, click.Group):
            yield from _commands(command, sub)


def _help_markdown(text: str) -> str:
    """click help as Markdown: ``\\b`` paragraphs (kept as written) become code blocks."""
    out = []
    for paragraph in inspect.cleandoc(text).split("\n\n"):
        if paragraph.startswith("\b"):
            out.append("```text\n" + textwrap.dedent(paragraph[1:].strip("\n")) + "\n```")
        else:
            out.append(" ".join(paragraph.split()))
    return "\n\n".join(out)


def _option_row(param: click.Option) -> str:
    names = ", ".join(f"`{opt}`" for opt in (*param.opts, *param.secondary_opts))
    metavar = "" if param.is_flag else f" {param.make_metavar(click.Context(click.Command('')))}"
    default = ""
    if param.show_default and param.default is not None and not param.is_flag:
        default = f" (default: `{param.default}`)"
    return f"| {names}{_cell(metavar)} | {_cell(param.help or '')}{_cell(default)} |"


def cli_options(command: click.Command) -> list[str]:
    """Every option string of ``command`` (``--json``, ``-c``, ``--no-progress``, ...)."""
    return [opt for param in command.params if isinstance(param, click.Option)
            for opt in (*param.opts, *param.secondary_opts)]


def cli_reference(root: click.Group | None = None) -> str:
    """Markdown: every command of ``pipeline``, its usage, help and options."""
    if root is None:
        from .cli import cli as root
    top = click.Context(root, info_name="pipeline")
    blocks = [f"## `pipeline`\n\n```text\n{root.get_usage(top)}\n```\n\n"
              f"{_help_markdown(root.help or '')}\n"]
    for command, ctx in _commands(root, top):
        blocks.append(f"## `{ctx.command_path}`\n")
        blocks.append(f"```text\n{command.get_usage(ctx)}\n```\n")
        text = command.help or ""
        if text:
            blocks.append(_help_markdown(text) + "\n")
        options = [p for p in command.params if isinstance(p, click.Option)]
        if options:
            blocks.append("| option | meaning |\n|---|---|")
            blocks.extend(_option_row(p) for p in options)
            blocks.append("| `-h`, `--help` | Show the help and exit. |\n")
    return "\n".join(blocks)


#: Page (relative to the repository) -> its marker line and the function that writes the part
#: after it.
GENERATED_PAGES = {
    "docs/reference/stages-yaml.md": ("<!-- generated: stages.yaml -->", config_reference),
    "docs/reference/cli.md": ("<!-- generated: cli -->", cli_reference),
}
END_MARKER = "<!-- end of the generated part -->"


def with_generated_part(page: str, marker: str, render: Callable[[], str]) -> str:
    """``page`` (Markdown) with the text between ``marker`` and :data:`END_MARKER` (or the end
    of the page) replaced by ``render()``; ValueError when the page has no marker."""
    if marker not in page:
        raise ValueError(f"no {marker} line")
    before, _, rest = page.partition(marker)
    _, end, after = rest.partition(END_MARKER)
    return f"{before}{marker}\n\n{render().rstrip()}\n\n{END_MARKER}{after if end else chr(10)}"


def write_pages(repository: Path) -> list[Path]:
    """Regenerate every page of :data:`GENERATED_PAGES` under ``repository``; the pages that
    changed."""
    changed = []
    for relative, (marker, render) in GENERATED_PAGES.items():
        path = repository / relative
        old = path.read_text(encoding="utf-8")
        new = with_generated_part(old, marker, render)
        if new != old:
            path.write_text(new, encoding="utf-8")
            changed.append(path)
    return changed


if __name__ == "__main__":
    for page in write_pages(Path.cwd()):
        print(f"rewrote {page}")
