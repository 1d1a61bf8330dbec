"""python -m eval predict VIDEO|FOLDER|LIST [...] --ckpt CKPT [--clips N --crops M] [--twice] [--top 5] [--json]
[--classes FILE] [--chunk N]

Classifies video files as they are, with no prep step for the user: any file PyAV opens (H.264, HEVC, VP9, AV1,
MPEG-4, MJPEG, ... in mp4, webm, mkv, avi, ...), every video below a folder, or the paths of a list file (one path
per line, relative to the list's folder, with or without labels: prep's video-list format, prep/lists.py). A file
is a list when its content is text, a video otherwise, whatever its name (a video called x.txt is a video), and
predict says on stderr how it read each such file. Prints each video's top classes with their
probabilities, and one line with the reason for each file that cannot be read; --json prints one JSON object.
Exit status 1 only when no video could be predicted.

It is evaluation itself, not a re-implementation: the videos are prepped by prep's own code (`prep.runner.run_prep`,
unlabelled, in parallel worker processes, into a temporary store, storing frames the way the run's own prepped data
does: its prep.json's short side, fps, JPEG quality and chroma, else prep's defaults) and that store is scored by
`python -m eval`'s own `evaluate`. So a video gets the frames, resizing and views (and so the scores) it gets when
prepped into a dataset and evaluated (--twice adds mmaction's twice-sample views, tsn sampling only, as it does
there). The videos go in chunks of --chunk (default with a GPU: one chunk up to 32 videos, else at most 16 chunks of
at least 32; on the CPU one chunk, where prep and the model would share the same cores and chunking measured slower):
each chunk is prepped into its own store (the work dir's chunk-NNN/store; store/ when there is one chunk) in a
background process while the model scores the chunk before it, and the rows are merged back in input order, with
one merged report in the work dir's eval/ (what `python -m eval` writes for a store of them all). Chunking changes
no score: each video's frames and views do not depend on the other videos of its store.

Class names come from the checkpoint (toolkit checkpoints record them); the source projects' released files record
none: a file the zoo lists (`python -m models zoo`: the same model, variant and classifier size) gets its row's shipped
list (models/classes/), any other needs --classes FILE (one name per line in the model's order, or a classes.json).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import multiprocessing as mp
import os
import re
import signal
import sys
import tempfile
import time

from prep.cli import COUNT, POSITIVE_INT, run_main
from prep.decoded import DecodeOptions
from prep.guard import PrepInterrupted, stop_on_signals
from prep.outputs import check_writable, within
from prep.remote import is_remote, metadata_root
from prep.jsonl import read_jsonl
from prep.runner import JobOptions, NothingStored, run_prep
from prep.lists import ListError, looks_like_text, read_class_list, read_video_list
from prep.tasks import VIDEO_EXTENSIONS, Task, number_tasks

from .cli import EXPECTED, add_view_args, augment_overrides
from .run_config import run_config

# what a folder is searched for (a file named on the command line is tried whatever its name)
FOLDER_EXTENSIONS = VIDEO_EXTENSIONS + (".mpg", ".mpeg", ".ts", ".m2ts", ".wmv", ".3gp", ".ogv", ".mjpeg", ".gif")
SPLIT = "test"
DECODE_KEYS = ("short_side", "fps", "quality", "chroma", "min_frames")  # what decides the stored frames
# the default chunking: inputs up to MIN_CHUNK videos stay one chunk; larger ones are split into at most
# MAX_CHUNKS, as each chunk pays for loading the checkpoint and building a DALI pipeline again
MIN_CHUNK, MAX_CHUNKS = 32, 16
log = logging.getLogger("eval.predict")


class PredictError(ValueError):
    """A one-line refusal (no class names, an image checkpoint, no video given)."""


def collect_videos(inputs: list[str], classes: list[str] | None = None) -> tuple[list[str], list[dict], list[dict]]:
    """(video paths in the order given, each once; [{"video", "reason"}] for inputs that name no video at all;
    [{"input", "read_as", ...}] saying how each file that could be either was read). A file is a list when its
    content is text (prep.lists.looks_like_text), a video otherwise, whatever its name; a list's labels (read
    with `classes`, the model's) are not used. A path that does not exist is kept: prep rejects it with its reason
    like any other unreadable file."""
    videos, empty, readings = [], [], []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(d, n) for d, _, names in os.walk(item) for n in names
                           if n.lower().endswith(FOLDER_EXTENSIONS))
            videos += found
            if not found:
                empty.append({"video": item, "reason": f"folder without video files ({' '.join(FOLDER_EXTENSIONS)})"})
        elif os.path.isfile(item) and looks_like_text(item):
            listed, labelled = _read_path_list(item, classes)
            videos += listed
            readings.append({"input": item, "read_as": "list", "videos": len(listed), "labels_ignored": labelled})
            if not listed:
                empty.append({"video": item, "reason": "list file without videos"})
        else:
            videos.append(item)
            if os.path.isfile(item) and not item.lower().endswith(FOLDER_EXTENSIONS):
                readings.append({"input": item, "read_as": "video"})
    seen, unique = set(), []
    for v in videos:
        key = os.path.normpath(os.path.abspath(v))
        if key not in seen:
            seen.add(key)
            unique.append(v)
    return unique, empty, readings


def _read_path_list(path: str, classes: list[str] | None) -> tuple[list[str], bool]:
    """(the list's video paths, relative ones to the list's folder; whether its lines carry labels)."""
    base = os.path.dirname(path)
    entries = read_video_list(path, classes)
    return [e.path if os.path.isabs(e.path) else os.path.join(base, e.path) for e in entries], \
        any(e.label is not None for e in entries)


def reading_text(reading: dict) -> str:
    """How an input file was read, as predict says it on stderr."""
    if reading["read_as"] == "video":
        return f"{reading['input']}: binary content, read as a video"
    labels = ", labels ignored" if reading["labels_ignored"] else ""
    return f"{reading['input']}: text, read as a list of {reading['videos']} videos{labels}"


def read_class_names(path: str) -> list[str]:
    """One name per line, or a JSON list (prep's classes.json) or {name: index} object (SSv2's labels.json): the
    format and checks of prep.lists.read_class_list."""
    try:
        return read_class_list(path)
    except ListError as e:
        raise PredictError(str(e)) from None


def model_classes(ckpt: str, rec, classes_file: str | None) -> list[str]:
    """--classes, else the names the file records, else the shipped list of the zoo rows the file matches."""
    if classes_file:
        return read_class_names(classes_file)
    if rec.classes:
        return list(rec.classes)
    from models.zoo import class_list_for  # as recognize_file: the models package imports torch

    found = class_list_for(rec.model, rec.model_args)
    if found:
        log.info("%s: class names from the shipped %s list (models/classes/%s.txt)", ckpt, found[0], found[0])
        return found[1]
    raise PredictError(f"{ckpt} ({rec.origin}: {rec.model}, {rec.model_args.get('num_classes')} classes) records no "
                       "class names and matches no zoo row (python -m models zoo): pass --classes "
                       "FILE (one name per line in the model's order, or a classes.json)")


def decode_options(run_data: str) -> DecodeOptions:
    """Frames stored as the run's prepped data stores them (its prep.json), else as prep stores them by default.
    Always JPEG frames: a store of encoded videos would refuse streams no NVDEC decodes."""
    if is_remote(run_data):  # trained on an s3:// store: its prep.json, through the node cache
        run_data = metadata_root(run_data)
    path = os.path.join(run_data, "prep.json") if run_data else ""
    decode = {}
    if path and os.path.isfile(path):
        with open(path) as f:
            decode = json.load(f).get("decode") or {}
    return DecodeOptions(**{k: decode[k] for k in DECODE_KEYS if k in decode})


def prep_videos(videos: list[str], classes: list[str], out: str, decode: DecodeOptions, workers: int,
                progress: bool) -> tuple[int, list[dict]]:
    """Preps `videos` unlabelled into `out` (ids: the paths as given): (videos stored, [{"video", "reason"}] of the
    rejected ones)."""
    tasks = number_tasks([Task(v, v, SPLIT, None, None) for v in videos])
    job = JobOptions(workers=max(1, min(workers, len(tasks))), progress=progress)
    try:
        stored = run_prep(tasks, classes, out, decode, job)["stored"]
    except NothingStored:
        stored = 0  # every file unreadable: each has its line in rejects.jsonl
    return stored, [{"video": r["id"], "reason": r["reason"]} for r in read_jsonl(os.path.join(out, "rejects.jsonl"))]


def predict(inputs: list[str], ckpt: str, d, classes_file: str | None = None, workers: int = 0, top: int = 5,
            keep: str = "", progress: bool = True, chunk: int = 0, **view) -> dict:
    """Top classes of every video of `inputs`, prepped and scored `chunk` videos at a time (0: chunk_size's
    default); `view`: `eval.run.evaluate`'s protocol and view arguments."""
    from models.checkpoints import recognize_file

    if keep:
        check_keep(keep, inputs + ([classes_file] if classes_file else []))
    if not inputs:
        raise PredictError("no video given")
    rec = recognize_file(ckpt, view.get("use_ema", True))
    cfg = run_config(rec)
    if cfg.get("task", "video") == "image":
        raise PredictError(f"{ckpt} is an image pre-training checkpoint: predict classifies videos")
    classes = model_classes(ckpt, rec, classes_file)
    videos, unreadable, readings = collect_videos(inputs, classes)
    size = chunk or chunk_size(len(videos), overlap=d.device.type == "cuda")
    chunks = [videos[i:i + size] for i in range(0, len(videos), size)]
    prep_args = (classes, decode_options(cfg["data"]), workers or os.cpu_count() or 1, progress)
    start = time.time()
    with _workdir(keep) as work:
        scores, failed, summary, seconds = _prep_and_score(chunks, work, prep_args, (ckpt, d, progress, view))
    failed.update((r["video"], r["reason"]) for r in unreadable)
    rows = [_row(v, scores[v], classes, top) if v in scores else {"video": v, "reason": failed.get(v, "not scored")}
            for v in videos] + unreadable
    return {"checkpoint": ckpt, "model": rec.model,
            **{k: summary.get(k) for k in ("clips", "crops", "twice_sample", "views", "protocol")}, "inputs": readings,
            "predicted": len(scores), "unreadable": len(rows) - len(scores), "chunks": len(chunks),
            "seconds": dict(seconds, total=round(time.time() - start, 2)), "videos": rows}


