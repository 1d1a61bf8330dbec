"""What to prep: video lists and the official annotation files of each dataset, turned into tasks.

A task is one video with its split and label. Problems found here (an unknown label, a duplicate
id) do not stop the run: the task carries a `reject` reason and lands in the rejects file.

A test split without labels (SSv2's test.json, a list of bare paths) is stored with label None (null in the
manifest): `python -m eval` writes its predictions and submission files and no accuracy; training refuses it.
"""
from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass

from .lists import ListError, read_class_list, read_video_list

SPLITS = ("train", "val", "test")
MAX_CLASSES = 1_000_000  # a class list past this is a typo, and its names alone would fill memory
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".flv")


@dataclass
class Task:
    id: str
    path: str
    split: str
    label: int | None  # None: an unlabelled (test) video
    label_name: str | None
    reject: str | None = None
    key: str = ""  # set by number_tasks: the storage key, unique across the whole job


def number_tasks(tasks: list[Task]) -> list[Task]:
    """Gives each task its storage key; rejects a repeated id within a split, and a video already taken in
    another split (even under another label): one video in both train and val would leak into the evaluation."""
    seen, taken = set(), {}
    for i, t in enumerate(tasks):
        t.key = f"{i:08d}"
        if (t.split, t.id) in seen and not t.reject:
            t.reject = "duplicate id in the list"
        seen.add((t.split, t.id))
        where = os.path.normpath(os.path.abspath(t.path))
        first = taken.get(where)
        if first is not None and not t.reject:
            t.reject = (f"duplicate of {first.id!r} in the list" if first.split == t.split else
                        f"same video as {first.id!r} in split {first.split!r} (train/val leakage)")
        elif not t.reject:
            taken[where] = t
    return tasks


def split_of_list(path: str) -> str:
    stem = os.path.basename(path).lower()
    if "val" in stem:
        return "val"
    if "test" in stem:
        return "test"
    return "train"


def parse_video_lists(lists: list[str], root: str, classes_file: str | None = None, num_classes: int | None = None,
                      allow_outside_root: bool = False) -> tuple[list[Task], list[str]]:
    """`lists` entries are `PATH` or `SPLIT=PATH`; each line of a list is `relative/path label`, or in an
    unlabelled list (a test set) `relative/path` alone (the format: prep.lists, read by `read_video_list`).

    Labels are class names or numbers into the class list: that of `classes_file`, else 0..num_classes-1, else
    inferred from the lists; a label outside it is a reject. So is a path outside `root` unless allowed."""
    given = _given_classes(classes_file, num_classes)
    rows = []
    for entry in lists:
        split, _, path = entry.rpartition("=") if "=" in entry else ("", "", entry)
        split = split or split_of_list(path)
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r} in --list {entry!r}; expected one of {SPLITS}")
        if not os.path.isfile(path):
            raise ValueError(f"video list not found: {path}")
        rows += [(split, path, e) for e in read_video_list(path, given)]
    classes, scope = _list_classes([e.label for _, _, e in rows if e.label is not None], classes_file, num_classes,
                                   given)
    index = {name: i for i, name in enumerate(classes)}
    for _, path, e in rows if given else ():  # labels inferred from the lists are their names
        _check_numeric_label(path, e, classes, index)
    tasks = [_list_task(split, e.path, e.label, root, classes, index, scope) for split, _, e in rows]
    if not allow_outside_root:
        for t in tasks:
            if not t.reject and _outside(root, t.id):
                t.reject = "path outside --root (absolute or ../); pass --allow-outside-root to store it"
    return tasks, classes


def _outside(root: str, rel: str) -> bool:
    """Whether the list entry names a file outside `root` (as written: a symlinked folder inside root is inside)."""
    if os.path.isabs(rel):
        return True
    base = os.path.normpath(os.path.abspath(root))
    return os.path.commonpath([base, os.path.normpath(os.path.join(base, rel))]) != base


