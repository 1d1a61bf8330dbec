"""STS (spatial-temporal separable) 3D convolution, from "In Defense of Image Pre-Training for
Spatiotemporal Recognition" (Li et al., ECCV 2022).

An STS convolution owns exactly the weight of the 3D convolution it replaces (same shape, same
state-dict key, same parameter count), so a model switches between plain and STS convolutions
without changing its checkpoints. Its output channels are split in two halves:

* the first half ("appearance") has no temporal receptive field: the kernel's temporal slices are
  re-used as purely spatial filters, so image-pretrained (inflated) weights keep modelling static
  appearance;
* the second half ("motion") is the ordinary spatiotemporal convolution.

The authors' two modes follow from the kernel shape:

* spatiotemporal 3 x k x k kernels (their `reshape_st`, on ir-CSN's and X3D's depthwise convs): the
  appearance half sums the centre slice as a k x k filter, the first slice flattened to a k^2-tap
  filter along the rows and the last slice flattened to a k^2-tap filter along the columns. With
  depthwise (grouped) kernels, the appearance half sees the first half of the input channels and
  the motion half the second, as in their code; dense kernels give both halves every channel.
* temporal t x 1 x 1 kernels (their `reshape_t`, SlowOnly / SlowFast bottlenecks, the temporal half
  of R(2+1)D's factorised convs): the appearance half is split again, its first half running the
  t taps along the rows, the rest along the columns. Kernels must be dense, as in the paper.

`mode` says how the 1-D filters run:

* "authors" (the released checkpoints were trained with it): on the flattened h*w (rows) or w*h
  (columns) axis of each frame, as their `STS_Conv.py` / `Conv2plus1d_reshape` do, so taps wrap
  across row ends and a spatial stride s is a stride of s*s along that axis (feature maps must
  then have even sides, or the strided output is not a grid: refused). Where their code stops
  (temporal strides on spatiotemporal kernels, dense spatiotemporal kernels), it is extended
  naturally: the appearance half takes every stride-th frame, the frames the plain conv is
  centred on.
* "2d": as true 1 x k^2 / k^2 x 1 (or 1 x t / t x 1) 2-D filters with zero padding: no wrap-around,
  exact strides, any feature size; for training from image weights where the released
  checkpoints do not matter.

Use `STSConv3d` exactly like `nn.Conv3d` (plus `mode`), or `convert_to_sts(module, ...)` to swap
the convolutions with a temporal extent inside `module` (in place, sharing the weights).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

STS_MODES = ("authors", "2d")


def sts_mode(sts: bool | str) -> str | None:
    """A builder's `sts` argument (False, True = the authors' computation, or a mode) -> mode or None."""
    if sts is False or sts is None:
        return None
    mode = "authors" if sts is True else sts
    if mode not in STS_MODES:
        raise ValueError(f"sts must be True, False or one of {STS_MODES}, got {sts!r}")
    return mode


def _sts_config_error(conv: nn.Conv3d, mode: str) -> str | None:
    """Why `conv` cannot be an STS convolution, or None when it can."""
    kt, kh, kw = conv.kernel_size
    if mode not in STS_MODES:
        return f"STS mode must be one of {STS_MODES}, got {mode!r}"
    if kt == 1:
        return "STS needs a temporal kernel size > 1"
    if kh != kw or conv.stride[1] != conv.stride[2]:
        return "STS needs a square spatial kernel and stride"
    if conv.padding != (kt // 2, kh // 2, kw // 2) or kt % 2 == 0 or kh % 2 == 0:
        return "STS needs odd kernels with 'same' padding (k // 2)"
    if conv.dilation != (1, 1, 1):
        return "STS does not support dilation"
    if conv.groups != 1 and conv.groups % 2:
        return "STS needs groups == 1 or an even number of groups"
    if kh == 1 and conv.groups != 1:
        return "STS on a temporal (t x 1 x 1) kernel needs groups == 1"
    if kh == 1 and mode == "authors" and conv.stride[1] != 1:
        return "the authors' STS on a temporal (t x 1 x 1) kernel has no spatial stride"
    if kh > 1 and kt != 3:
        return "STS on a spatiotemporal kernel needs temporal size 3 (centre, row and column slices)"
    if conv.out_channels % 2:
        return "STS needs an even number of output channels"
    if conv.padding_mode != "zeros":
        return "STS supports zero padding only"
    return None


def _flat_conv(x: torch.Tensor, taps: torch.Tensor, stride: tuple, groups: int, columns: bool) -> torch.Tensor:
    """The authors' 1-D filter `taps` (out, in, L) run along each frame's flattened h*w axis (w*h
    for `columns`), spatial stride s as s*s along it, reshaped back to the strided grid."""
    h, w = x.shape[3:]
    st, ss = stride
    if h % ss or w % ss:
        raise ValueError(f"the authors' STS with spatial stride {ss} needs feature maps with sides divisible "
                         f"by {ss}, got {h}x{w}; use sts='2d' for other sizes")
    if columns:
        x, h, w = x.transpose(3, 4), w, h
    out = F.conv2d(x.flatten(3), taps.unsqueeze(2), None, (st, ss * ss), (0, taps.shape[-1] // 2), 1, groups)
    out = out.unflatten(3, (h // ss, w // ss))
    return out.transpose(3, 4) if columns else out


def _line_conv(x: torch.Tensor, taps: torch.Tensor, stride: tuple, groups: int, columns: bool) -> torch.Tensor:
    """`taps` (out, in, L) as a true 2-D 1 x L (rows) or L x 1 (columns) filter, zero-padded."""
    st, ss = stride
    length = taps.shape[-1]
    if columns:
        return F.conv3d(x, taps.unflatten(2, (1, length, 1)), None, (st, ss, ss), (0, length // 2, 0), 1, groups)
    return F.conv3d(x, taps.unflatten(2, (1, 1, length)), None, (st, ss, ss), (0, 0, length // 2), 1, groups)


class STSConv3d(nn.Conv3d):
    """Drop-in `nn.Conv3d` (same constructor and weights, plus `mode`) computing the STS split above."""

    def __init__(self, *args, mode: str = "authors", **kwargs):
        super().__init__(*args, **kwargs)
        self.mode = mode
        problem = _sts_config_error(self, mode)
        if problem:
            raise ValueError(f"cannot build STSConv3d with kernel {self.kernel_size}, stride {self.stride}, "
                             f"padding {self.padding}, groups {self.groups}: {problem}")

    @classmethod
    def from_conv(cls, conv: nn.Conv3d, mode: str = "authors") -> "STSConv3d":
        """An STS convolution sharing `conv`'s parameters (no copy)."""
        with torch.device("meta"):  # the placeholder weights are replaced right away
            sts = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode, mode=mode)
        sts.weight = conv.weight
        sts.bias = conv.bias
        return sts

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, sts_mode={self.mode}"

    def _halves(self, x: torch.Tensor):
        half = self.out_channels // 2
        groups = max(self.groups // 2, 1)
        if self.groups == 1:
            return x, x, half, groups
        split = x.shape[1] // 2
        return x[:, :split], x[:, split:], half, groups

    def _appearance(self, x: torch.Tensor, weight: torch.Tensor, groups: int) -> torch.Tensor:
        kt, k, _ = self.kernel_size
        stride = self.stride[:2]
        line = _flat_conv if self.mode == "authors" else _line_conv
        out = weight.shape[0]
        if k == 1:  # temporal kernel: its taps run along the rows for one part, the columns for the rest
            rows = (out + 1) // 2  # torch.chunk's split, as the authors'
            taps = weight.flatten(2)
            return torch.cat([line(x, taps[:rows], stride, groups, False),
                              line(x, taps[rows:], stride, groups, True)], dim=1)
        centre = F.conv3d(x, weight[:, :, 1:2], None, self.stride, (0, k // 2, k // 2), 1, groups)
        row = line(x, weight[:, :, 0].flatten(2), stride, groups, False)
        column = line(x, weight[:, :, 2].flatten(2), stride, groups, True)
        return centre + row + column

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_app, x_motion, half, groups = self._halves(x)
        appearance = self._appearance(x_app, self.weight[:half], groups)
        bias_motion = None
        if self.bias is not None:
            appearance = appearance + self.bias[:half].view(1, -1, 1, 1, 1)
            bias_motion = self.bias[half:]
        motion = F.conv3d(x_motion, self.weight[half:], bias_motion, self.stride, self.padding,
                          self.dilation, groups)
        return torch.cat([appearance, motion], dim=1)


def convert_to_sts(*modules: nn.Module, mode: str = "authors", reshape_st: bool = True,
                   reshape_t: bool = True) -> int:
    """Replace, in place, the `nn.Conv3d`s with a temporal extent inside `modules` by `STSConv3d`s
    sharing their weights. Returns how many were converted.

    `reshape_st` converts spatiotemporal (t x k x k, k > 1) kernels, `reshape_t` temporal
    (t x 1 x 1) ones: the authors' two flags. Pass the residual stages, not the whole network:
    stems and lateral connections stay plain in the paper (and a stem's 3 input channels cannot
    be split), except R(2+1)D's factorised stem, whose temporal conv is converted too."""
    converted = 0
    for module in modules:
        for parent in list(module.modules()):
            for name, child in list(parent.named_children()):
                if not isinstance(child, nn.Conv3d) or isinstance(child, STSConv3d) or child.kernel_size[0] == 1:
                    continue
                if (reshape_st if child.kernel_size[1] > 1 else reshape_t):
                    setattr(parent, name, STSConv3d.from_conv(child, mode))
                    converted += 1
    return converted