def check_keep(keep: str, inputs: list[str]) -> None:
    """Before any work: --keep can be written, and no input lies in a folder predict writes there (store/, eval/,
    chunk-NNN/), where a later step would replace it."""
    check_writable(keep, "--keep")
    for item in inputs:
        if not within(item, keep):
            continue
        top = os.path.relpath(os.path.realpath(item), os.path.realpath(keep)).split(os.sep)[0]
        if top in ("store", "eval") or re.fullmatch(r"chunk-\d{3}", top):
            raise PredictError(f"input {item} lies in {os.path.join(keep, top)}, which predict writes (--keep "
                               f"{keep}): choose another --keep")


def chunk_size(videos: int, overlap: bool = True) -> int:
    """The default: one chunk up to MIN_CHUNK videos, else MAX_CHUNKS chunks of at least MIN_CHUNK videos; one
    chunk without `overlap` (a CPU-only run: prep and the model share the cores, docs/benchmarks.md)."""
    if not overlap:
        return max(1, videos)
    return max(MIN_CHUNK, math.ceil(videos / MAX_CHUNKS))


def _prep_and_score(chunks: list[list[str]], work: str, prep_args: tuple, score_args: tuple):
    """({video: scores}, {video: reason}, the merged summary, {"prep", "model"} seconds): chunk k+1 is prepped
    in the background while chunk k is scored. "prep" sums the chunks' prep times, "model" their scoring times:
    they overlap, so their sum can exceed the wall time."""
    if not chunks:
        return {}, {}, {}, {"prep": 0.0, "model": 0.0}
    folders = [work] if len(chunks) == 1 else [os.path.join(work, f"chunk-{k:03d}") for k in range(len(chunks))]
    scores, failed, summaries, seconds = {}, {}, [], {"prep": 0.0, "model": 0.0}
    # Ctrl-C or SIGTERM: PrepInterrupted here, which stops the background prep before main says its one line
    with stop_on_signals():
        pending = _BackgroundPrep(chunks[0], os.path.join(folders[0], "store"), *prep_args)
        try:
            for k, folder in enumerate(folders):
                stored, rejects, prep_s = pending.result()
                pending = (_BackgroundPrep(chunks[k + 1], os.path.join(folders[k + 1], "store"), *prep_args)
                           if k + 1 < len(chunks) else None)
                began = time.time()
                part, summary = (_score(score_args[0], score_args[1], os.path.join(folder, "store"),
                                        os.path.join(folder, "eval"), *score_args[2:]) if stored else ({}, {}))
                seconds["prep"] += prep_s
                seconds["model"] += time.time() - began
                scores.update(part)
                failed.update((r["video"], r["reason"]) for r in rejects + summary.get("unreadable", []))
                summaries.append(summary)
        finally:
            if pending is not None:
                pending.cancel()
    summary = _merge_reports(summaries, work) if len(chunks) > 1 else summaries[0]
    return scores, failed, summary, {k: round(v, 2) for k, v in seconds.items()}


