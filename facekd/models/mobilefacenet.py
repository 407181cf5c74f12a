"""MobileFaceNet (Chen, Liu, Gao, Han, "MobileFaceNets: Efficient CNNs for Accurate Real-Time
Face Verification on Mobile Devices", CCBR 2018, arXiv:1804.07573).

One class serves three registry names, with the module and parameter names of insightface
arcface_torch ``backbones/mobilefacenet.py`` so its checkpoints load with ``strict=True``:

* ``mbf``: arcface_torch's default, ``scale=2``, blocks ``(1, 4, 6, 2)``, 512-d
  (2.06M parameters, 333 state-dict entries); ``scale=1`` is the pre-2021-07 variant.
* ``mobilefacenet``: the paper's network, ``scale=1``, 128-d embedding (0.99M parameters);
  it is also the architecture of InsightFace's legacy MXNet "y1" model (see mxnet_legacy.py).
  ``width`` (< 1) shrinks every channel count for tiny test / CI students.

Layout (112x112 input, ``scale=s``, ``w`` = width, inner widths ``g`` are the bottleneck
expansion widths 128/256/512 of the paper, times ``w``, *not* times ``s``, as in insightface)::

    layers[0] ConvBlock 3x3 s2            (B, 64s, 56, 56)   stage 0 (stem) after layers[1]
    layers[1] 3x3 conv, groups 64         (B, 64s, 56, 56)
    layers[2] DepthWise s2, layers[3] Residual x blocks[1]   (B, 64s, 28, 28)    stage 1
    layers[4] DepthWise s2, layers[5] Residual x blocks[2]   (B, 128s, 14, 14)   stage 2
    layers[6] DepthWise s2, layers[7] Residual x blocks[3]   (B, 128s, 7, 7)     stage 3
    conv_sep  1x1 -> 512                  (B, 512, 7, 7)     pooled = GAP -> (B, 512)
    features (GDC): 7x7 depthwise linear conv + BN, flatten, Linear(512, D, no bias), BN1d

The GDC kernel equals the last map's side: ceil(input_size / 16) (7 at 112, 4 at 56, 2 at 32).

``last_stride=1`` (OURS for faces; the "last stride = 1" trick of Luo et al., "Bag of Tricks and
a Strong Baseline for Deep Person Re-identification", CVPRW 2019) makes ``layers[6]`` a
stride-1 bottleneck, so the last map's side is ceil(input_size / 8): 7 at 56 px. A 56-px
student then keeps the teacher's 7x7 last map, its GDC kernel and every other tensor keep the
112-px teacher's shapes (knowledge transfer copies all of them bit-exactly), and only stage 3,
``conv_sep`` and the GDC run on 4x the positions: 0.131 against 0.113 GFLOPs at 56 px (the
112-px network: 0.442), with the teacher's 1.00M parameters.

Two variants seen in released ONNX files (``facekd.models.onnx_import`` recognises them):
``stem_groups`` (default ``gcd(64s, 64)``: insightface's ``groups=64``; Espressif's ``mbf`` is
depthwise, 128) and ``head="fc"`` (Espressif's ``mbf``): ``features.conv`` 1x1 ConvBlock to
``head_channels`` (64), flatten, ``features.fc`` Linear(``head_channels * s * s``, D, no bias),
``features.bn`` BatchNorm1d: 1.6M of its 3.4M parameters, sized for the input resolution.

``activation="relu"`` (OURS) swaps every PReLU for a parameter-free ReLU, the same module
paths less the slope tensors: the quantisation-friendly variant. onnxruntime fuses
``Conv -> Relu`` into one int8 ``QLinearConv``, while each PReLU stays a float operator (or,
rewritten exactly, three extra ones) between dequantise / quantise pairs (issue 18,
``benchmarks/bench_int8.py``). A ReLU student starts from a PReLU teacher by
``facekd.models.transfer.knowledge_transfer`` (every other tensor copied).
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from facekd.models.base import FaceBackbone, check_input_size, stride2_size


def _width(c: int, width: float) -> int:
    return max(8, int(round(c * width / 8)) * 8)


class ConvBlock(nn.Module):
    """conv (no bias) -> BN -> PReLU, as ``layers`` (arcface_torch naming)."""

    def __init__(self, c_in, c_out, kernel=1, stride=1, padding=0, groups=1, act=True) -> None:
        super().__init__()
        mods: list[nn.Module] = [
            nn.Conv2d(c_in, c_out, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        if act:
            mods.append(nn.PReLU(c_out))
        self.layers = nn.Sequential(*mods)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def LinearBlock(c_in, c_out, kernel=1, stride=1, padding=0, groups=1) -> ConvBlock:  # noqa: N802
    """conv -> BN without activation (the paper's "linear" layers)."""
    return ConvBlock(c_in, c_out, kernel, stride, padding, groups, act=False)


class DepthWise(nn.Module):
    """Inverted-residual bottleneck: 1x1 expand to ``inner`` -> 3x3 depthwise -> 1x1 linear."""

    def __init__(self, c_in: int, c_out: int, inner: int, stride: int, residual: bool) -> None:
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBlock(c_in, inner, 1),
            ConvBlock(inner, inner, 3, stride, 1, groups=inner),
            LinearBlock(inner, c_out, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.layers(x)
        return x + out if self.residual else out


class Residual(nn.Module):
    """``num_block`` residual bottlenecks at constant width."""

    def __init__(self, c: int, num_block: int, inner: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            *[DepthWise(c, c, inner, stride=1, residual=True) for _ in range(num_block)]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class GDC(nn.Module):
    """Global depthwise convolution embedding layer (Chen et al., 2018, Sec. 3.2)."""

    def __init__(self, channels: int, kernel: int, num_features: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            LinearBlock(channels, channels, kernel, groups=channels),
            nn.Flatten(),
            nn.Linear(channels, num_features, bias=False),
            nn.BatchNorm1d(num_features),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class FCHead(nn.Module):
    """``head="fc"``: 1x1 ConvBlock to ``head_channels``, flatten, Linear, BatchNorm1d."""

    def __init__(self, channels: int, head_channels: int, side: int, num_features: int) -> None:
        super().__init__()
        self.conv = ConvBlock(channels, head_channels, 1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(head_channels * side * side, num_features, bias=False)
        self.bn = nn.BatchNorm1d(num_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.fc(self.flatten(self.conv(x))))  # (B, C*s*s) -> (B, D)


def _swap_prelu(module: nn.Module) -> None:
    """Replace every ``nn.PReLU`` under ``module`` by ``nn.ReLU`` at the same path."""
    for name, child in module.named_children():
        if isinstance(child, nn.PReLU):
            setattr(module, name, nn.ReLU())
        else:
            _swap_prelu(child)


HEADS = ("gdc", "fc")
ACTIVATIONS = ("prelu", "relu")


class MobileFaceNet(FaceBackbone):
    """MobileFaceNet backbone.

    Args:
        num_features: embedding size D (128 in the paper, 512 in arcface_torch ``mbf``).
        blocks: bottleneck repeats ``(stem, stage1, stage2, stage3)``; ``(1, 4, 6, 2)`` is the
            paper's 1 + 5 + 7 + 3 bottlenecks counting the stride-2 ones.
        scale: channel scale of the outer widths (arcface_torch ``mbf``: 2; paper: 1).
        width: multiplier on every channel count (1.0 = paper / insightface widths).
        input_size: square input side (112; 56 and 32 for low-resolution students).
        stem_groups: groups of the second stem conv (``layers[1]`` when ``blocks[0] == 1``);
            default ``gcd(64s, 64)`` as insightface.
        head: ``"gdc"`` (default, arcface_torch) or ``"fc"`` (module docstring).
        head_channels: the ``"fc"`` head's 1x1 reduction width.
        activation: ``"prelu"`` (default, the paper and insightface) or ``"relu"`` (module
            docstring).
        last_stride: stride of ``layers[6]``, the last down-sampling: 2 (default) or 1 (module
            docstring).
    """

    def __init__(
        self,
        num_features: int = 128,
        blocks: tuple[int, int, int, int] = (1, 4, 6, 2),
        scale: int = 1,
        width: float = 1.0,
        input_size: int = 112,
        stem_groups: int | None = None,
        head: str = "gdc",
        head_channels: int = 64,
        activation: str = "prelu",
        last_stride: int = 2,
    ) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"MobileFaceNet head must be one of {HEADS}, got {head!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"MobileFaceNet activation must be one of {ACTIVATIONS}, got {activation!r}"
            )
        if last_stride not in (1, 2):
            raise ValueError(f"MobileFaceNet last_stride must be 1 or 2, got {last_stride!r}")
        if len(blocks) != 4 or any(b < 1 for b in blocks):
            raise ValueError(f"MobileFaceNet blocks must be four positive counts, got {blocks!r}")
        if scale < 1 or width <= 0:
            raise ValueError(f"MobileFaceNet needs scale >= 1 and width > 0, got {scale}, {width}")
        self.input_size = check_input_size(input_size)
        self.num_features = num_features
        c64, c128 = _width(64 * scale, width), _width(128 * scale, width)
        g64, g128, g256, g512 = (_width(c, width) for c in (64, 128, 256, 512))
        c512 = _width(512, width)
        if blocks[0] == 1:
            # insightface keeps groups=64 at scale 2 (a grouped, not depthwise, conv)
            groups = stem_groups or math.gcd(c64, g64)
            if c64 % groups:
                raise ValueError(f"stem_groups={groups} does not divide {c64} channels")
            stem2: nn.Module = ConvBlock(c64, c64, 3, 1, 1, groups=groups)
        else:
            stem2 = Residual(c64, blocks[0], g128)
        self.layers = nn.ModuleList(
            [
                ConvBlock(3, c64, 3, 2, 1),
                stem2,
                DepthWise(c64, c64, g128, stride=2, residual=False),
                Residual(c64, blocks[1], g128),
                DepthWise(c64, c128, g256, stride=2, residual=False),
                Residual(c128, blocks[2], g256),
                DepthWise(c128, c128, g512, stride=last_stride, residual=False),
                Residual(c128, blocks[3], g256),
            ]
        )
        self.conv_sep = ConvBlock(c128, c512, 1)
        side = stride2_size(input_size, 3 + (last_stride == 2))
        if head == "gdc":
            self.features: nn.Module = GDC(c512, side, num_features)
        else:
            self.features = FCHead(c512, head_channels, side, num_features)
        if activation == "relu":
            _swap_prelu(self)
        self._init_weights()

    def _init_weights(self) -> None:
        # arcface_torch's initialisation (Kaiming fan-out for conv and linear, unit BN)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _body(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        stages = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i % 2 == 1:  # after layers[1], [3], [5], [7]: stem and the three stages
                stages.append(x)
        return stages, self.conv_sep(x)

    def _head(self, last_map: Tensor) -> Tensor:
        return self.features(last_map)
