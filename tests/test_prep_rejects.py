"""prep's summary names the rejected videos with reasons in words and the file listing them all, and exits non-zero
above --max-rejected."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from prep.__main__ import main as prep_main
from prep.synthetic import encode_video, render


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    """Four good videos and seven that cannot be stored, each for another reason."""
    root = tmp_path_factory.mktemp("videos")
    for i in range(4):
        encode_video(str(root / f"ok{i}.mp4"), render(i % 2, np.random.default_rng(i), 6, (32, 48)), fps=12,
                     codec="h264")
    (root / "text.mp4").write_text("this is not a video\n" * 40)
    (root / "empty.mp4").write_bytes(b"")
    good = (root / "ok0.mp4").read_bytes()
    (root / "cut.mp4").write_bytes(good[: len(good) // 3])
    bad = ["text.mp4", "empty.mp4", "missing.mp4", "cut.mp4", "gone1.mp4", "gone2.mp4", "gone3.mp4"]
    (root / "train.txt").write_text("".join(f"ok{i}.mp4 {i % 2}\n" for i in range(4)) + "".join(f"{b} 0\n" for b in bad))
    return root


def _prep(src, out, *extra) -> int:
    return prep_main(["videos", "--list", str(src / "train.txt"), "--root", str(src), "--out", str(out),
                      "--short-side", "32", "--workers", "1", "--no-progress", *extra])


def test_the_first_rejected_are_listed_in_words_and_the_share_fails_the_run(src, tmp_path, capsys):
    out = tmp_path / "out"
    assert _prep(src, out) == 1  # 7 of 11 rejected, above the default 5%
    stdout, err = capsys.readouterr()
    assert json.loads(stdout)["stored"] == 4  # the store is made all the same
    lines = err.strip().splitlines()
    assert lines[0] == "prep: 7 of 11 videos rejected (63.6%); the first 5:"
    assert lines[1] == f"  {src / 'text.mp4'}: unreadable: invalid data found when processing input (not a video " \
                       "file, or a damaged or truncated one)"
    assert lines[2] == f"  {src / 'empty.mp4'}: zero-length file"
    assert lines[3] == f"  {src / 'missing.mp4'}: missing file"
    assert lines[4].startswith(f"  {src / 'cut.mp4'}: unreadable: ")
    assert len(lines) == 8 and lines[6] == f"  all 7 with their reasons: {out / 'rejects.jsonl'}"
    assert lines[7].startswith("prep: error: 63.6% of the videos rejected, more than --max-rejected 5%")
    assert "Errno" not in err
    reasons = [json.loads(line)["reason"] for line in Path(out / "rejects.jsonl").read_text().splitlines()]
    assert not any("Errno" in r for r in reasons)


def test_a_share_within_max_rejected_passes(src, tmp_path, capsys):
    assert _prep(src, tmp_path / "out", "--max-rejected", "70") == 0
    assert capsys.readouterr().err.startswith("prep: 7 of 11 videos rejected (63.6%)")


def test_max_rejected_takes_a_percentage(src, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        _prep(src, tmp_path / "out", "--max-rejected", "120")
    assert e.value.code == 2 and "a percentage from 0 to 100" in capsys.readouterr().err
