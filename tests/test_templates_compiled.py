"""Compiled templates kept between runs in a cache folder: read back, and never an error."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import jinja2
import pytest

from comfy_orchestrator.templates import Templates, builtin_folder, default_cache_folder


def _render_img2img(folder: Path, image: Path) -> str:
    template = Templates([builtin_folder()], compiled=folder).get("img2img")
    return template.render(template.params({"image": str(image)})).to_json()


def test_a_template_compiled_once_is_read_back_from_the_cache_folder(sample_image: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "cache" / "templates"
    first = _render_img2img(folder, sample_image)
    assert len(list(folder.glob("*.cache"))) == 2  # img2img and the _nodes.j2 it imports
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and stat.S_IMODE(folder.parent.stat().st_mode) == 0o700

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("compiled again")

    monkeypatch.setattr(jinja2.Environment, "compile", refuse)
    assert _render_img2img(folder, sample_image) == first


@pytest.mark.parametrize("spoil", [lambda data: b"garbage", lambda data: data[: len(data) // 2],
                                   lambda data: data[:12] + b"\x00" * 40, lambda data: b""])
def test_a_cache_file_that_does_not_load_is_compiled_again_and_replaced(spoil: Any, sample_image: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "cache"
    first = _render_img2img(folder, sample_image)
    for path in folder.glob("*.cache"):
        path.write_bytes(spoil(path.read_bytes()))
    assert _render_img2img(folder, sample_image) == first
    monkeypatch.setattr(jinja2.Environment, "compile", lambda *args, **kwargs: pytest.fail("compiled again"))
    assert _render_img2img(folder, sample_image) == first  # the spoilt files were written anew


def test_a_cache_folder_that_cannot_be_made_changes_nothing(sample_image: Path, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("in the way")
    assert _render_img2img(tmp_path / "a-file" / "cache", sample_image) == _render_img2img(tmp_path / "c", sample_image)


@pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")
def test_a_cache_folder_others_may_write_to_is_not_used(sample_image: Path, tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o777)  # another user could put code there that a render would run
    _render_img2img(folder, sample_image)
    assert list(folder.iterdir()) == []


def test_the_cache_folder_is_the_users_cache_per_jinja_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_folder() == tmp_path / "comfy-orchestrator" / f"templates-{jinja2.__version__}"
    assert Templates.default().get("img2img").environment.bytecode_cache is not None


@pytest.mark.parametrize("stop", [KeyboardInterrupt, OSError])
def test_a_cache_file_cut_off_while_written_leaves_no_piece(stop: type[BaseException], sample_image: Path,
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def cut_off(self: jinja2.bccache.Bucket, handle: Any) -> None:
        handle.write(b"half a file")
        raise stop("stopped while writing")

    monkeypatch.setattr(jinja2.bccache.Bucket, "write_bytecode", cut_off)
    folder = tmp_path / "cache"
    if stop is KeyboardInterrupt:
        with pytest.raises(KeyboardInterrupt):  # a stop is not swallowed
            _render_img2img(folder, sample_image)
    else:
        _render_img2img(folder, sample_image)  # a file that cannot be written is not kept, and no error
    assert list(folder.iterdir()) == []
