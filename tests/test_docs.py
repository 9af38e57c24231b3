"""The documentation cannot drift from the code: every stages.yaml key and every command-line
option is in the generated reference, with a meaning, and the committed reference pages are
what the code generates now; every `pipeline ...` command the README and the docs show exists
with the options they give; the site builds with --strict."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import click
import pytest
from pydantic import BaseModel

from pipeline.cli import cli
from pipeline.config import PipelineConfig
from pipeline.config.heads import DenseParams
from pipeline.reference import (
    GENERATED_PAGES,
    NAME,
    cli_options,
    cli_reference,
    config_keys,
    config_reference,
    with_generated_part,
)

REPO = Path(__file__).resolve().parents[1]


def _sections(model: type[BaseModel], seen: set) -> None:
    """Every section model reachable from ``model`` (in ``seen``)."""
    seen.add(model)
    for field in model.model_fields.values():
        stack = [field.annotation]
        while stack:
            annotation = stack.pop()
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                if annotation not in seen:
                    _sections(annotation, seen)
            else:
                stack.extend(typing.get_args(annotation))


def test_every_stages_yaml_key_is_in_the_reference_with_its_meaning():
    models: set = {DenseParams}  # a dense head's params: a mapping the model validates later
    _sections(PipelineConfig, models)
    keys = list(config_keys())
    documented = {(key.owner, key.path.rsplit(".", 1)[-1]) for key in keys}
    declared = {(model.__name__, name) for model in models
                for name, field in model.model_fields.items() if not field.exclude}
    assert declared - documented == set(), "keys missing from the reference"
    undocumented = [key.path for key in keys if not key.description]
    assert not undocumented, f"keys without a docstring in pipeline/config: {undocumented}"
    text = config_reference()
    for key in keys:
        assert f"| `{key.path}` |" in text
    assert f"`stages.heads.models.{NAME}.params.learning_rate`" in text
    # defaults are the ones a section left out takes, per place: scratch augments nothing
    rows = {key.path: key for key in keys}
    assert rows["stages.finetune.augmentation.rotation"].default == "40.0"
    assert rows["stages.scratch.augmentation.rotation"].default == "0.0"
    assert rows["data.root"].default == "(required)"


def _commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        yield (*prefix, name), command
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))


def test_every_command_and_option_is_in_the_cli_reference():
    text = cli_reference()
    for path, command in _commands(cli):
        assert f"## `pipeline {' '.join(path)}`" in text
        for option in cli_options(command):
            assert f"`{option}`" in text, f"pipeline {' '.join(path)} {option}"
        if command.help:
            assert " ".join(command.help.split("\n\n")[0].split()) in text


@pytest.mark.parametrize("page", sorted(GENERATED_PAGES))
def test_the_reference_pages_are_what_the_code_generates(page: str):
    marker, render = GENERATED_PAGES[page]
    text = (REPO / page).read_text(encoding="utf-8")
    assert text == with_generated_part(text, marker, render), \
        f"{page} is out of date: run `python -m pipeline.reference` in the repository"


def test_regenerating_a_page_keeps_the_prose_around_it():
    marker, render = "<!-- generated: x -->", lambda: "| a |\n"
    page = (f"# Title\n\nprose\n\n{marker}\n\nold table\n\n"
            f"<!-- end of the generated part -->\nafter\n")
    new = with_generated_part(page, marker, render)
    assert new.startswith("# Title\n\nprose\n\n") and new.endswith("-->\nafter\n")
    assert "old table" not in new and "| a |" in new
    assert with_generated_part(new, marker, render) == new
    with pytest.raises(ValueError, match="no <!-- generated: y -->"):
        with_generated_part(page, "<!-- generated: y -->", render)


def _resolve(words: list[str]) -> tuple[click.Command, list[str]]:
    """The command ``words`` name (``cache ls --json`` -> cache ls) and the words after it."""
    command: click.Command = cli
    while words and isinstance(command, click.Group) and words[0] in command.commands:
        command = command.commands[words.pop(0)]
    return command, words


#: Examples the docs show on purpose because they fail (to show the error they print).
DELIBERATE_MISTAKES = {"status --bogus"}


def _examples(text: str) -> list[str]:
    """What follows ``pipeline`` in every inline `pipeline ...` span and every command line of
    a fenced block (``$ pipeline ...`` or ``pipeline ...``; comments, pipes and ``&&`` cut)."""
    found = re.findall(r"`pipeline ([^`\n]+)`", text)
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.M | re.S):
        for line in block.splitlines():
            match = re.match(r"\s*(?:\$ )?pipeline (.+)", line)
            if match:
                found.append(re.split(r"\s#|\||&&|;", match.group(1))[0].strip())
    return [example for example in found if example not in DELIBERATE_MISTAKES]


def test_the_commands_the_docs_show_exist_with_their_options():
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    shown = 0
    for page in pages:
        for example in _examples(page.read_text(encoding="utf-8")):
            words = example.split()
            if not words or not re.fullmatch(r"-{0,2}[a-z][a-z-]*", words[0]):
                continue  # a module path such as pipeline.heads, or a placeholder
            command, rest = _resolve(words)
            assert command is not cli or words[0].startswith("-"), \
                f"{page.name}: `pipeline {example}`: no such command"
            known = {*cli_options(command), "-h", "--help"}
            for word in rest:
                if word.startswith("-") and word != "-":
                    option = word.split("=", 1)[0]
                    assert option in known, f"{page.name}: `pipeline {example}`: no {option}"
            shown += 1
    assert shown > 100  # the scan found the examples, inline and in fenced blocks


@pytest.mark.skipif(shutil.which("mkdocs") is None and
                    subprocess.run([sys.executable, "-c", "import mkdocs"],
                                   capture_output=True).returncode != 0,
                    reason="mkdocs is not installed (pip install -e '.[docs]')")
def test_the_site_builds_strictly(tmp_path: Path):
    # not -q: it hides the warnings that --strict turns into a failure (a missing anchor)
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict",
                          "-d", str(tmp_path / "site")], cwd=REPO, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    page = (tmp_path / "site" / "reference" / "stages-yaml" / "index.html").read_text()
    assert "stages.extract.batch_size" in page
