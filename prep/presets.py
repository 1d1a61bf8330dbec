"""More dataset presets: Kinetics-700, Diving48, UCF101, HMDB51, and class subsets such as the mini-Kinetics-200
and mini-SSv2-87 of the IBM study (Chen et al., "Deep Analysis of CNN-based Spatio-temporal Representations for
Action Recognition", CVPR 2021).

UCF101, HMDB51 and Diving48 ship train and test lists only; their test list is the split results are reported on,
so it becomes "val", the split training and evaluation read by default.
"""
from __future__ import annotations

import os
import re

from .lists import read_class_list
from .tasks import Task, classes_from_labels, first_existing, kinetics_tasks, read_json

SPLIT_IDS = (1, 2, 3)


def kinetics700_tasks(root: str, videos: str | None = None) -> tuple[list[Task], list[str]]:
    """Kinetics-700(-2020): train.csv / validate.csv or kinetics_700_train.csv ..., as Kinetics-400."""
    return kinetics_tasks(root, videos, edition="700")


# --------------------------------------------------------------------------- class subsets


def restrict_to_classes(tasks: list[Task], classes: list[str], subset_file: str) -> tuple[list[Task], list[str]]:
    """Keep the videos of the classes listed in `subset_file` (one per line), relabelled 0..K-1 in its order.

    Names match the dataset's ignoring case, underscores for spaces and SSv2's [brackets], since published
    class lists differ from the annotation files in exactly those ways. Other videos are left out, not rejected,
    and so are unlabelled test videos: which of them belong to the subset is unknown."""
    if not os.path.isfile(subset_file):
        raise ValueError(f"subset class list not found: {subset_file}")
    wanted = read_class_list(subset_file)
    known = {_class_key(name): name for name in classes}
    unknown = [name for name in wanted if _class_key(name) not in known]
    if unknown:
        raise ValueError(f"{subset_file}: {len(unknown)} classes not in the dataset, e.g. {unknown[:3]}")
    names = [known[_class_key(name)] for name in wanted]
    if len(set(names)) != len(names):
        raise ValueError(f"{subset_file}: two lines name the same class")
    index = {name: i for i, name in enumerate(names)}
    kept = [t for t in tasks if t.label_name in index]
    for t in kept:
        t.label = index[t.label_name]
    return kept, names


def _class_key(name: str) -> str:
    return re.sub(r"[\[\]]", "", name).replace("_", " ").strip().lower()


# --------------------------------------------------------------------------- Diving48


def diving48_tasks(root: str, videos: str | None = None) -> tuple[list[Task], list[str]]:
    """Diving48(_V2)_train.json / _test.json: [{vid_name, label, start_frame, end_frame}], videos rgb/<vid_name>.mp4.

    The rgb/ clips are already cut to the dive, so start_frame/end_frame (into the uncut video) are not used.
    Class names come from Diving48_vocab.json (label = index; each entry a list of the four dive attributes)."""
    lists = {split: _find_file(root, [f"Diving48_V2_{name}.json", f"Diving48_{name}.json"])
             for split, name in (("train", "train"), ("val", "test"))}
    if lists["train"] is None:
        raise ValueError(f"no Diving48 train list (Diving48_V2_train.json) under {root} or {root}/annotations")
    rows = {split: _diving48_rows(path) for split, path in lists.items() if path}
    vocab = _find_file(root, ["Diving48_vocab.json"])
    if vocab:
        classes = [" ".join(v) if isinstance(v, list) else str(v) for v in read_json(vocab)]
    else:
        classes = classes_from_labels([str(label) for items in rows.values() for _, label in items])
    vdir = videos or first_existing(root, ["rgb"]) or root
    tasks = []
    for split, items in rows.items():
        for vid, label in items:
            tasks.append(_indexed_task(vid, os.path.join(vdir, f"{vid}.mp4"), split, label, classes))
    return tasks, classes


def _diving48_rows(path: str) -> list[tuple[str, int]]:
    items = read_json(path)
    if not isinstance(items, list) or not all(isinstance(x, dict) and {"vid_name", "label"} <= set(x) for x in items):
        raise ValueError(f"{path}: expected a list of objects with 'vid_name' and 'label'")
    return [(str(x["vid_name"]), int(x["label"])) for x in items]


def _indexed_task(vid: str, path: str, split: str, label: int, classes: list[str]) -> Task:
    if 0 <= label < len(classes):
        return Task(vid, path, split, label, classes[label])
    return Task(vid, path, split, -1, str(label), reject=f"unknown label {label}")


# --------------------------------------------------------------------------- UCF101


