"""The user's list files, one reader per kind, used everywhere such a file is read.

Class lists (`prep videos --classes`, the presets' `--subset`, `eval predict --classes`, `models info/export
--classes`, a text classifier's class names): UTF-8 text without a byte-order mark, one class name per line, the
line's position its label (line 1 is label 0). Every line holds a name: no blank line, no space or tab at either
end, no name twice, Unix line ends (a CR LF file is refused: a reader that keeps the CR would make other names).
The last line may lack its newline. A `.json` file is a JSON list of names in label order, or an object
{name: index} (Something-Something's labels.json) whose indices are exactly 0..N-1; a prepped dataset's folder
means its classes.json. The same checks apply to the names of each form. Anything else is refused with one line
naming the file and the line, so that a stray blank line cannot shift every label after it.

Video lists (`prep videos --list`, `eval predict LIST`): UTF-8 text without a byte-order mark, one video per line,
`PATH LABEL` (or `PATH` alone on every line: an unlabelled test list). Blank lines and lines starting with `#`
are skipped. The label is a class name or a class index (a number: 0 is the first class); a number that is also
the name of another class is refused as ambiguous. Separators, in this order:

- a line holding a tab is `PATH<TAB>LABEL`: either may contain spaces;
- otherwise fields are separated by spaces, and a field that contains spaces is written in double quotes:
  `"my videos/a.mp4" "playing guitar"`;
- an unquoted line with more than two fields (`a.mp4 playing guitar`) is split where its end names a known class
  or class index (of `--classes` or `--num-classes`, or the model's in `eval predict`), if exactly one split
  does; otherwise it is refused as ambiguous with its line number, never split at a guess.
"""
from __future__ import annotations

import codecs
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

BOM = b"\xef\xbb\xbf"
TEXT_PROBE_BYTES = 64 * 1024  # what `looks_like_text` reads: a video container has NUL bytes long before this
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_FIELDS = re.compile(r'"([^"]*)"|([^\s"]+)')
_WHOLE_LINE = re.compile(r'\s*(?:(?:"[^"]*"|[^\s"]+)\s*)*')


class ListError(ValueError):
    """A list file that is not what its format says: one line naming the file and the line."""


@dataclass(frozen=True)
class ListEntry:
    line: int  # 1-based line number in the file, for messages
    path: str  # as written (relative paths are the caller's to resolve)
    label: str | None  # None in an unlabelled list


# --------------------------------------------------------------------------- class lists


def read_class_list(path: str) -> list[str]:
    """The class names of `path` in label order, checked (module docstring); ListError otherwise."""
    if os.path.isdir(path):
        path = os.path.join(path, "classes.json")
    if not os.path.isfile(path):
        raise ListError(f"class list not found: {path}")
    if path.lower().endswith(".json"):
        return _json_class_list(path)
    names = [line for _, line in _text_lines(path)]
    check_class_names(names, path, what="line")
    if not names:
        raise ListError(f"{path}: empty class list (one class name per line)")
    return names


def check_class_names(names: list, source: str, what: str = "entry") -> None:
    """Names that are non-empty strings without surrounding whitespace, each once; `source` names them in the
    one-line refusal (a file, or a config key for names given inline). `what`: "line" (a text file: file:LINE:)
    or "entry" (a JSON or YAML list, counted from 0 as labels are)."""
    first = {}
    for i, name in enumerate(names):
        where = f"{source}:{i + 1}:" if what == "line" else f"{source}: entry {i}:"
        if not isinstance(name, str):
            raise ListError(f"{where} {name!r} is not a class name (a string)")
        if not name.strip():
            raise ListError(f"{where} blank {what}: every {what} names a class (a blank one would shift the labels "
                            "of all classes after it); remove it")
        if name != name.strip():
            raise ListError(f"{where} class name {name!r} starts or ends with whitespace; remove it "
                            "(names are matched exactly)")
        if name in first:
            other = first[name] + 1 if what == "line" else first[name]
            raise ListError(f"{where} class name {name!r} repeats {what} {other}; each class is listed once "
                            f"(its {what}'s position is its label)")
        first[name] = i


def class_order_change(recorded, current) -> str | None:
    """None when `current` is the class list `recorded` (a checkpoint's, in label order), else its first
    difference in words; a checkpoint that records no classes (None) has nothing to compare."""
    if recorded is None or list(recorded) == list(current):
        return None
    recorded, current = list(recorded), list(current)
    for i, (a, b) in enumerate(zip(recorded, current)):
        if a != b:
            return f"label {i} is {a!r} in the checkpoint, {b!r} in the data"
    shorter, what = (current, "the data") if len(current) < len(recorded) else (recorded, "the checkpoint")
    extra = (recorded if shorter is current else current)[len(shorter)]
    return (f"{len(recorded)} classes in the checkpoint, {len(current)} in the data: label {len(shorter)} "
            f"({extra!r}) is missing from {what}")