def _given_classes(classes_file: str | None, num_classes: int | None) -> list[str] | None:
    """The class list given on the command line (--classes or --num-classes), read before the video lists."""
    if classes_file and num_classes is not None:
        raise ValueError("give --classes or --num-classes, not both")
    if classes_file:
        return read_class_list(classes_file)
    if num_classes is not None:
        if not 1 <= num_classes <= MAX_CLASSES:
            raise ValueError(f"--num-classes must be from 1 to {MAX_CLASSES}, got {num_classes}")
        return [str(i) for i in range(num_classes)]
    return None


def _list_classes(labels: list[str], classes_file: str | None, num_classes: int | None,
                  given: list[str] | None) -> tuple[list[str], str]:
    """The class list and how to name it in a reject."""
    if classes_file:
        return given, f"the {len(given)} classes of {classes_file}"
    if num_classes is not None:
        if not all(re.fullmatch(r"\d+", x) for x in labels):
            raise ValueError("--num-classes needs numeric labels; the lists hold class names (use --classes)")
        return given, f"--num-classes {num_classes}"
    classes = classes_from_labels(labels)
    return classes, (f"the {len(classes)} classes inferred from the lists "
                     "(pass --num-classes or --classes if the label is right)")


def _check_numeric_label(path: str, entry, classes: list[str], index: dict) -> None:
    """A number that names one class and indexes another cannot be read either way: refused with its line."""
    label = entry.label
    if label is None or not re.fullmatch(r"\d+", label) or label not in index:
        return
    if int(label) < len(classes) and index[label] != int(label):
        raise ListError(f"{path}:{entry.line}: label {label} is ambiguous: the name of class {index[label]} "
                        f"and the index of class {classes[int(label)]!r}; write the class name instead")


def classes_from_labels(labels: list[str]) -> list[str]:
    """Names as they come, or for numeric labels 0..L where L is the largest label with at least half of 0..L in
    use: a stray label (a typo, 2000000) must not make millions of classes, yet a class without videos may be."""
    if not all(re.fullmatch(r"\d+", x) for x in labels):
        return sorted(set(labels))
    used = sorted({int(x) for x in labels})
    count = max((v + 1 for n, v in enumerate(used, 1) if 2 * n >= v + 1), default=0)
    return [str(i) for i in range(count)]


def _list_task(split, rel, label, root, classes, index, scope="the class list") -> Task:
    path = os.path.join(root, rel)
    if label is None:
        return Task(rel, path, split, None, None)
    if re.fullmatch(r"\d+", label) and label not in index:
        i = int(label)
        if i < len(classes):
            return Task(rel, path, split, i, classes[i])
        return Task(rel, path, split, -1, label, reject=f"unknown label {label}: outside {scope}")
    if label not in index:
        return Task(rel, path, split, -1, label, reject=f"unknown label {label!r}")
    return Task(rel, path, split, index[label], label)


# --------------------------------------------------------------------------- Something-Something v2


SSV2_RELEASE_PREFIX = "something-something-v2-"


def ssv2_tasks(root: str, videos: str | None = None) -> tuple[list[Task], list[str]]:
    """labels.json ({template: "index"}), train.json and validation.json, videos `<id>.webm`; each file also under
    the release's own name (something-something-v2-labels.json, ...). test.json ([{"id": ...}], no labels), when
    present, becomes the unlabelled split "test"."""
    with open(_ssv2_file(root, "labels.json")) as f:
        label_index = {k: int(v) for k, v in json.load(f).items()}
    classes = [None] * len(label_index)
    for name, i in label_index.items():
        classes[i] = name
    vdir = videos or first_existing(root, ["20bn-something-something-v2", "videos"]) or root
    tasks = []
    for split, fname in (("train", "train.json"), ("val", "validation.json")):
        for item in read_json(_ssv2_file(root, fname)):
            name = ssv2_template(item["template"])
            path = os.path.join(vdir, f"{item['id']}.webm")
            if name not in label_index:
                tasks.append(Task(str(item["id"]), path, split, -1, name, reject=f"unknown label {name!r}"))
            else:
                tasks.append(Task(str(item["id"]), path, split, label_index[name], name))
    test = _ssv2_file(root, "test.json", required=False)
    for item in read_json(test) if test else []:
        vid = str(item["id"] if isinstance(item, dict) else item)
        tasks.append(Task(vid, os.path.join(vdir, f"{vid}.webm"), "test", None, None))
    return tasks, classes


