"""The loader reads exactly what each test protocol computes: a store whose frames encode their own index (blue = 8 x
frame) and their pixel coordinates (red = 4 x column, green = 5 x row), read through the real DALI graph (CPU),
gives back every view's frame indices, crop corner and mirror as pipelines/protocols.py computes them."""
import numpy as np
import pytest

from models.registry import InputContract
from pipelines import build_loader, protocols
from pipelines.sampling import ClipSpec, view_of
from prep.synthetic import encode_video

from helpers import prep_store

WIDTH, HEIGHT = 64, 48
LENGTHS = (9, 17, 30)  # short videos take each protocol's short-video rules


def _frame(k: int) -> np.ndarray:
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
    return np.stack([xs * 4, ys * 5, np.full_like(xs, 8 * k)], -1).astype(np.uint8)


@pytest.fixture(scope="module")
def coded(base):  # noqa: F811
    src = base / "src-coded"
    (src / "videos").mkdir(parents=True)
    lines = []
    for n in LENGTHS:
        encode_video(src / "videos" / f"coded{n}.mp4", [_frame(k) for k in range(n)], fps=12, codec="h264", crf=0)
        lines.append(f"videos/coded{n}.mp4 a\n")
    (src / "val.txt").write_text("".join(lines))
    (src / "classes.txt").write_text("a\n")
    return prep_store(str(src), [f"val={src / 'val.txt'}"], str(base / "coded-frames"), "frames")


def _decode_view(clip: np.ndarray, resize: tuple) -> tuple[list[int], float, float, bool]:
    """(frame indices, crop x0, y0 on the resized frame, mirrored) read back from a (T, C, H, W) view in pixel
    units, by least squares over every pixel: JPEG and chroma noise average out, a one-pixel shift does not."""
    frames = [int(round(float(f[2].mean()) / 8)) for f in clip]
    red, green = clip[:, 0].mean(0), clip[:, 1].mean(0)
    side = red.shape[1]
    cols, rows = np.arange(side), np.arange(red.shape[0])
    sx, sy = WIDTH / resize[0], HEIGHT / resize[1]
    # source column of output column j: (x0 + j + 0.5) * sx - 0.5 (pixel centres); red = 4 x that
    src_x = red.mean(0) / 4
    mirrored = src_x[0] > src_x[-1]
    cols = cols[::-1] if mirrored else cols
    inner = slice(2, -2)  # the frame's edge columns clamp in the resize
    x0 = float(np.mean((src_x[inner] + 0.5) / sx - 0.5 - cols[inner]))
    y0 = float(np.mean((green.mean(1)[inner] / 5 + 0.5) / sy - 0.5 - rows[inner]))
    return frames, x0, y0, bool(mirrored)


CASES = [  # protocol, contract sampling, frames, stride (dense) or frames_per_group, clips, crops, twice, geometry
    ("ibm", "tsn", 4, 1, 3, 3, False, (48, 32)),
    ("ibm", "dense", 4, 2, 2, 1, False, (56, 32)),  # resized to 74x56 (torchvision truncates 74.67)
    ("sifar", "tsn", 4, 1, 3, 3, False, (48, 32)),  # the diagonal three crops
    ("sifar", "dense", 4, 3, 2, 10, False, (48, 32)),
    ("mmaction", "dense", 4, 3, 2, 3, True, (48, 48)),  # twice; the 9-frame video has only the shifted views
    ("mmaction", "tsn", 4, 1, 1, 1, True, (60, 40)),  # resized to 80x60 (mmcv rounds)
    ("mmaction", "frame_uniform", 4, 1, 1, 10, False, (48, 32)),
    ("ila", "tsn", 4, 1, 3, 3, False, (48, 48)),
    ("ila", "tsn", 4, 1, 1, 1, False, (48, 42)),  # Resize(-1, int(256 / 224 * 42)) + CenterCrop(42)
    ("vidkit", "tsn", 4, 1, 2, 5, True, (48, 32)),
    ("vidkit", "dense", 4, 2, 2, 3, False, (54, 32)),
]


@pytest.mark.parametrize("protocol, sampling, frames, stride, clips, crops, twice, geometry", CASES)
def test_every_view_is_the_protocols(coded, protocol, sampling, frames, stride, clips, crops, twice, geometry):
    short, side = geometry
    if protocol == "ila":
        short = None  # ILA's code derives its short side from the crop and the crop count
    short, side = protocols.get(protocol).geometry(crops, side, short)
    contract = InputContract("NTCHW", num_frames=frames, crop_size=side, mean=(0.0, 0.0, 0.0),
                             std=(1 / 255,) * 3, sampling=sampling, frame_stride=stride if sampling == "dense" else 1)
    fpg = stride if sampling == "tsn" else 1
    loader = build_loader(coded, "val", contract, 4, False, clips=clips, crops=crops, py_workers=1, num_threads=1,
                          protocol=protocol, geometry=(short, side), twice=twice, frames_per_group=fpg)
    proto, rule = protocols.get(protocol), protocols.rule_of(ClipSpec.of(contract, fpg, protocol), clips, twice)
    assert loader.num_views == proto.view_count(rule) * crops
    seen = 0
    for batch in loader:
        for clip, video, view in zip(batch["clips"].numpy(), batch["index"].tolist(), batch["view"].tolist()):
            row = loader.dataset.rows[video]
            t, c = view_of(view, crops)
            want = proto.test_clips(row["num_frames"], rule)
            box = proto.boxes(*row["size"], crops, side, short)[c]
            frames_read, x0, y0, mirrored = _decode_view(clip, box.resize)
            assert frames_read == want[t % len(want)].tolist(), (video, view)
            assert abs(x0 - box.box[0]) < 0.3 and abs(y0 - box.box[1]) < 0.3, (video, view, x0, y0, box)
            assert mirrored == box.flip
            seen += 1
    assert seen == len(LENGTHS) * loader.num_views
