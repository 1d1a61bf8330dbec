"""The test protocol of one evaluation, settled once: whose sampling and crops (pipelines/protocols.py), the clip's
frames, the views, their geometry and the evaluated set, and where each came from.

Order of precedence: the command line's options, then `--protocol` (a protocol name, or a zoo key whose released
row fills every field), then for an authors' file the zoo row its file name names (else its project's protocol
with the model's contract), for a toolkit checkpoint its run's config (`protocol`, `augment.eval_scale`, ...).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from models import zoo
from pipelines import protocols
from pipelines.augment import AugmentConfig

log = logging.getLogger("eval")
# the authors' files' origins (models.checkpoints.Recognized.origin) -> their project's protocol
ORIGIN_PROTOCOLS = (("IBM", "ibm"), ("SIFAR", "sifar"), ("AIM", "mmaction"), ("mmaction", "mmaction"),
                    ("ILA", "ila"))


@dataclass(frozen=True)
class ViewOptions:
    """What the command line asked for (None / "" / False: not given)."""

    protocol: str = ""
    clips: int | None = None
    crops: int | None = None
    twice: bool = False
    frames: int | None = None
    sampling: str = ""
    frame_stride: int = 0
    augment: dict = field(default_factory=dict)  # eval_scale, eval_crop


@dataclass(frozen=True)
class TestPlan:
    scheme: str  # a pipelines.protocols name
    clips: int
    crops: int
    twice: bool
    geometry: tuple  # (short side, crop side)
    sampling: str  # config names: tsn | dense | frame_uniform ("" : the model's)
    frame_stride: int  # 0: the model's
    frames: int | None  # None: the checkpoint's or model's
    min_frames: int = 0  # the authors' evaluated set: videos shorter are left out
    source: str = "defaults"  # where the protocol came from, for the report
    zoo_key: str = ""

    def contract(self, contract):
        """The model's InputContract with the plan's sampling and stride."""
        return contract.replace(sampling=self.sampling or contract.sampling,
                                frame_stride=self.frame_stride or contract.frame_stride)

    def loader_options(self) -> dict:
        return {"protocol": self.scheme, "geometry": self.geometry, "twice": self.twice}

    def label(self) -> str:
        """The views as a folder name: protocol (or zoo key), clips x crops, twice."""
        return f"{self.zoo_key or self.scheme}_{self.clips}x{self.crops}" + ("_twice" if self.twice else "")

    def row(self, contract) -> dict:
        return {"protocol": self.scheme, "zoo_key": self.zoo_key or None, "source": self.source,
                "frames": contract.num_frames, "sampling": contract.sampling, "frame_stride": contract.frame_stride,
                "short_side": self.geometry[0], "crop": self.geometry[1], "min_frames": self.min_frames}


def zoo_rows_of(path: str, rec) -> list:
    """The released rows this file can be: by its file name (the name the zoo tells users to save it as), else by
    what its recogniser read in it (model, head size, variant arguments: models.zoo.matching_rows)."""
    name = os.path.basename(path)
    named = [e for e in zoo.ZOO if name in (e.file_name, e.file)]
    return named or zoo.matching_rows(rec.model, dict(rec.model_args or {}))


def origin_protocol(origin: str) -> str:
    return next((p for prefix, p in ORIGIN_PROTOCOLS if origin.startswith(prefix)), "vidkit")


def plan_frames(rec, path: str, options: ViewOptions) -> int | None:
    """The clip length to build the model for: the command line's, else a zoo row's (None: the file's own)."""
    entry, _ = _entry(options.protocol, rec, path)
    return options.frames or (entry.protocol.frames if entry else None)


def settle(rec, path: str, run_config: dict, options: ViewOptions, crop_size: int) -> TestPlan:
    """The plan of an evaluation of `path` (its Recognized `rec`, the run's config) with the given options."""
    entry, source = _entry(options.protocol, rec, path)
    if entry is None and not options.protocol and not rec.config:
        rows = [e.key for e in zoo_rows_of(path, rec)]
        log.warning("%s is not one released row of the zoo (%s): evaluating with %s's protocol and the model's "
                    "clip; pass --protocol ZOO_KEY for a released row's exact views", os.path.basename(path),
                    f"it can be {', '.join(rows)}" if rows else "none matches its name, model and head",
                    origin_protocol(rec.origin))
    row = entry.protocol.request() if entry else {}
    if entry is None and options.protocol:
        scheme, source = protocols.get(options.protocol).name, f"--protocol {options.protocol}"
    elif entry is None:
        # an authors' file has no run config: run_config's defaults name the toolkit's scheme, not its project's
        scheme = run_config["protocol"] if rec.config else origin_protocol(rec.origin)
        source = "the run's config" if rec.config else f"{rec.origin.split(' ')[0]}'s protocol"
    else:
        scheme = row["protocol"]
    clips = options.clips or row.get("clips") or 1
    crops = options.crops or row.get("crops") or 1
    geometry = _geometry(scheme, row, run_config, options, crop_size, crops)
    sampling = options.sampling or ({"uniform": "tsn"}.get(row.get("sampling"), row.get("sampling")) or "")
    return TestPlan(scheme, int(clips), int(crops), bool(options.twice), geometry, sampling,
                    options.frame_stride or row.get("frame_stride", 0), options.frames or row.get("frames"),
                    row.get("min_frames", 0), source, entry.key if entry else "")


def _entry(protocol: str, rec, path: str):
    """(zoo row, how it was found) or (None, "")."""
    if protocol and protocol not in protocols.PROTOCOLS:
        try:
            return zoo.find(protocol), f"--protocol {protocol}"
        except KeyError:
            raise protocols.ProtocolError(f"unknown --protocol {protocol!r}: one of "
                                          f"{', '.join(protocols.PROTOCOLS)} or a zoo key (python -m models zoo)")
    if protocol or rec.config:
        return None, ""
    rows = zoo_rows_of(path, rec)
    if len({e.protocol for e in rows}) != 1:  # none, or rows of other protocols (AIM's 8/16/32 frames)
        return None, ""
    how = "file name" if os.path.basename(path) in (rows[0].file_name, rows[0].file) else "model, head and variant"
    return rows[0], f"zoo row {rows[0].key} (by its {how})"


def _geometry(scheme: str, row: dict, run_config: dict, options: ViewOptions, crop_size: int,
              crops: int) -> tuple[int, int]:
    """(short side, crop side): a zoo row's, else the run's augment config (eval_scale, eval_crop) at the model's
    crop; the command line's eval_scale / eval_crop over either. ILA's code derives its short side from the crop."""
    augment = AugmentConfig(**{**(run_config.get("augment") or {}), **options.augment})
    protocol = protocols.get(scheme)
    crop = row.get("crop") or crop_size
    if "eval_scale" in options.augment or not row:
        short = augment.eval_short_side(crop)
    else:
        short = row.get("short_side")
    if scheme == "ila":
        if "eval_scale" in options.augment:
            raise protocols.ProtocolError("ILA's code sets the short side from the crop size: --eval-scale is not "
                                          "one of its options")
        short = None
    short, crop = protocol.geometry(crops, crop, short)
    full = options.augment.get("eval_crop", "" if row else augment.eval_crop)
    return short, (short if full == "full" else crop)