def ucf101_tasks(root: str, videos: str | None = None, split_id: int = 1) -> tuple[list[Task], list[str]]:
    """ucfTrainTestlist/: classInd.txt ('1 ApplyEyeMakeup'), trainlist0N.txt ('Class/v_..._c01.avi 1', 1-based)
    and testlist0N.txt (path only: the label is the folder); videos UCF-101/<Class>/<file>.avi."""
    _check_split_id(split_id)
    ann = _find_file(root, ["classInd.txt"], subdirs=("ucfTrainTestlist",))
    if ann is None:
        raise ValueError(f"classInd.txt not found under {root} (nor ucfTrainTestlist/ or annotations/)")
    ann = os.path.dirname(ann)
    classes = _ucf101_classes(os.path.join(ann, "classInd.txt"))
    index = {name: i for i, name in enumerate(classes)}
    vdir = videos or first_existing(root, ["UCF-101"]) or root
    tasks = []
    for split, name, fields in (("train", "trainlist", 2), ("val", "testlist", 1)):
        for rel, *label in _read_fields(os.path.join(ann, f"{name}0{split_id}.txt"), fields):
            vid = os.path.splitext(os.path.basename(rel))[0]
            path = os.path.join(vdir, rel)
            if label:
                tasks.append(_indexed_task(vid, path, split, int(label[0]) - 1, classes))
            else:
                tasks.append(_named_task(vid, path, split, rel.split("/")[0], index))
    return tasks, classes


def _ucf101_classes(path: str) -> list[str]:
    rows = _read_fields(path, 2)
    if sorted(int(n) for n, _ in rows) != list(range(1, len(rows) + 1)):
        raise ValueError(f"{path}: class numbers must run 1..{len(rows)}")
    return [name for _, name in sorted(rows, key=lambda r: int(r[0]))]


def _named_task(vid: str, path: str, split: str, name: str, index: dict[str, int]) -> Task:
    if name in index:
        return Task(vid, path, split, index[name], name)
    return Task(vid, path, split, -1, name, reject=f"unknown label {name!r}")


# --------------------------------------------------------------------------- HMDB51


def hmdb51_tasks(root: str, videos: str | None = None, split_id: int = 1) -> tuple[list[Task], list[str]]:
    """testTrainMulti_7030_splits/<class>_test_split<N>.txt, lines '<video>.avi <flag>' (1 train, 2 test,
    0 unused); videos <root>/<class>/<video>.avi. Classes in alphabetical order, the usual numbering."""
    _check_split_id(split_id)
    sdir = first_existing(root, ["testTrainMulti_7030_splits"]) or root
    if not os.path.isdir(sdir):
        raise ValueError(f"HMDB51 root not found: {root}")
    pattern = re.compile(rf"(.+)_test_split{split_id}\.txt")
    classes = sorted(m.group(1) for m in map(pattern.fullmatch, os.listdir(sdir)) if m)
    if not classes:
        raise ValueError(f"no HMDB51 split files (<class>_test_split{split_id}.txt) in {sdir}")
    vdir = videos or root
    tasks = []
    for label, name in enumerate(classes):
        path = os.path.join(sdir, f"{name}_test_split{split_id}.txt")
        for video, flag in _read_fields(path, 2):
            if flag not in ("0", "1", "2"):
                raise ValueError(f"{path}: {video}: split flag must be 0, 1 or 2, got {flag!r}")
            if flag != "0":
                split = "train" if flag == "1" else "val"
                tasks.append(Task(os.path.splitext(video)[0], os.path.join(vdir, name, video), split, label, name))
    return tasks, classes


# --------------------------------------------------------------------------- shared


def _check_split_id(split_id) -> None:
    if split_id not in SPLIT_IDS:
        raise ValueError(f"split id must be one of {SPLIT_IDS}, got {split_id!r}")


def _find_file(root: str, names: list[str], subdirs: tuple[str, ...] = ()) -> str | None:
    for d in (root, *(os.path.join(root, s) for s in subdirs), os.path.join(root, "annotations")):
        hit = next((os.path.join(d, n) for n in names if os.path.isfile(os.path.join(d, n))), None)
        if hit:
            return hit
    return None


def _read_fields(path: str, fields: int) -> list[list[str]]:
    """Whitespace-separated lines of exactly `fields` fields; blank lines skipped (the lists end with some)."""
    if not os.path.isfile(path):
        raise ValueError(f"annotation file not found: {path}")
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if parts and len(parts) != fields:
                raise ValueError(f"{path}:{n}: expected {fields} field(s), got {line.strip()!r}")
            if parts:
                rows.append(parts)
    return rows
