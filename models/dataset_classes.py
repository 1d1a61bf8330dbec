"""The class names of the zoo's datasets, shipped as package data (models/classes/*.txt, one name per line, line k
naming the released heads' output k; models/classes/README.md says where each list comes from).

The source projects' released files record no class names: each zoo row names its list (models.zoo.Release.classes)
and models.zoo.class_list_for finds a file's row.
"""
from __future__ import annotations

from importlib import resources

# list name -> number of names; a zoo row's `classes` is one of these
CLASS_LISTS = {"kinetics400": 400, "kinetics600": 600, "kinetics700": 700, "ssv2": 174, "diving48": 48}


class ClassListError(ValueError):
    """A shipped list that is missing or damaged (an install without the package data); one line."""


def class_list_path(name: str):
    """The installed file of list `name` (a Traversable: a plain path in a normal or editable install)."""
    if name not in CLASS_LISTS:
        raise ClassListError(f"no shipped class list {name!r} (there are: {', '.join(CLASS_LISTS)})")
    return resources.files("models").joinpath("classes", f"{name}.txt")


def load_class_list(name: str) -> list[str]:
    """The names of list `name`, in the order of the released heads' outputs; checked against its count."""
    path = class_list_path(name)
    try:
        names = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ClassListError(f"class list {name} is not installed ({path}): reinstall the project "
                             "(`make install`), whose package data ships models/classes/") from None
    if len(names) != CLASS_LISTS[name] or len(set(names)) != len(names) or not all(names):
        raise ClassListError(f"{path}: {len(names)} lines ({len(set(names))} distinct, non-empty), expected "
                             f"{CLASS_LISTS[name]} distinct class names: the installed file is damaged")
    return names
