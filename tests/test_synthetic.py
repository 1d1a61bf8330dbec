from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest

from prep import synthetic
from prep.synthetic import CLASS_NAMES, PAIRS, encode_video, generate, iter_frames, render

SIZE = (48, 48)


def _decode(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def _read_list(path) -> list[tuple[str, str]]:
    return [tuple(line.split(" ")) for line in Path(path).read_text().splitlines()]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    info = generate(root, videos=20, frames=8, size=SIZE, codec="h264", seed=3, val_fraction=0.25, progress=False,
                    classes=4)
    return root, info


@pytest.mark.parametrize("class_index", range(0, len(CLASS_NAMES), 2))
def test_pair_is_exact_time_reversal(class_index):
    forward = render(class_index, np.random.default_rng(11), 8, (32, 40))
    backward = render(class_index + 1, np.random.default_rng(11), 8, (32, 40))
    assert forward.shape == (8, 32, 40, 3) and forward.dtype == np.uint8
    np.testing.assert_array_equal(backward, forward[::-1])
    # the clip really changes over time, or there would be nothing to reverse
    assert np.abs(forward[0].astype(int) - forward[-1].astype(int)).max() > 50


def test_render_is_deterministic_and_seed_dependent():
    first = render("growing", np.random.default_rng(5), 6, (32, 48))
    np.testing.assert_array_equal(first, render(4, np.random.default_rng(5), 6, (32, 48)))
    assert not np.array_equal(first, render(4, np.random.default_rng(6), 6, (32, 48)))


def test_iter_frames_streams_the_same_frames_as_render():
    frames = list(iter_frames(3, np.random.default_rng(2), 5, 40))
    np.testing.assert_array_equal(np.stack(frames), render(3, np.random.default_rng(2), 5, 40))


@pytest.mark.parametrize("codec, suffix, size", [("h264", ".mp4", (48, 64)), ("vp9", ".webm", (48, 47))])
def test_encode_video_decodes_with_right_count_and_size(tmp_path, codec, suffix, size):
    clip = render(0, np.random.default_rng(0), 8, size)
    path = tmp_path / f"clip{suffix}"
    assert encode_video(path, iter(clip), fps=12, codec=codec) == 8
    decoded = _decode(path)
    assert decoded.shape == clip.shape
    # lossy, but the picture survives: mean error of a few grey levels
    assert np.abs(decoded.astype(float) - clip).mean() < 8
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == codec and stream.average_rate == 12
        assert stream.codec_context.format.name == "yuv420p"


def test_encoding_is_byte_identical_across_runs(tmp_path):
    clip = render(6, np.random.default_rng(1), 6, SIZE)
    for codec, suffix in [("h264", ".mp4"), ("vp9", ".webm")]:
        first, second = tmp_path / f"a{suffix}", tmp_path / f"b{suffix}"
        encode_video(first, clip, 12, codec)
        encode_video(second, clip, 12, codec)
        assert first.read_bytes() == second.read_bytes()


def test_lists_classes_and_balance(dataset):
    root, info = dataset
    assert info["classes"] == list(CLASS_NAMES[:4]) == (root / "classes.txt").read_text().splitlines()
    assert info["videos"] == 20
    train, val = _read_list(info["train"]), _read_list(info["val"])
    assert len(train) == 16 and len(val) == 4
    assert set(train).isdisjoint(val)
    assert Counter(name for _, name in train) == {name: 4 for name in info["classes"]}
    assert Counter(name for _, name in val) == {name: 1 for name in info["classes"]}
    for relpath, name in train + val:
        assert relpath.startswith(f"videos/{name}/") and relpath.endswith(".mp4")
        assert (root / relpath).is_file()
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.mp4")) == sorted(r for r, _ in train + val)


def test_generated_video_matches_its_render(dataset):
    root, info = dataset
    relpath, name = _read_list(info["val"])[0]
    decoded = _decode(root / relpath)
    # video k of class c is drawn from default_rng((seed, c, k)); the val video of class 0 is its last (k = 4)
    clip = render(name, np.random.default_rng((3, CLASS_NAMES.index(name), 4)), 8, SIZE)
    assert relpath.endswith("_00004.mp4")
    assert decoded.shape == (8, *SIZE, 3)
    assert np.abs(decoded.astype(float) - clip).mean() < 8


def test_workers_give_identical_lists_and_files(dataset, tmp_path):
    root, info = dataset
    parallel = generate(tmp_path, videos=20, frames=8, size=SIZE, codec="h264", seed=3, val_fraction=0.25,
                        progress=False, classes=4, workers=2)
    for split in ("train", "val"):
        assert Path(parallel[split]).read_text() == Path(info[split]).read_text()
    for relpath, _ in _read_list(info["train"]) + _read_list(info["val"]):
        assert (tmp_path / relpath).read_bytes() == (root / relpath).read_bytes()


def test_vp9_dataset_with_pair_names(tmp_path):
    info = generate(tmp_path, videos=4, frames=5, size=(32, 45), codec="vp9", progress=False,
                    classes=["fade", "orbit"], val_fraction=0.5)
    assert info["classes"] == [*PAIRS["fade"], *PAIRS["orbit"]]
    lines = _read_list(info["train"]) + _read_list(info["val"])
    assert len(lines) == 4 and all(relpath.endswith(".webm") for relpath, _ in lines)
    assert _decode(tmp_path / lines[0][0]).shape == (5, 32, 45, 3)
    assert not list(tmp_path.rglob("*.partial"))


@pytest.mark.parametrize("kwargs, message", [
    (dict(codec="av1"), "unknown codec"),
    (dict(size=8), "too small"),
    (dict(size=(48, 47)), "even"),
    (dict(frames=1), "frames"),
    (dict(videos=7, classes=2), "multiple"),
    (dict(classes=3), "even number"),
    (dict(classes=["spin", "wobble"]), "pairs"),
    (dict(val_fraction=1.0), "val_fraction"),
    (dict(workers=0), "workers"),
    (dict(fps=0), "fps"),
    (dict(crf=70), "crf"),
    (dict(gop=0), "gop"),
    (dict(seed=-1), "seed"),
])
def test_bad_arguments_raise_one_line_value_error(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message) as error:
        generate(tmp_path, **{"videos": 4, "classes": 2, "progress": False, **kwargs})
    assert "\n" not in str(error.value)
    assert not (tmp_path / "videos").exists()


def test_encode_video_rejects_bad_frames(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        encode_video(tmp_path / "x.mp4", [np.zeros((32, 32, 3), np.float32)], 12, "h264")
    with pytest.raises(ValueError, match=r"frame 1 is uint8 \(32, 30, 3\), expected"):
        encode_video(tmp_path / "y.mp4", [np.zeros((32, 32, 3), np.uint8), np.zeros((32, 30, 3), np.uint8)], 12)
    assert not (tmp_path / "y.mp4").exists()
    with pytest.raises(ValueError, match="no frames"):
        encode_video(tmp_path / "z.mp4", [], 12)
    with pytest.raises(ValueError, match="class_index"):
        render(len(synthetic.CLASS_NAMES), np.random.default_rng(0), 4, 32)