class _BackgroundPrep:
    """`prep_videos` of one chunk in a forked child process. A process, not a thread: the child's main thread runs
    prep's own signal handling, so terminating it stops its decoding workers the way a Ctrl-C stops a prep run,
    and its decoding does not share this process's interpreter lock with the model."""

    def __init__(self, videos: list[str], out: str, classes, decode, workers: int, progress: bool):
        ctx = mp.get_context("fork")
        self._out = out
        self._results, send = ctx.Pipe(duplex=False)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()  # the child flushes its copy of the buffers when it exits: nothing may be printed twice
        self._process = ctx.Process(target=_prep_child, args=(send, videos, classes, out, decode, workers, progress),
                                    name="predict-prep")
        self._process.start()
        send.close()
        with contextlib.suppress(OSError):  # the child does it too: whichever comes first
            os.setpgid(self._process.pid, self._process.pid)

    def result(self) -> tuple[int, list[dict], float]:
        """prep_videos' (stored, rejects) and its seconds; raises what it raised."""
        try:
            outcome = self._results.recv()
        except EOFError:
            self.cancel()
            raise RuntimeError(f"prep into {self._out} died (exit code {self._process.exitcode})") from None
        self._process.join(10)  # it exits once it has sent
        self.cancel()
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def cancel(self) -> None:
        """Stops the child (SIGTERM: prep stops its workers and removes its spool), waits for it, and kills what is
        left of its process group: workers a child killed or interrupted mid-start could not stop itself."""
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            # a group outlives its leader while a member lives, and its id is not reused meanwhile
            os.killpg(self._process.pid, signal.SIGKILL)
        self._process.join()
        self._results.close()


