"""Writing what a user keeps without ever destroying it, and the checks that let a command refuse at its start.

Every file a command keeps (checkpoints, exports, scores, features, reports, submissions, manifests, plots) is
written by `atomic_write` / `atomic_path`: to a temporary name in the same folder, checked by the caller while it
still has that name, fsynced, then renamed over the final name. A failed or interrupted write leaves the previous
file as it was and nothing under the final name; its temporary file is removed (a kill -9 can leave one, never a
torn final file). This module imports nothing of the project, so every layer can use it.
"""
from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager


class OutputError(ValueError):
    """An output that must not or cannot be written (it is an input, its folder is not writable, no space);
    the message is one line naming the path and what to do."""


# ------------------------------------------------------------------------------------------- writing


@contextmanager
def atomic_path(path: str, tmp: str | None = None, previous: str | None = None, exclusive: bool = False):
    """Yields the temporary path to write `path`'s new contents to (by a writer that takes a path: ONNX, torch.jit);
    check it inside the block. A normal exit fsyncs it and renames it to `path`; an exception removes it and
    leaves `path` untouched. `tmp`: its name (default `path.PID.tmp`, so that two processes never share one);
    `previous`: where the file now at `path` moves first; `exclusive`: only if `path` does not exist yet (another
    process's file stays)."""
    path = os.fspath(path)
    tmp = tmp or f"{path}.{os.getpid()}.tmp"
    try:
        yield tmp
        _fsync(tmp)
        if exclusive:
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
            os.remove(tmp)
        else:
            if previous and os.path.exists(path):
                os.replace(path, previous)
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    _fsync_folder(os.path.dirname(os.path.abspath(path)))  # the rename itself survives a power cut


@contextmanager
def atomic_write(path: str, mode: str = "wb", **options):
    """Yields a file open on a temporary name (mode "w"/"wb"); on a normal exit it becomes `path` (see
    `atomic_path`, whose `tmp`, `previous` and `exclusive` options it takes). An OSError names `path`."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write writes whole files (mode 'w' or 'wb'), not {mode!r}")
    with atomic_path(path, **options) as tmp:
        try:
            with open(tmp, mode, **({"newline": ""} if mode == "w" else {})) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise _naming(e, os.fspath(path)) from None


def write_text(path: str, text: str, **options) -> None:
    with atomic_write(path, "w", **options) as f:
        f.write(text)


def write_json(path: str, obj, indent: int | None = None, **options) -> None:
    """JSON that is never torn and never holds NaN or Infinity (not JSON: most readers refuse it)."""
    text = json.dumps(obj, indent=indent, allow_nan=False)  # before the file is opened: a refusal writes nothing
    write_text(path, text, **options)


def _naming(e: OSError, path: str) -> OSError:
    """The same error (same class and errno) naming the final file instead of the temporary one, or none."""
    if e.filename == path or e.errno is None:
        return e
    return OSError(e.errno, e.strerror or str(e), path)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # a device that cannot (e.g. a pipe or /dev/null given as output): nothing to sync
        pass
    finally:
        os.close(fd)


def _fsync_folder(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


# ------------------------------------------------------------------------------------------- checks


def same_path(a: str, b: str) -> bool:
    """Whether two paths name the same file or folder (links and `..` resolved)."""
    return os.path.realpath(a) == os.path.realpath(b)


def within(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or lies below it (resolved)."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def refuse_input_as_output(outputs: list[tuple[str, str]], inputs: list[tuple[str, str]]) -> None:
    """One-line OutputError when an output would replace an input (compared resolved: links, `..`). Both are
    (option, path) pairs; empty paths are skipped."""
    for out_option, out in outputs:
        for in_option, inp in inputs:
            if out and inp and same_path(out, inp):
                raise OutputError(f"{out_option} {out} is the input {in_option} {inp}: writing it would destroy "
                                  f"the input; choose another {out_option.split()[0]}")


def check_writable(folder: str, option: str = "--out") -> None:
    """One-line OutputError unless files can be created in `folder` (or, when it does not exist yet, in the
    nearest folder above it, where it would be made): a probe file is created and removed. Nothing is made."""
    existing = os.path.abspath(folder)
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise OutputError(f"cannot write to {folder}: {existing} is a file, not a folder; choose another {option}")
    probe = os.path.join(existing, f".write-probe-{os.getpid()}")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.remove(probe)
    except OSError as e:
        raise OutputError(f"cannot write to {folder}: {e.strerror or e} ({existing}); choose another {option}"
                          ) from None


def check_free_space(folder: str, need: int, what: str, option: str) -> None:
    """One-line OutputError when the file system of `folder` (or of the nearest folder above it) has less than
    `need` bytes free for `what`."""
    existing = os.path.abspath(folder)
    while not os.path.isdir(existing):
        existing = os.path.dirname(existing)
    free = shutil.disk_usage(existing).free
    if free < need:
        raise OutputError(f"{folder}: {free / 2**20:.0f} MiB free, less than the {need / 2**20:.0f} MiB of {what}: "
                          f"free some space or choose another {option}")
