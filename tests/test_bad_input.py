"""Bad input of every kind the CLI meets ends in one line and exit code 2, never a traceback."""

from __future__ import annotations

import json
import sqlite3
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hostile import pixel_bomb_png
from PIL import Image

from comfy_orchestrator.cli import main
from comfy_orchestrator.provenance import PROVENANCE_KEY, text_chunk


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _with_chunk(image: Path, chunk: bytes, target: Path) -> Path:
    data = image.read_bytes()
    target.write_bytes(data[:-12] + chunk + data[-12:])  # before IEND
    return target


def _user_template(folder: Path, body: str) -> Path:
    folder.mkdir()
    (folder / "busy.json.j2").write_text('{"1": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], '
                                         '"filename_prefix": ' + body + '}}}')
    (folder / "busy.params.json").write_text(json.dumps(
        {"description": "loops", "parameters": [{"name": "prefix", "type": "str", "default": "m"}]}))
    return folder


def _sweep(*extra: str) -> list[str]:
    return ["sweep", "img2img", "--axis", "cfg=6,8", "--out", "out", *extra]


def _case_header_only_pixel_bomb(tmp: Path, image: Path) -> list[str]:
    (tmp / "bomb.png").write_bytes(pixel_bomb_png())
    return ["render", "img2img", "--set", f"image={tmp / 'bomb.png'}"]


def _case_full_pixel_bomb(tmp: Path, image: Path) -> list[str]:
    Image.new("1", (20000, 20000)).save(tmp / "full.png")  # 50 MB of pixels, a small file
    return _sweep("--set", f"image={tmp / 'full.png'}", "--dry-run")


def _case_binary_axis_file(tmp: Path, image: Path) -> list[str]:
    (tmp / "binary.txt").write_bytes(bytes(range(256)) * 4)
    return _sweep("--axis", f"positive=@{tmp / 'binary.txt'}", "--set", f"image={image}", "--dry-run")


def _case_port_out_of_range(tmp: Path, image: Path) -> list[str]:
    return ["run", "img2img", "--set", f"image={image}", "--server", "http://127.0.0.1:99999"]


def _case_server_not_a_url(tmp: Path, image: Path) -> list[str]:
    return _sweep("--set", f"image={image}", "--server", "not a url")


def _case_farm_file_not_utf8(tmp: Path, image: Path) -> list[str]:
    (tmp / "farm.toml").write_bytes(b'[[server]]\nurl = "http://127.0.0.1:9"\nname = "caf\xe9"\n')
    return _sweep("--set", f"image={image}", "--farm", str(tmp / "farm.toml"))


def _case_farm_header_with_a_newline(tmp: Path, image: Path) -> list[str]:
    (tmp / "farm.toml").write_text('[[server]]\nurl = "http://127.0.0.1:9"\n'
                                   'headers = { "X-Key" = "a\\r\\nX-Injected: 1" }\n')
    return _sweep("--set", f"image={image}", "--farm", str(tmp / "farm.toml"))


def _case_template_range_too_big(tmp: Path, image: Path) -> list[str]:
    folder = _user_template(tmp / "t1", "{% for i in range(10**9) %}{% endfor %}{{ prefix }}")
    return ["--templates", str(folder), "render", "busy"]


def _case_template_nested_loops(tmp: Path, image: Path) -> list[str]:
    folder = _user_template(tmp / "t2", "{% for a in range(5000) %}{% for b in range(5000) %}{% endfor %}"
                                        "{% endfor %}{{ prefix }}")
    return ["--templates", str(folder), "render", "busy"]


def _case_template_huge_text(tmp: Path, image: Path) -> list[str]:
    folder = _user_template(tmp / "t3", '{{ prefix * 1000000000 }}')
    return ["--templates", str(folder), "render", "busy"]


def _case_provenance_wrong_types(tmp: Path, image: Path) -> list[str]:
    record = {"template": "img2img", "parameters": ["not", "a", "mapping"], "graph": 7}
    return ["inspect", str(_with_chunk(image, text_chunk(PROVENANCE_KEY, json.dumps(record)), tmp / "p.png"))]


def _case_run_from_wrong_types(tmp: Path, image: Path) -> list[str]:
    record = {"template": 12, "parameters": {"cfg": 7}}
    marked = _with_chunk(image, text_chunk(PROVENANCE_KEY, json.dumps(record)), tmp / "p.png")
    return ["run", "--from", str(marked), "--server", "http://127.0.0.1:9"]


def _case_ztxt_bomb(tmp: Path, image: Path) -> list[str]:
    inflater = zlib.compressobj(9)
    body = b"".join(inflater.compress(b" " * (1 << 20)) for _ in range(64)) + inflater.flush()  # 64 MB of text
    chunk = _chunk(b"zTXt", PROVENANCE_KEY.encode() + b"\x00\x00" + body)
    return ["inspect", str(_with_chunk(image, chunk, tmp / "z.png"))]


def _case_hand_edited_journal(tmp: Path, image: Path) -> list[str]:
    from comfy_orchestrator.journal import JOURNAL_NAME, Journal
    from comfy_orchestrator.sweep import Sweep, parse_axis
    from comfy_orchestrator.templates import Templates

    sweep = Sweep(Templates.default().get("img2img"), (parse_axis("cfg=6,8"),), {"image": str(image)})
    with Journal.open(tmp / "out", digest=sweep.digest(), definition=sweep.definition()):
        pass
    db = sqlite3.connect(tmp / "out" / JOURNAL_NAME)
    db.execute("UPDATE sweep SET definition = '{broken'")
    db.commit()
    db.close()
    return _sweep("--set", f"image={image}", "--server", "http://127.0.0.1:9")


CASES: dict[str, tuple[Callable[[Path, Path], list[str]], str]] = {
    "a 20000x20000 PNG header as --set image": (_case_header_only_pixel_bomb, "too many pixels to decode"),
    "a whole 20000x20000 PNG as --set image": (_case_full_pixel_bomb, "too many pixels to decode"),
    "--axis positive=@ a binary file": (_case_binary_axis_file, "is not UTF-8 text"),
    "--server with port 99999": (_case_port_out_of_range, "has a bad port"),
    "sweep --server 'not a url'": (_case_server_not_a_url, "is not an http(s) URL"),
    "a farm file that is not UTF-8": (_case_farm_file_not_utf8, "is not UTF-8 text"),
    "a farm file header with a line break": (_case_farm_header_with_a_newline, "has a line break"),
    "a template with range(10**9)": (_case_template_range_too_big, "does more work than a template may"),
    "a template with nested loops": (_case_template_nested_loops, "does more work than a template may"),
    "a template repeating text 10**9 times": (_case_template_huge_text, "does more work than a template may"),
    "inspect on provenance of the wrong types": (_case_provenance_wrong_types, "of the wrong type"),
    "run --from on provenance of the wrong types": (_case_run_from_wrong_types, "of the wrong type"),
    "inspect on a zTXt bomb": (_case_ztxt_bomb, "inflates past 8 MiB (Limits.text_chunk_bytes)"),
    "a hand-edited journal": (_case_hand_edited_journal, "was it edited by hand?"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_exit_code_2(case: str, tmp_path: Path, sample_image: Path,
                                               monkeypatch: Any) -> None:
    make, message = CASES[case]
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("COMFY_TOKEN", raising=False)
    arguments = make(tmp_path, sample_image)
    result = CliRunner().invoke(main, arguments)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2, result.output
    assert len(errors) == 1 and message in errors[0], result.output
    assert "Traceback" not in result.output