def _prep_child(conn, videos: list[str], *args) -> None:
    # its own process group, with its workers: a Ctrl-C at the terminal is the parent's to handle (it stops this
    # child), and the parent can stop every process of the group
    os.setpgid(0, 0)
    began = time.time()
    try:
        outcome = (*prep_videos(videos, *args), time.time() - began)
    except BaseException as e:  # the parent raises it: a prep error says its one line there
        outcome = e
    try:
        conn.send(outcome)
    except Exception:  # an exception that does not pickle
        conn.send(RuntimeError(f"{type(outcome).__name__}: {outcome}"))
    conn.close()


def _merge_reports(summaries: list[dict], work: str) -> dict:
    """The chunks' reports as one, in the work dir's eval/: what `python -m eval` writes for one store of them all."""
    import numpy as np
    import torch

    from .dump import load_scores
    from .run import write_reports

    scored = [s for s in summaries if s]
    if not scored:
        return {}
    dumps = [load_scores(s["out_dir"]) for s in scored]
    records = [{"id": i, "label": label} for _, index in dumps for i, label in zip(index["ids"], index["labels"])]
    merged = dict(scored[0], data=work, videos=sum(s["videos"] for s in scored),
                  damaged=[r for s in scored for r in s["damaged"]], chunks=[s["data"] for s in scored])
    for key in ("out_dir", "submission", "unreadable"):  # evaluate's return, not its metrics.json
        merged.pop(key, None)
    scores = torch.from_numpy(np.concatenate([s for s, _ in dumps]))
    write_reports(os.path.join(work, "eval"), merged, None, scores, records, dumps[0][1]["classes"])
    return merged


