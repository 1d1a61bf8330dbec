"""The released checkpoints of the five source projects, as data: what each file is, which toolkit model and
arguments it loads into, the authors' test protocol, the published top-1, and the `make eval` command that
reproduces it (`python -m models zoo` prints them).

Everything here is read from the projects' READMEs and the configs they point to:
IBM/action-recognition-pytorch (README "Models and Results", test.py), IBM/sifar-pytorch (README, main.py,
video_dataset_aug.py), UCSC-VLAA/Image-Pretraining-for-Video (README "Model ZOO", Spatiotemporal_Finetuning
configs' test_pipeline, Image_Pre_Training/scripts), taoyang1122/adapt-image-models (README "Models",
configs/recognition/vit/*), Francis-Rings/ILA (README "Main Results" and "Test", datasets/build.py, both
branches). Where a README links a folder or a drive file instead of naming the file, `file` describes it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import lru_cache

from .dataset_classes import CLASS_LISTS, load_class_list
from .registry import is_model

DATASETS = {"kinetics400": 400, "kinetics700": 700, "ssv2": 174, "diving48": 48, "imagenet": 1000}


@dataclass(frozen=True)
class Project:
    title: str
    repo: str
    weights: str  # where the README says the files are


PROJECTS = {
    "ibm": Project("IBM action-recognition-pytorch", "https://github.com/IBM/action-recognition-pytorch",
                   "https://github.com/IBM/action-recognition-pytorch/releases/tag/weights-v0.1"),
    "sifar": Project("SIFAR (IBM sifar-pytorch)", "https://github.com/IBM/sifar-pytorch",
                     "https://github.com/IBM/sifar-pytorch/releases/tag/action-models"),
    "sts": Project("STS: Image-Pretraining-for-Video", "https://github.com/UCSC-VLAA/Image-Pretraining-for-Video",
                   "https://drive.google.com/drive/folders/1CrQ0q_LhRTPBBew9hMK7SLmeUdwb0qR3 (or the README's "
                   "OneDrive folders)"),
    "aim": Project("AIM: adapt-image-models", "https://github.com/taoyang1122/adapt-image-models",
                   "Google Drive, one link per README row"),
    "ila": Project("ILA", "https://github.com/Francis-Rings/ILA", "Google Drive, one link per README row"),
}


@dataclass(frozen=True)
class Protocol:
    """The authors' test views: `scheme`, the source's own sampling and crop code (pipelines/protocols.py: "ibm",
    "sifar", "mmaction", "ila"; "vidkit" for what no video test covers), `frames` per clip sampled "tsn" (one per
    segment), "dense" (`frame_stride` apart) or "frame_uniform" (mmaction's), `clips` x `crops` views, frames
    resized to `short_side`, square crops of side `crop` (crop == short_side: full-resolution crops, mmaction's
    ThreeCrop at the Resize scale, IBM's --disable_scaleup), normalised with the `norm` statistics ("imagenet" or
    "clip"). `min_frames`: the authors' test leaves out shorter videos (IBM's filter_video)."""

    frames: int
    sampling: str
    frame_stride: int = 1
    clips: int = 1
    crops: int = 1
    short_side: int = 256
    crop: int = 224
    norm: str = "imagenet"
    scheme: str = "vidkit"
    min_frames: int = 0

    def text(self) -> str:
        how = {"dense": f"dense/{self.frame_stride}", "tsn": "tsn"}.get(self.sampling, self.sampling)
        crop = "full" if self.crop == self.short_side else str(self.crop)
        left_out = f", videos under {self.min_frames} frames left out" if self.min_frames else ""
        return f"{self.scheme}: {self.frames}f {how}, {self.clips}x{self.crops}, {self.short_side}/{crop}{left_out}"

    def request(self) -> dict:
        """The protocol as `python -m eval views` fields (pipelines/protocols.py's vocabulary)."""
        out = {"protocol": self.scheme, "sampling": {"tsn": "uniform"}.get(self.sampling, self.sampling),
               "frames": self.frames, "frame_stride": self.frame_stride, "clips": self.clips, "crops": self.crops,
               "crop": self.crop, "min_frames": self.min_frames}
        if self.scheme != "ila":  # ILA's code sets the short side from the crop and the crop count
            out["short_side"] = self.short_side
        return out


@dataclass(frozen=True)
class Release:
    key: str  # unique id, e.g. "ibm-i3d-r50-k400"
    project: str  # a PROJECTS key
    name: str  # the README's row
    file: str  # the released file's name, or where the README links it
    url: str
    dataset: str  # a DATASETS key (a `make prep` preset, or an ImageNet folder)
    top1: float  # published top-1 (%)
    model: str  # the registered toolkit model the file loads into
    args: dict  # its arguments besides num_classes and num_frames
    protocol: Protocol
    config: str = ""  # configs/*.yaml that follows the authors' recipe, to fine-tune from the file
    needs: tuple = ()  # model arguments evaluation takes from the dataset (ILA's K400 text classifier: class names)
    unsupported: str = ""  # why `make eval` cannot reproduce it yet
    note: str = ""
    num_classes: int = field(default=0)
    classes: str = ""  # its head's class names: models/classes/<classes>.txt (default: the dataset's, if shipped)

    def __post_init__(self):
        if not self.num_classes:
            object.__setattr__(self, "num_classes", DATASETS[self.dataset])
        if not self.classes and self.dataset in CLASS_LISTS:
            object.__setattr__(self, "classes", self.dataset)

    @property
    def file_name(self) -> str:
        """The file to pass as CKPT: its released name, else `<key>.pth` for the file saved from the link."""
        return self.file if self.file.endswith((".pth", ".tar", ".pt")) else f"{self.key}.pth"


# ----------------------------------------------------------------------------------- IBM action-recognition

_IBM_URL = "https://github.com/IBM/action-recognition-pytorch/releases/download/weights-v0.1/"
# README: test.py --groups 32 --frames_per_group 2 --dense_sampling (K400) / 1 (SSv2, uniform)
# --num_crops 3 --num_clips 10 (K400) / 2 (SSv2) --input_size 256 --disable_scaleup
# utils/dataset_config.py filter_video: test.py evaluates Kinetics videos of 30 frames or more, SSv2 of 3 or more
_IBM_K400 = Protocol(32, "dense", 2, clips=10, crops=3, short_side=256, crop=256, scheme="ibm", min_frames=30)
_IBM_SSV2 = Protocol(32, "tsn", clips=2, crops=3, short_side=256, crop=256, scheme="ibm", min_frames=3)
_NO_T_STRIDE = {"temporal_stride": False}  # README: --without_t_stride, as every released file
_IBM_NOTE = ("test.py's frames, resize (torchvision's, long side truncated) and GroupOverSample crops, as "
             "pipelines/protocols.py 'ibm' computes them")


def _ibm(arch: str, depth: int, dataset: str, top1: float) -> Release:
    prefix = {"kinetics400": "K400", "ssv2": "SSV2"}[dataset]
    file = f"{prefix}-{arch.upper()}-ResNet-{depth}-f32.pth.tar"
    model, args = (f"i3d_resnet{depth}", _NO_T_STRIDE) if arch == "i3d" else (f"tam_resnet{depth}", {})
    return Release(f"ibm-{arch}-r{depth}-{prefix.lower()}", "ibm", f"{arch.upper()}-ResNet-{depth}-f32", file,
                   _IBM_URL + file, dataset, top1, model, args,
                   _IBM_K400 if dataset == "kinetics400" else _IBM_SSV2, note=_IBM_NOTE)


IBM = [
    _ibm("i3d", 50, "kinetics400", 76.61), _ibm("tam", 50, "kinetics400", 76.18),
    _ibm("i3d", 101, "kinetics400", 77.80), _ibm("tam", 101, "kinetics400", 77.61),
    _ibm("i3d", 50, "ssv2", 62.84), _ibm("tam", 50, "ssv2", 63.83),
    _ibm("i3d", 101, "ssv2", 64.29), _ibm("tam", 101, "ssv2", 65.32),
]

# ------------------------------------------------------------------------------------------------- SIFAR

_SIFAR_URL = "https://github.com/IBM/sifar-pytorch/releases/download/action-models/"
_SIFAR_NOTE = "views: the README's evaluation example (--num_crops 3 --num_clips 3 --disable_scaleup)"


def _sifar(grid: str, frames: int, dataset: str, tail: str, top1: float) -> Release:
    model = f"sifar_base_patch4_window14_224_{grid}"
    file = f"{model}-{tail}.pth"
    short = {"kinetics400": "k400", "ssv2": "ssv2"}[dataset]
    return Release(f"sifar-b14-{short}-f{frames}", "sifar", f"SIFAR-B-14{'†' if frames == 16 else ''}", file,
                   _SIFAR_URL + file, dataset, top1, model, {"hpe_to_token": True},
                   Protocol(frames, "tsn", clips=3, crops=3, short_side=224, crop=224, scheme="sifar",
                            min_frames=30 if dataset == "kinetics400" else 3),
                   config=f"configs/{model}_ssv2.yaml", note=_SIFAR_NOTE)


SIFAR = [
    _sifar("3x3", 8, "kinetics400", "kinetics400_f8_pe_aug", 80.2),
    _sifar("4x4", 16, "kinetics400", "kinetics400_f16_pe_aug_v1", 81.8),
    _sifar("3x3", 8, "ssv2", "st2stv2_kineticsft_f8_pe_aug", 61.6),
    _sifar("4x4", 16, "ssv2", "st2stv2_f16_kineticsft_pe_aug_v1", 62.6),
]

# ------------------------------------------------------------------------------------ STS (ECCV 2022)

_STS_FOLDERS = {"kinetics400": ("Kinetics-400", "https://1drv.ms/u/s!Ag-2DquscdPuhNUoq-nohdT5nwtTiw?e=aZfsJQ"),
                "ssv2": ("Something-Something V2", "https://1drv.ms/u/s!Ag-2DquscdPuhNU0rUgrmoIaQaYXwg?e=cMPaiM"),
                "imagenet": ("ImageNet-1k", "https://1drv.ms/u/s!Ag-2DquscdPuhNUuxWeTjltoBbJJ1g?e=Ds7MMI")}
# README row -> (toolkit model, K400 test frames, dense stride, short side = crop, the K400 and SSv2 configs'
# names under Spatiotemporal_Finetuning/configs/recognition/ without "_STS_<dataset>_video.py")
_STS_MODELS = {
    "ir-CSN50": ("ircsn_50", 32, 2, 256, "csn/ircsn50_32x2", "csn/ircsn50_1x8"),
    "R2plus1d34": ("r2plus1d_34", 8, 8, 256, "r2plus1d/r2plus1d_r34_8x8", "r2plus1d/r2plus1d_r34_1x8"),
    "SlowFast50-4x16": ("slowfast_50_4x16", 32, 2, 256, "slowfast/slowfast50_4x16_32x2",
                        "slowfast/slowfast50_4x16_1x32"),
    "SlowFast50-8x8": ("slowfast_50_8x8", 32, 2, 256, "slowfast/slowfast50_8x8_32x2", ""),
    "Slowonly50": ("slowonly_50", 8, 8, 256, "slowonly/slowonly50_8x8", "slowonly/slowonly50_1x8"),
    "X3D-S": ("x3d_s", 13, 6, 192, "x3d/x3d_s_13x6", "x3d/x3d_s_1x8"),
}
# the arguments the STS repo's mmaction structures need (what models.from_checkpoint reads from their files)
_STS_ARGS = {
    "ircsn_50": {"sts": True, "bn_eps": 1e-3, "temporal_strides": 1},
    "r2plus1d_34": {"sts": True, "bn_eps": 1e-3, "temporal_strides": 1, "stem_pool": True, "factorize_all": True},
    "slowfast_50_4x16": {"sts": True, "lateral_norm": False, "feature_order": "fast_slow"},
    "slowfast_50_8x8": {"sts": True, "lateral_norm": False, "feature_order": "fast_slow"},
}
# Image_Pre_Training/timm/models/v3d.py builds every backbone without STS, and V3D's head sees [Slow, Fast]
# (what models.from_checkpoint reads from the timm files: models/sts_files.py, sts_image_pretraining)
_STS_IMAGE_ARGS = {
    "ircsn_50": {"sts": False, "bn_eps": 1e-3, "temporal_strides": 1},
    "r2plus1d_34": {"sts": False, "bn_eps": 1e-3, "temporal_strides": 1, "stem_pool": True, "factorize_all": True},
    "slowfast_50_4x16": {"sts": False, "lateral_norm": False, "feature_order": "slow_fast"},
    "slowfast_50_8x8": {"sts": False, "lateral_norm": False, "feature_order": "slow_fast"},
    "slowonly_50": {"sts": False},
    "x3d_s": {"sts": False, "head_bias": True},
}


def _sts(row: str, dataset: str, top1: float, epochs: int = 50) -> Release:
    model, frames, stride, side, k400_config, ssv2_config = _STS_MODELS[row]
    folder, url = _STS_FOLDERS[dataset]
    slug = row.lower().replace("ir-", "ir")
    if dataset == "kinetics400":  # Spatiotemporal_Finetuning test_pipeline: 10 clips, Resize -1x256, ThreeCrop 256
        protocol = Protocol(frames, "dense", stride, 10, 3, side, side, scheme="mmaction")
        key = f"sts-{slug}-k400-{epochs}e"
        note = f"test_pipeline: Spatiotemporal_Finetuning/configs/recognition/{k400_config}_STS_k400_video.py"
    elif dataset == "ssv2":  # clip_len 1 x num_clips T in test mode: one frame per segment; ThreeCrop 256
        frames = 32 if model == "slowfast_50_4x16" else 8
        protocol, key = Protocol(frames, "tsn", 1, 1, 3, 256, 256, scheme="mmaction"), f"sts-{slug}-ssv2"
        note = f"test_pipeline: Spatiotemporal_Finetuning/configs/recognition/{ssv2_config}_STS_sthv2_video.py"
    else:  # timm validation, crop_pct 0.875 as the eval scripts (the training scripts validated at 0.95)
        protocol, key = Protocol(1, "tsn", 1, 1, 1, 256, 224), f"sts-{slug}-imagenet"
        note = "ImageNet pre-training (one-frame clips): Image_Pre_Training/scripts/*/distributed_eval.sh"
    file = f"{row} {'' if dataset != 'kinetics400' else f'{epochs}-epoch '}file in the README's {folder} folder"
    args = _STS_ARGS.get(model, {"sts": True}) if dataset != "imagenet" else _STS_IMAGE_ARGS[model]
    return Release(key, "sts", row, file, url, dataset, top1, model, dict(args), protocol,
                   config="configs/ircsn_50_ssv2.yaml" if (model, dataset) == ("ircsn_50", "ssv2") else "", note=note)


STS = [
    _sts("ir-CSN50", "kinetics400", 76.8), _sts("ir-CSN50", "kinetics400", 76.7, 100),
    _sts("R2plus1d34", "kinetics400", 76.2),
    _sts("SlowFast50-4x16", "kinetics400", 76.2), _sts("SlowFast50-4x16", "kinetics400", 76.9, 100),
    _sts("SlowFast50-8x8", "kinetics400", 77.2), _sts("SlowFast50-8x8", "kinetics400", 77.9, 100),
    _sts("Slowonly50", "kinetics400", 75.7),
    _sts("X3D-S", "kinetics400", 72.5), _sts("X3D-S", "kinetics400", 73.9, 100),
    _sts("ir-CSN50", "ssv2", 61.4), _sts("R2plus1d34", "ssv2", 63.0), _sts("SlowFast50-4x16", "ssv2", 57.2),
    _sts("Slowonly50", "ssv2", 62.7), _sts("X3D-S", "ssv2", 58.3),
    _sts("ir-CSN50", "imagenet", 78.8), _sts("R2plus1d34", "imagenet", 79.6),
    _sts("SlowFast50-4x16", "imagenet", 79.9), _sts("SlowFast50-8x8", "imagenet", 79.1),
    _sts("Slowonly50", "imagenet", 79.9), _sts("X3D-S", "imagenet", 74.8),
]

# ----------------------------------------------------------------------------------------- AIM (ICLR 2023)

_DRIVE = "https://drive.google.com/file/d/{}/view?usp=share_link"
_AIM_CONFIG = "configs/aim_vit_base_patch16_kinetics400.yaml"


def _aim(backbone: str, dataset: str, views: str, top1: float, drive: str) -> Release:
    frames, clips, crops = map(int, views.split("x"))
    model = {"ViT-B/16": "aim_vit_base_patch16", "ViT-L/14": "aim_vit_large_patch14"}[backbone]
    if dataset == "diving48":  # frame_uniform sampling; the config's test pipeline has ThreeCrop, the README 1 crop
        protocol = Protocol(frames, "frame_uniform", 1, clips, crops, 224, 224, norm="clip", scheme="mmaction")
        note = "configs/recognition/vit/vitclip_base_diving48.py tests 3 crops; the README's views say 1"
    else:  # the K400 config: 32 frames every 4th; 8 and 16 frames keep that 128-frame span (K700: 8 every 16th)
        protocol = Protocol(frames, "dense", 128 // frames, clips, crops, 224, 224, norm="clip", scheme="mmaction")
        note = "test: Resize -1x224, CenterCrop 224 (K400) / ThreeCrop 224 (K700), configs/recognition/vit/"
    short = {"kinetics400": "k400", "kinetics700": "k700", "diving48": "diving48"}[dataset]
    key = f"aim-{backbone[4:].replace('/', '').lower()}-{short}-f{frames}"
    return Release(key, "aim", f"{backbone} {views}", f"Google Drive file of the README's {dataset} {backbone} "
                   f"{views} row", _DRIVE.format(drive), dataset, top1, model, {}, protocol, config=_AIM_CONFIG,
                   note=note)


AIM = [
    _aim("ViT-B/16", "kinetics400", "8x3x1", 83.9, "1oRmpP47Z6jWq4NHEpONNGAeKgDTFVNEO"),
    _aim("ViT-B/16", "kinetics400", "16x3x1", 84.5, "1QuCjDcQUNVyH8_LBjITQMUGIehogb_k8"),
    _aim("ViT-B/16", "kinetics400", "32x3x1", 84.7, "1hwlxj51naOpY2WG9FosX45voQgpUbEn4"),
    _aim("ViT-L/14", "kinetics400", "8x3x1", 86.8, "1pR6n2UxA3zJsWjAJhTJXJqaPEJYYfBOQ"),
    _aim("ViT-L/14", "kinetics400", "16x3x1", 87.3, "1X7lqRYTbyMfO3L0zZXACEdIm21NU4Soc"),
    _aim("ViT-L/14", "kinetics400", "32x3x1", 87.5, "1W1v53x8FAiVBTkAB0pIUUQUF-6hN_y2J"),
    _aim("ViT-B/16", "kinetics700", "32x3x3", 76.9, "1XG1BL81jx9ibJz7HNY8ZPke84FnIkbqz"),
    _aim("ViT-B/16", "diving48", "32x1x1", 88.9, "1YMEWV8HM0v1hkq3-35gNGjh_DMDeC-cn"),
]

# ----------------------------------------------------------------------------------------- ILA (ICCV 2023)

_ILA_NOTE = ("views: the README's Test command (TEST.NUM_CLIP 4 TEST.NUM_CROP 3: Resize to the input size, "
             "ThreeCrop); the repo draws each view's frames at random within the segments (a training-mode "
             "SampleFrames), here at fixed offsets inside that draw's support")
_ILA_K400_TRAIN = ("to fine-tune the K400 (video-text) architecture, give train `model_args: {arch: k400, "
                   "class_names: dataset}`: the head embeds the training split's class names")


def _ila(model_name: str, dataset: str, size: str, top1: float, drive: str) -> Release:
    frames, side = map(int, size.split("x"))
    model = {"ILA-B/32": "ila_vit_base_patch32", "ILA-B/16": "ila_vit_base_patch16",
             "ILA-L/14": "ila_vit_large_patch14"}[model_name]
    arch = "k400" if dataset == "kinetics400" else "ssv2"
    args = {"arch": arch, **({"img_size": side} if side != 224 else {})}
    key = f"ila-{model_name[4:].replace('/', '').lower()}-{arch}-f{frames}{'' if side == 224 else f'-{side}'}"
    k400 = arch == "k400"
    return Release(key, "ila", f"{model_name} {size}", f"Google Drive file of the README's {dataset} {model_name} "
                   f"{size} row ({'master' if k400 else 'SSV2'} branch)", _DRIVE.format(drive), dataset, top1,
                   model, args, Protocol(frames, "tsn", 1, 4, 3, side, side, scheme="ila"),
                   config="" if k400 else "configs/ila_vit_base_patch16_ssv2.yaml",
                   needs=("class_names",) if k400 else (), note=_ILA_NOTE + (f"; {_ILA_K400_TRAIN}" if k400 else ""))


ILA = [
    _ila("ILA-B/32", "kinetics400", "8x224", 81.3, "1hbl3nndAcxENsif0QuEJ_8UxiTv9jSOh"),
    _ila("ILA-B/32", "kinetics400", "16x224", 82.4, "1GEO8m1qfDsOj-81YW5jc8ekAxPWMrtg3"),
    _ila("ILA-B/16", "kinetics400", "8x224", 84.0, "1lAUgzxBDHoueXDaG9X9WFlBPVBl5LNdk"),
    _ila("ILA-B/16", "kinetics400", "16x224", 85.7, "1IYz8DzzgoNbU1aXyeHFl69t6pb0RNMsV"),
    _ila("ILA-L/14", "kinetics400", "8x224", 88.0, "1IhalyRKqAbJ9efLAgAA4f7t9hwRMux0p"),
    _ila("ILA-L/14", "kinetics400", "16x336", 88.7, "132aB_FF-jPKP1z3kZArG_tOj32rVIFYc"),
    _ila("ILA-B/16", "ssv2", "8x224", 65.0, "1Ei0fO-W8u4jBQO0qG6V7nlRjKUuozbLa"),
    _ila("ILA-B/16", "ssv2", "16x224", 66.8, "1NYXsYSOjRuuOIXiCTaTE2gFUCi-1qC_5"),
    _ila("ILA-L/14", "ssv2", "8x224", 67.8, "10xHxzyUH38bjkAAutlBvMkj0BxXaaobB"),
    _ila("ILA-L/14", "ssv2", "16x336", 70.2, "1ZquukTAxosC2k1uquI9jnMsk4BA2N5w5"),
]

ZOO: list[Release] = IBM + SIFAR + STS + AIM + ILA

# -------------------------------------------------------------------------------------------- commands


def find(key: str) -> Release:
    for entry in ZOO:
        if entry.key == key:
            return entry
    raise KeyError(f"no zoo entry {key!r} (python -m models zoo lists them)")


def available(entry: Release) -> bool:
    """Whether the toolkit registers the entry's model (a family may not have its variant yet)."""
    return is_model(entry.model)


def build_args(entry: Release) -> dict:
    """create_model arguments of the entry's model; what evaluation takes from the dataset gets placeholders.
    Image pre-training files keep the model's clip length (images enter as one-frame clips of it)."""
    args = dict(entry.args, num_classes=entry.num_classes)
    if entry.dataset != "imagenet":
        args["num_frames"] = entry.protocol.frames
    if "class_names" in entry.needs:
        args["class_names"] = [f"class {i}" for i in range(entry.num_classes)]
    return args


@lru_cache(maxsize=None)
def contract(key: str):
    """The InputContract of an entry's model as the file is evaluated (built on the meta device: no memory, no
    init); an image pre-training file's is the one its recogniser records (ImageNet statistics, 224 images)."""
    # here, not at the top: the zoo's rows and commands (models zoo, eval views --protocol KEY) need no torch
    import torch

    from .factory import create_model
    from .sts_files import sts_image_contract

    entry = find(key)
    if entry.dataset == "imagenet":
        return sts_image_contract(entry.model, build_args(entry))
    with torch.device("meta"):
        return create_model(entry.model, **build_args(entry)).input_contract


def eval_args(entry: Release) -> list[str]:
    """`python -m eval` options that evaluate with the entry's protocol: its zoo key, which sets the clip's frames,
    sampling, views, resize, crops and evaluated set as the authors' test computes them (eval/plan.py)."""
    return ["--protocol", entry.key]


def command(entry: Release, data: str = "") -> str:
    """The one command that reproduces the entry's top-1."""
    data = data or f"data/{entry.dataset}"
    return f"make eval CKPT={entry.file_name} DATA={data} ARGS=\"{' '.join(eval_args(entry))}\""


def args_text(args: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items())


def row(entry: Release) -> dict:
    """One entry as plain data, with whether it runs here and its command."""
    runs = available(entry) and not entry.unsupported
    out = asdict(entry)
    out.update(available=available(entry), protocol_text=entry.protocol.text(), file_name=entry.file_name,
               eval_args=eval_args(entry) if runs else None, command=command(entry) if runs else None)
    return out


def matching_rows(model: str, model_args: dict) -> list[Release]:
    """The rows an authors' file can be, from what its recogniser read in the file itself (not its name: most
    were saved as best.pth or epoch_50.pth): the same registered model, classifier size and, for every variant
    argument the recogniser states, the same value (ILA's `arch`, STS's `sts`, IBM's `temporal_stride`)."""
    classes = model_args.get("num_classes")
    return [entry for entry in ZOO if entry.model == model and entry.num_classes == classes
            and all(model_args.get(key, value) == value for key, value in entry.args.items())]


def class_list_for(model: str, model_args: dict) -> tuple[str, list[str]] | None:
    """(list name, class names) of an authors' file whose matching rows all name one shipped list; None when no
    row matches or they disagree (then only the user knows which names the head was trained on)."""
    names = {entry.classes for entry in matching_rows(model, model_args)}
    if len(names) != 1 or not next(iter(names)):
        return None
    name = names.pop()
    return name, load_class_list(name)
