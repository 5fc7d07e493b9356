"""The README's commands are the CLI's: every `slicer-samba ...` line names a subcommand that exists,
and every option it shows is one that subcommand takes; the image on its first screen is committed."""

import re
from pathlib import Path

from SAMBACore.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def subcommands(parser):
    [action] = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return action.choices


def readme_commands():
    """(words after slicer-samba, options) of each command line in the README's code blocks, continuation
    lines (indented, starting with `[`) included."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```\n(.*?)```", text, re.S):
        for line in block.splitlines():
            code = line.split("#")[0]
            options = re.findall(r"--[a-z][a-z0-9-]*", code)
            if code.startswith("slicer-samba "):
                commands.append((code.split()[1:], options))
            elif code.startswith(" ") and code.strip().startswith("[") and commands:
                commands[-1][1].extend(options)
    return commands


def test_every_readme_command_and_option_exists():
    top = subcommands(build_parser())
    checked = 0
    for words, options in readme_commands():
        assert words[0] in top, words
        parsers = [top[words[0]]]
        if words[0] in ("train", "bench"):
            parsers = [subcommands(top[words[0]])[name] for name in words[1].split("|")]
        helps = "\n".join(p.format_help() for p in parsers)
        for option in options:
            assert re.search(rf"{re.escape(option)}\b", helps), f"slicer-samba {' '.join(words[:2])}: {option}"
            checked += 1
    assert checked > 40


def test_the_first_screen_shows_the_committed_preview():
    text = (ROOT / "README.md").read_text()
    first_screen = "\n".join(text.splitlines()[:30])
    assert "](docs/preview.png)" in first_screen and "make demo" in first_screen and "make test" in first_screen
    preview = ROOT / "docs" / "preview.png"
    assert preview.is_file() and preview.stat().st_size < 400_000
    assert "(docs/results.md)" in first_screen and (ROOT / "docs" / "results.md").is_file()
