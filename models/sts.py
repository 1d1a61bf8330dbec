"""STS (spatial-temporal separable) 3D convolution, from "In Defense of Image Pre-Training for
Spatiotemporal Recognition" (Li et al., ECCV 2022).

An STS convolution owns exactly the weight of the 3D convolution it replaces (same shape, same
state-dict key, same parameter count), so a model switches between plain and STS convolutions
without changing its checkpoints. Its output channels are split in two halves:

* the first half ("appearance") has no temporal receptive field: the kernel's temporal slices are
  re-used as purely spatial filters, so image-pretrained (inflated) weights keep modelling static
  appearance;
* the second half ("motion") is the ordinary spatiotemporal convolution.

For a spatiotemporal kernel 3 x k x k the appearance half convolves with the centre slice as a
k x k filter, the first slice flattened to a 1 x k^2 filter along the width and the last slice
flattened to a k^2 x 1 filter along the height, and sums the three. For a temporal kernel
t x 1 x 1 the appearance half is split again: one quarter of the output channels uses the t taps
along the width, the other along the height.

Differences from the authors' code (kept deliberately): the 1D filters run as true 2D convolutions
with zero padding (theirs run on the flattened h*w axis and wrap around row ends), so spatial
strides stay exact; temporal strides are supported (the appearance half then takes every
stride-th frame, the frames the plain convolution is centred on); dense (groups=1) kernels are
accepted as well as depthwise ones for
spatiotemporal kernels (temporal t x 1 x 1 kernels must be dense, as in the paper).

Use `STSConv3d` exactly like `nn.Conv3d`, or `convert_to_sts(module)` to swap every convolution
with a temporal extent inside `module` (in place, sharing the weights).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _sts_config_error(conv: nn.Conv3d) -> str | None:
    """Why `conv` cannot be an STS convolution, or None when it can."""
    kt, kh, kw = conv.kernel_size
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
    if kh == 1 and (conv.groups != 1 or conv.out_channels % 4):
        return "STS on a temporal (t x 1 x 1) kernel needs groups == 1 and out_channels divisible by 4"
    if kh > 1 and kt != 3:
        return "STS on a spatiotemporal kernel needs temporal size 3 (centre, row and column slices)"
    if conv.out_channels % 2:
        return "STS needs an even number of output channels"
    if conv.padding_mode != "zeros":
        return "STS supports zero padding only"
    return None


class STSConv3d(nn.Conv3d):
    """Drop-in `nn.Conv3d` (same constructor and weights) computing the STS split described above."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        problem = _sts_config_error(self)
        if problem:
            raise ValueError(f"cannot build STSConv3d with kernel {self.kernel_size}, stride {self.stride}, "
                             f"padding {self.padding}, groups {self.groups}: {problem}")

    @classmethod
    def from_conv(cls, conv: nn.Conv3d) -> "STSConv3d":
        """An STS convolution sharing `conv`'s parameters (no copy)."""
        with torch.device("meta"):  # the placeholder weights are replaced right away
            sts = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
        sts.weight = conv.weight
        sts.bias = conv.bias
        return sts

    def _halves(self, x: torch.Tensor):
        half = self.out_channels // 2
        groups = max(self.groups // 2, 1)
        if self.groups == 1:
            return x, x, half, groups
        split = x.shape[1] // 2
        return x[:, :split], x[:, split:], half, groups

    def _appearance(self, x: torch.Tensor, weight: torch.Tensor, groups: int) -> torch.Tensor:
        kt, k, _ = self.kernel_size
        stride = self.stride
        out, cin = weight.shape[:2]
        if k == 1:  # temporal kernel: its taps become 1 x t (width) and t x 1 (height) filters
            quarter = out // 2
            along_w = weight[:quarter].reshape(quarter, cin, 1, 1, kt)
            along_h = weight[quarter:].reshape(out - quarter, cin, 1, kt, 1)
            return torch.cat([
                F.conv3d(x, along_w, None, stride, (0, 0, kt // 2)),
                F.conv3d(x, along_h, None, stride, (0, kt // 2, 0)),
            ], dim=1)
        flat = k * k
        centre = F.conv3d(x, weight[:, :, 1:2], None, stride, (0, k // 2, k // 2), 1, groups)
        row = F.conv3d(x, weight[:, :, 0].reshape(out, cin, 1, 1, flat), None, stride,
                       (0, 0, flat // 2), 1, groups)
        column = F.conv3d(x, weight[:, :, 2].reshape(out, cin, 1, flat, 1), None, stride,
                          (0, flat // 2, 0), 1, groups)
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


def convert_to_sts(*modules: nn.Module) -> int:
    """Replace, in place, every `nn.Conv3d` with a temporal extent inside `modules` by an
    `STSConv3d` sharing its weights. Returns how many were converted.

    Pass the residual stages, not the whole network: stems and lateral connections stay plain in
    the paper (and a stem's 3 input channels cannot be split)."""
    converted = 0
    for module in modules:
        for parent in list(module.modules()):
            for name, child in list(parent.named_children()):
                is_plain = isinstance(child, nn.Conv3d) and not isinstance(child, STSConv3d)
                if is_plain and child.kernel_size[0] > 1:
                    setattr(parent, name, STSConv3d.from_conv(child))
                    converted += 1
    return converted
