"""What to prep: video lists and the official annotation files of each dataset, turned into tasks.

A task is one video with its split and label. Problems found here (an unknown label, a duplicate
id) do not stop the run: the task carries a `reject` reason and lands in the rejects file.
"""
from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass

SPLITS = ("train", "val", "test")
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".flv")


@dataclass
class Task:
    id: str
    path: str
    split: str
    label: int
    label_name: str
    reject: str | None = None
    key: str = ""  # set by number_tasks: the storage key, unique across the whole job


def number_tasks(tasks: list[Task]) -> list[Task]:
    seen = set()
    for i, t in enumerate(tasks):
        t.key = f"{i:08d}"
        if (t.split, t.id) in seen and not t.reject:
            t.reject = "duplicate id in the list"
        seen.add((t.split, t.id))
    return tasks


def split_of_list(path: str) -> str:
    stem = os.path.basename(path).lower()
    if "val" in stem:
        return "val"
    if "test" in stem:
        return "test"
    return "train"


def read_classes_file(path: str) -> list[str]:
    with open(path) as f:
        names = [line.strip() for line in f if line.strip()]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: duplicate class names")
    return names


def parse_video_lists(lists: list[str], root: str, classes_file: str | None = None) -> tuple[list[Task], list[str]]:
    """`lists` entries are `PATH` or `SPLIT=PATH`; each line of a list is `relative/path label`."""
    rows = []
    for entry in lists:
        split, _, path = entry.rpartition("=") if "=" in entry else ("", "", entry)
        split = split or split_of_list(path)
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r} in --list {entry!r}; expected one of {SPLITS}")
        if not os.path.isfile(path):
            raise ValueError(f"video list not found: {path}")
        rows += [(split, *r) for r in _read_list(path)]
    classes = read_classes_file(classes_file) if classes_file else _classes_from_labels([r[2] for r in rows])
    index = {name: i for i, name in enumerate(classes)}
    tasks = [_list_task(split, rel, label, root, classes, index) for split, rel, label in rows]
    return tasks, classes


def _read_list(path: str) -> list[tuple[str, str]]:
    out = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2:
                raise ValueError(f"{path}:{n}: expected 'relative/path label', got {line!r}")
            out.append((parts[0], parts[1]))
    return out


def _classes_from_labels(labels: list[str]) -> list[str]:
    if all(re.fullmatch(r"\d+", x) for x in labels):
        return [str(i) for i in range(max(int(x) for x in labels) + 1)] if labels else []
    return sorted(set(labels))


def _list_task(split, rel, label, root, classes, index) -> Task:
    path = os.path.join(root, rel)
    if re.fullmatch(r"\d+", label) and label not in index:
        i = int(label)
        if i < len(classes):
            return Task(rel, path, split, i, classes[i])
        return Task(rel, path, split, -1, label, reject=f"unknown label {label}")
    if label not in index:
        return Task(rel, path, split, -1, label, reject=f"unknown label {label!r}")
    return Task(rel, path, split, index[label], label)


# --------------------------------------------------------------------------- Something-Something v2


def ssv2_tasks(root: str, videos: str | None = None) -> tuple[list[Task], list[str]]:
    """labels.json ({template: "index"}), train.json and validation.json, videos `<id>.webm`."""
    ann = _find_dir(root, "labels.json")
    with open(os.path.join(ann, "labels.json")) as f:
        label_index = {k: int(v) for k, v in json.load(f).items()}
    classes = [None] * len(label_index)
    for name, i in label_index.items():
        classes[i] = name
    vdir = videos or _first_existing(root, ["20bn-something-something-v2", "videos"]) or root
    tasks = []
    for split, fname in (("train", "train.json"), ("val", "validation.json")):
        for item in _read_json(os.path.join(ann, fname)):
            name = ssv2_template(item["template"])
            path = os.path.join(vdir, f"{item['id']}.webm")
            if name not in label_index:
                tasks.append(Task(str(item["id"]), path, split, -1, name, reject=f"unknown label {name!r}"))
            else:
                tasks.append(Task(str(item["id"]), path, split, label_index[name], name))
    return tasks, classes


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


def _read_json(path: str):
    if not os.path.isfile(path):
        raise ValueError(f"annotation file not found: {path}")
    with open(path) as f:
        return json.load(f)


def _find_dir(root: str, name: str) -> str:
    for d in (root, os.path.join(root, "labels"), os.path.join(root, "annotations")):
        if os.path.isfile(os.path.join(d, name)):
            return d
    raise ValueError(f"{name} not found under {root} (nor labels/ or annotations/)")


def _first_existing(root: str, names: list[str]) -> str | None:
    return next((os.path.join(root, n) for n in names if os.path.isdir(os.path.join(root, n))), None)
