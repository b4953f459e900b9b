"""The one safe-name check and the one atomic writer (vlfeedback_kit.files)."""

import json
import os

import pytest

from vlfeedback_kit.files import UnsafeName, atomic_write, child, inside, safe_name, write_json


@pytest.mark.parametrize("value", ["svit-12", "a.b", "x y", "0123abcdef", "ü-名前"])
def test_plain_names_pass_unchanged(value):
    assert safe_name(value) == value


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("../../outside/x", "path separator"),
        ("/etc/passwd", "path separator"),
        ("..", "starts with a dot"),
        (".hidden", "starts with a dot"),
        ("a\\b", "path separator"),
        ("a\x00b", "control character"),
        ("", "empty"),
        ("  ", "empty"),
        (" x", "leading or trailing"),
        ("C:evil", "drive letter"),
        ("x" * 201, "longer than"),
        (7, "should be a string"),
        (None, "should be a string"),
    ],
)
def test_unsafe_names_are_refused_with_the_reason(value, why):
    with pytest.raises(UnsafeName, match=why) as err:
        safe_name(value, "battle_id")
    assert "battle_id" in str(err.value)


def test_inside_refuses_symlink_escapes(tmp_path):
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"x")
    (root / "link").symlink_to(outside)
    assert inside(root, root / "a.png") == (root / "a.png").resolve()
    with pytest.raises(UnsafeName, match="outside root/"):
        inside(root, "link/secret.png")
    with pytest.raises(UnsafeName):
        inside(root, "../outside/secret.png")
    with pytest.raises(UnsafeName):
        child(root, "../x", ".jpg", "id")
    assert child(root, "x", ".jpg") == (root / "x.jpg").resolve()


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "scores.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_write(target) as temp:
        temp.write_text("half")
        raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["scores.json"]
