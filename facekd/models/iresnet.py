"""Improved ResNet (iResNet) for faces, parameter-compatible with insightface arcface_torch.

Duta et al., "Improved Residual Networks for Image and Video Recognition" (2020), in the
ArcFace form of Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition"
(CVPR 2019): pre-activation basic blocks ``BN-conv3x3-BN-PReLU-conv3x3(stride)-BN`` + shortcut.

Parameter names and shapes equal arcface_torch ``backbones/iresnet.py`` so its released
``backbone.pth`` loads with ``strict=True`` (iresnet100: 925 state-dict entries, 65.16M
parameters, ``fc`` 25088 -> 512 with bias, ``features`` BatchNorm1d with frozen weight = 1).

Shapes for a 112x112 input (``B`` faces)::

    stem  conv1/bn1/prelu  (B, 64, 112, 112)
    layer1                 (B, 64, 56, 56)
    layer2                 (B, 128, 28, 28)
    layer3                 (B, 256, 14, 14)
    layer4 -> bn2          (B, 512, 7, 7)
    head "fc":  flatten (B, 25088) -> dropout -> fc -> features  (B, num_features)
    head "gap": GAP (B, 512) -> dropout -> fc -> features        (B, num_features)

Lower resolutions (56, 32 px, for high-to-low resolution transfer) shrink the last map to
ceil(H / 16); the "fc" head is sized for it (512*4*4 at 56 px), and the "gap" head (Karlekar
et al., 2019: a fully-convolutional network with global pooling) is size-independent.
"""

from __future__ import annotations

from torch import Tensor, nn

from facekd.models.base import FaceBackbone, check_input_size, stride2_size

#: blocks per stage, as in arcface_torch
IRESNET_LAYERS: dict[str, tuple[int, int, int, int]] = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
    "iresnet200": (6, 26, 60, 6),
}


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """``bn1-conv1-bn2-prelu-conv2(stride)-bn3`` plus an identity or 1x1-conv shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in, eps=1e-5)
        self.conv1 = _conv3x3(c_in, c_out)
        self.bn2 = nn.BatchNorm2d(c_out, eps=1e-5)
        self.prelu = nn.PReLU(c_out)
        self.conv2 = _conv3x3(c_out, c_out, stride)
        self.bn3 = nn.BatchNorm2d(c_out, eps=1e-5)
        self.downsample: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(c_out, eps=1e-5),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class IResNet(FaceBackbone):
    """iResNet face backbone.

    Args:
        layers: blocks per stage, e.g. ``(3, 13, 30, 3)`` for iresnet100.
        num_features: embedding size D (512 in arcface_torch).
        dropout: dropout before ``fc`` (arcface_torch default 0).
        input_size: square input side in pixels (112 default; 56 / 32 for low-resolution work).
        head: ``"fc"`` (arcface_torch: flatten the last map, FC sized for ``input_size``) or
            ``"gap"`` (global average pooling then FC 512 -> D; resolution-independent).
        width: channel multiplier of the four stages (1.0 = 64/128/256/512); < 1 gives tiny
            test/CI teachers. Not insightface-compatible unless 1.0.
    """

    def __init__(
        self,
        layers: tuple[int, int, int, int] = (3, 13, 30, 3),
        num_features: int = 512,
        dropout: float = 0.0,
        input_size: int = 112,
        head: str = "fc",
        width: float = 1.0,
    ) -> None:
        super().__init__()
        if head not in ("fc", "gap"):
            raise ValueError(f"IResNet head must be 'fc' or 'gap', got {head!r}")
        if len(layers) != 4 or any(n < 1 for n in layers):
            raise ValueError(f"IResNet layers must be four positive block counts, got {layers!r}")
        if width <= 0:
            raise ValueError(f"IResNet width must be > 0, got {width}")
        self.input_size = check_input_size(input_size)
        self.num_features = num_features
        self.head = head
        planes = [max(8, int(round(c * width / 8)) * 8) for c in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(3, planes[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0], eps=1e-5)
        self.prelu = nn.PReLU(planes[0])
        c_in = planes[0]
        for i, (c_out, blocks) in enumerate(zip(planes, layers, strict=True), start=1):
            stage = [IBasicBlock(c_in, c_out, stride=2)]
            stage += [IBasicBlock(c_out, c_out) for _ in range(blocks - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*stage))
            c_in = c_out
        self.bn2 = nn.BatchNorm2d(c_in, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)  # not in-place: last_map is also pooled
        last = stride2_size(input_size, 4)
        self.fc = nn.Linear(c_in * (last * last if head == "fc" else 1), num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)
        self._init_weights()

    def _init_weights(self) -> None:
        # arcface_torch's initialisation: N(0, 0.1) convs, unit BN, frozen unit embedding-BN scale
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.ones_(self.features.weight)
        self.features.weight.requires_grad = False

    def _body(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        stem = self.prelu(self.bn1(self.conv1(x)))
        s1 = self.layer1(stem)
        s2 = self.layer2(s1)
        s3 = self.layer3(s2)
        s4 = self.layer4(s3)
        return [stem, s1, s2, s3, s4], self.bn2(s4)

    def _head(self, last_map: Tensor) -> Tensor:
        # "fc": (B, C*h*w) flattened map; "gap": (B, C) globally pooled
        x = last_map.flatten(1) if self.head == "fc" else last_map.mean(dim=(2, 3))
        return self.features(self.fc(self.dropout(x)))