def _json_class_list(path: str) -> list[str]:
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw.startswith(BOM):
            raise ListError(f"{path}: starts with a byte-order mark (BOM): save it as UTF-8 without BOM")
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ListError(f"{path}: not a JSON class list ({e})") from None
    if isinstance(value, dict):
        indices = sorted(value.values(), key=lambda v: int(v) if str(v).isdigit() else -1)
        if [str(v) for v in indices] != [str(i) for i in range(len(value))]:
            raise ListError(f"{path}: an object {{name: index}} needs the indices 0..{len(value) - 1}, each once")
        value = [name for name, _ in sorted(value.items(), key=lambda kv: int(kv[1]))]
    if not isinstance(value, list) or not value:
        raise ListError(f"{path}: expected a JSON list of class names or an object {{name: index}}")
    check_class_names(value, path)
    return value


def _text_lines(path: str) -> list[tuple[int, str]]:
    """(line number, text) of a UTF-8 file without BOM or CR; the last line's newline is optional."""
    lines = _decoded_lines(path)
    if lines and lines[-1][1] == "":
        lines.pop()  # the final newline
    for number, line in lines:
        if "\r" in line:
            raise ListError(f"{path}:{number}: ends in CR LF (Windows line ends): convert the file to Unix "
                            "line ends (dos2unix)")
    return lines


def _decoded_lines(path: str) -> list[tuple[int, str]]:
    """(line number, text) of a UTF-8 file without BOM, split at each newline."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw.startswith(BOM):
        raise ListError(f"{path}:1: starts with a byte-order mark (BOM): save the file as UTF-8 without BOM")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ListError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); a list file is "
                        "UTF-8 text") from None
    return list(enumerate(text.split("\n"), 1))


# --------------------------------------------------------------------------- video lists


def read_video_list(path: str, labels: Sequence[str] | None = None) -> list[ListEntry]:
    """The entries of a video list (module docstring). `labels`: the known class names in label order (so their
    indices are known labels too), which settle an unquoted line of more than two fields; a list is labelled on
    every line or on none."""
    entries = []
    for number, line in _decoded_lines(path):
        text = line.strip()  # a CR of CR LF line ends is harmless here
        if text and not text.startswith("#"):
            entries.append(_entry(path, number, text, labels))
    bare = [e.line for e in entries if e.label is None]
    if bare and len(bare) != len(entries):
        raise ListError(f"{path}:{bare[0]}: no label, but other lines of the list have one "
                        "(label every line, or none for an unlabelled test list)")
    return entries


def _entry(path: str, number: int, text: str, labels: Sequence[str] | None) -> ListEntry:
    where = f"{path}:{number}"
    if "\t" in text:
        fields = [f.strip() for f in text.split("\t")]
        if len(fields) != 2 or not all(fields):
            raise ListError(f"{where}: {len(fields)} tab-separated fields; expected PATH<TAB>LABEL")
        return ListEntry(number, fields[0], fields[1])
    if not _WHOLE_LINE.fullmatch(text):
        raise ListError(f"{where}: unbalanced double quote in {text!r}")
    matches = list(_FIELDS.finditer(text))
    quoted = any(m.group(1) is not None for m in matches)
    fields = [m.group(1) if m.group(1) is not None else m.group(2) for m in matches]
    if len(fields) <= 2:
        if any(not f for f in fields):
            raise ListError(f"{where}: an empty quoted field in {text!r}")
        return ListEntry(number, fields[0], fields[1] if len(fields) == 2 else None)
    if quoted:
        raise ListError(f"{where}: {len(fields)} fields; expected PATH LABEL (quote a field that has spaces)")
    return _split_by_label(where, number, text, matches, labels)


def _split_by_label(where: str, number: int, text: str, matches: list, labels: Sequence[str] | None) -> ListEntry:
    """An unquoted line of 3+ fields: PATH and LABEL where the line's end is a known class name, if exactly once."""
    hint = ('quote the label or the path ("playing guitar"), or separate PATH and LABEL by a tab')
    if not labels:
        raise ListError(f"{where}: {len(matches)} space-separated fields in {text!r}, so where the path ends is "
                        f"ambiguous: {hint}")
    splits = [(text[:m.start()].rstrip(), text[m.start():]) for m in matches[1:]]
    names = set(labels)
    known = [(p, label) for p, label in splits
             if label in names or (label.isascii() and label.isdigit() and int(label) < len(labels))]
    if len(known) != 1:
        found = "no known class" if not known else " and ".join(repr(label) for _, label in known)
        raise ListError(f"{where}: {len(matches)} space-separated fields in {text!r} and its end names {found}: "
                        f"{hint}")
    return ListEntry(number, *known[0])


def looks_like_text(path: str) -> bool:
    """Whether a file reads as text (a list) rather than as a video: its start is UTF-8 without control bytes
    other than tab and line ends (every video container has some in its first bytes). Decided by content, whatever
    the file's name: a video called x.txt is a video."""
    with open(path, "rb") as f:
        head = f.read(TEXT_PROBE_BYTES)
    if _CONTROL.search(head):
        return False
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)  # a character cut at the end is fine
    except UnicodeDecodeError:
        return False
    return True
