"""The README and the docs kept in step with the code, read from the files (no model, no server):

- the README's configuration table lists every ``CHATLM_*`` variable the code reads, and nothing else;
- its command-line section names every subcommand of ``python -m chatlm`` (read from the argparse
  parser the CLI builds, in process);
- it stays a five-minute read (under ``MAX_LINES`` lines);
- every relative link in it, in ``docs/*.md`` and in ``bench/README.md`` names a file that exists, and
  a ``#fragment`` into a Markdown file names one of its headings.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from dataclasses import fields
from pathlib import Path

from chatlm.config import Settings
from tests.conftest import REPO

README = REPO / "README.md"
MAX_LINES = 250
DOCS = [README, *sorted((REPO / "docs").glob("*.md")), REPO / "bench" / "README.md"]
CODE = [REPO / "app.py", *sorted((REPO / "chatlm").rglob("*.py"))]
DIRECT_READ = re.compile(r"""(?:environ\.get|getenv|environ\.setdefault)\(\s*["'](CHATLM_\w+)["']"""
                         r"""|environ\[\s*["'](CHATLM_\w+)["']\s*\]""")
"""A ``CHATLM_*`` variable read other than through ``Settings`` (there is none today: keep it so)."""
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def _section(text: str, title: str) -> str:
    """The README section under ``## title``, code blocks included, up to the next ``## `` heading."""
    found, body, fenced = False, [], False
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and line.startswith("## "):
            if found:
                break
            found = line[3:].strip() == title
            continue
        if found:
            body.append(line)
    assert found, f"the README has no '## {title}' section"
    return "\n".join(body)


# ---- (a) configuration --------------------------------------------------------------------------
def variables_read_by_code() -> set[str]:
    """``Settings.from_env`` reads ``CHATLM_<FIELD>`` for every field; plus any direct read."""
    read = {f"CHATLM_{f.name.upper()}" for f in fields(Settings)}
    for path in CODE:
        for match in DIRECT_READ.finditer(path.read_text(encoding="utf-8")):
            read.add(match.group(1) or match.group(2))
    return read


def variables_in_config_table() -> set[str]:
    """The variables named in the first column of the README's configuration table."""
    rows = [line for line in _section(README.read_text(encoding="utf-8"), "Configuration").splitlines()
            if line.startswith("|")]
    assert len(rows) > 2, "the configuration section has no table"
    return {name for row in rows[2:] for name in re.findall(r"`(CHATLM_\w+)`", row.split("|")[1])}


def test_the_configuration_table_lists_exactly_the_variables_the_code_reads() -> None:
    read, documented = variables_read_by_code(), variables_in_config_table()
    assert sorted(read - documented) == [], "read by the code, missing from the README's configuration table"
    assert sorted(documented - read) == [], "in the README's configuration table, read by no code"


def test_the_code_reads_chatlm_variables_only_through_settings() -> None:
    """So that the table above, built from ``Settings``, is the whole list."""
    direct = sorted({f"{path.relative_to(REPO)}: {m.group(1) or m.group(2)}" for path in CODE
                     for m in DIRECT_READ.finditer(path.read_text(encoding="utf-8"))})
    assert direct == []


# ---- (b) command line ---------------------------------------------------------------------------
def cli_commands() -> list[tuple[str, ...]]:
    """Every command path of ``python -m chatlm``: its subparsers at any depth, and the choices of a
    positional ``action`` argument (``db upgrade``, ``users key create``), read from the parser."""
    from chatlm.cli.main import _parser

    found: list[tuple[str, ...]] = []

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found.append((*path, name))
                    walk(sub, (*path, name))
            elif path and not action.option_strings and action.dest == "action" and action.choices:
                found.extend((*path, str(choice)) for choice in action.choices)

    walk(_parser(), ())
    return found


def test_the_cli_section_names_every_subcommand() -> None:
    lines = _section(README.read_text(encoding="utf-8"), "Command line").splitlines()
    commands = cli_commands()
    assert ("serve",) in commands and ("users", "key", "create") in commands  # the walk found them

    def named(path: tuple[str, ...]) -> bool:
        return any(re.search(rf"chatlm {re.escape(path[0])}\b", line)
                   and all(re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", line) for word in path[1:])
                   for line in lines)

    missing = [" ".join(path) for path in commands if not named(path)]
    assert missing == [], "subcommands missing from the README's 'Command line' section"


# ---- (c) length ---------------------------------------------------------------------------------
def test_the_readme_is_a_five_minute_read() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) < MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


# ---- (d) links ----------------------------------------------------------------------------------
def slugs(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file (a repeated one gets -1, -2, …)."""
    seen: Counter[str] = Counter()
    found = set()
    for line in _prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(2).strip().lower()).replace(" ", "-")
        found.add(f"{slug}-{seen[slug]}" if seen[slug] else slug)
        seen[slug] += 1
    return found


def relative_links(path: Path) -> list[str]:
    text = "\n".join(re.sub(r"`[^`]*`", "", line) for line in _prose_lines(path.read_text(encoding="utf-8")))
    return [target for target in LINK.findall(text) if not re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", target)]


def test_the_docs_are_there() -> None:
    for name in ("accounts", "rounds", "api", "scale-out", "security", "spaces", "design"):
        assert (REPO / "docs" / f"{name}.md").is_file(), name


def test_every_relative_link_points_to_something_that_exists() -> None:
    broken = []
    for doc in DOCS:
        for target in relative_links(doc):
            file_part, _, fragment = target.partition("#")
            linked = (doc.parent / file_part).resolve() if file_part else doc
            where = f"{doc.relative_to(REPO)}: {target}"
            if not linked.exists():
                broken.append(f"{where} (no such file)")
            elif fragment and linked.suffix == ".md" and fragment not in slugs(linked):
                broken.append(f"{where} (no such heading)")
    assert broken == []