def _ssv2_file(root: str, name: str, required: bool = True) -> str | None:
    """`name` or its release name, in root, root/labels or root/annotations."""
    for d in (root, os.path.join(root, "labels"), os.path.join(root, "annotations")):
        for n in (name, SSV2_RELEASE_PREFIX + name):
            if os.path.isfile(os.path.join(d, n)):
                return os.path.join(d, n)
    if not required:
        return None
    raise ValueError(f"{name} (or {SSV2_RELEASE_PREFIX}{name}) not found under {root} (nor labels/ or annotations/)")


def ssv2_template(template: str) -> str:
    return template.replace("[", "").replace("]", "")


# --------------------------------------------------------------------------- Kinetics


def kinetics_tasks(root: str, videos: str | None = None, edition: str = "400") -> tuple[list[Task], list[str]]:
    """CSVs `label,youtube_id,time_start,time_end,split`; videos `<id>_<start:06d>_<end:06d>.mp4` anywhere under root.

    `edition` (400, 600, 700) only picks the CSV names: all editions share the columns and the video naming."""
    ann = _find_csvs(root, edition)
    rows = {split: _read_csv(path) for split, path in ann.items()}
    classes = sorted({r["label"] for r in rows["train"]})
    index = {c: i for i, c in enumerate(classes)}
    files = _index_videos(videos or root)
    tasks = []
    for split, items in rows.items():
        for r in items:
            vid = f"{r['youtube_id']}_{int(float(r['time_start'])):06d}_{int(float(r['time_end'])):06d}"
            path = files.get(vid, os.path.join(videos or root, vid + ".mp4"))
            label = r["label"]
            reject = None if label in index else f"unknown label {label!r}"
            tasks.append(Task(vid, path, split, index.get(label, -1), label, reject=reject))
    return tasks, classes


def _find_csvs(root: str, edition: str = "400") -> dict[str, str]:
    found = {}
    prefixes = (f"kinetics_{edition}_", f"kinetics{edition}_")
    val_names = [p + s for p in prefixes for s in ("val.csv", "validate.csv")]
    for split, names in (("train", ("train.csv", *(p + "train.csv" for p in prefixes))),
                         ("val", ("validate.csv", "val.csv", *val_names))):
        for d in (root, os.path.join(root, "annotations")):
            hit = next((os.path.join(d, n) for n in names if os.path.isfile(os.path.join(d, n))), None)
            if hit:
                found[split] = hit
                break
    if "train" not in found:
        raise ValueError(f"no Kinetics train CSV (train.csv) under {root} or {root}/annotations")
    return found


def _read_csv(path: str) -> list[dict]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    need = {"label", "youtube_id", "time_start", "time_end"}
    if rows and not need <= set(rows[0]):
        raise ValueError(f"{path}: expected columns {sorted(need)}, got {sorted(rows[0])}")
    return rows


def _index_videos(root: str) -> dict[str, str]:
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            stem, ext = os.path.splitext(n)
            if ext.lower() in VIDEO_EXTENSIONS:
                out.setdefault(stem, os.path.join(d, n))
    return out


def read_json(path: str):
    if not os.path.isfile(path):
        raise ValueError(f"annotation file not found: {path}")
    with open(path) as f:
        return json.load(f)


def first_existing(root: str, names: list[str]) -> str | None:
    return next((os.path.join(root, n) for n in names if os.path.isdir(os.path.join(root, n))), None)