def _workdir(keep: str):
    if keep:
        os.makedirs(keep, exist_ok=True)
        return contextlib.nullcontext(keep)
    return tempfile.TemporaryDirectory(prefix="vidkit-predict-")


def _score(ckpt: str, d, store: str, out_dir: str, progress: bool, view: dict) -> tuple[dict, dict]:
    """({video: mean softmax over its views}, evaluate's summary with "unreadable": [{"video", "reason"}] of its
    damaged videos) of the prepped store, by `python -m eval` itself."""
    from .dump import load_scores
    from .run import evaluate

    summary = evaluate(ckpt, d, data=store, split=SPLIT, out_dir=out_dir, progress=progress, out_option="--keep",
                       **view)
    scores, index = load_scores(summary["out_dir"])
    damaged = [{"video": r["id"], "reason": f"damaged in the temporary store: {r['reason']}"}
               for r in summary["damaged"]]
    return dict(zip(index["ids"], scores)), dict(summary, unreadable=damaged)


def _row(video: str, scores, classes: list[str], top: int) -> dict:
    best = scores.argsort()[::-1][:top]
    return {"video": video, "top": [{"class": classes[i], "probability": float(scores[i])} for i in best]}


def print_text(result: dict) -> None:
    for row in result["videos"]:
        if "top" in row:
            print(f"{row['video']}: " + ", ".join(f"{t['class']} {t['probability']:.3f}" for t in row["top"]))
        else:
            print(f"{row['video']}: not predicted: {row['reason']}")
    s = result["seconds"]
    print(f"predict: {result['predicted']} of {len(result['videos'])} videos in {s['total']:.1f} s "
          f"({result['predicted'] / max(s['total'], 1e-9):.2f} videos/s; prep {s['prep']:.1f} s, "
          f"model {s['model']:.1f} s)", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval predict", description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="+", metavar="VIDEO", help="video files, folders (searched recursively) or list "
                   "files (text: one path per line, labels allowed; told apart from videos by content)")
    add_view_args(p, data=False)
    p.add_argument("--classes", help="class names, one per line in the model's order, or a classes.json (needed for "
                   "a source project's file the zoo does not list; a zoo file gets its row's shipped list)")
    p.add_argument("--top", type=POSITIVE_INT, default=5, help="classes printed per video")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    p.add_argument("--workers", type=COUNT, default=0, help="prep decoding processes (0: one per core)")
    p.add_argument("--chunk", type=COUNT, default=0, metavar="N", help="videos prepped and scored at a time; the "
                   f"next chunk is prepped while one is scored (0: on a GPU one chunk up to {MIN_CHUNK} videos, "
                   f"else at most {MAX_CHUNKS} chunks of at least {MIN_CHUNK}; on the CPU one chunk)")
    p.add_argument("--keep", default="", metavar="DIR", help="keep the prepped store and eval report in DIR "
                   "(default: a temporary folder, removed)")
    return p


def main(argv=None) -> int:
    return run_main("eval predict", _main, argv, expected=EXPECTED)


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from runtime.dist import setup_distributed

    try:
        result = predict(args.inputs, args.ckpt, setup_distributed(args.device), classes_file=args.classes,
                         workers=args.workers, top=args.top, keep=args.keep, progress=not args.no_progress,
                         chunk=args.chunk,
                         clips=args.clips, crops=args.crops, batch_size=args.batch_size, amp=args.amp,
                         py_workers=args.py_workers, use_ema=not args.no_ema, num_frames=args.frames,
                         sampling=args.sampling, frame_stride=args.frame_stride, augment=augment_overrides(args),
                         twice=args.twice, protocol=args.protocol)
    except PrepInterrupted as e:  # its background prep stopped: nothing to resume, unlike prep's own message
        print(f"eval predict: interrupted by {signal.Signals(e.signum).name}", file=sys.stderr)
        return e.exit_code
    for reading in result["inputs"]:
        print(f"eval predict: {reading_text(reading)}", file=sys.stderr)
    if args.json:
        print(json.dumps(result))
    else:
        print_text(result)
    return 0 if result["predicted"] else 1


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
