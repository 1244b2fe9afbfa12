"""An independent PyTorch MobileNetV2 + coordinate attention.

Written from the architecture description in the shared reference notes, with
the module layout (and so the state_dict keys) of the authors' `mbv2_ca.pth`:
`features.0` stem, `features.1..17` blocks (`conv.N` sequential indices),
`conv` head, `classifier.1` linear. PyTorch semantics throughout: symmetric
padding 1 for every 3x3 conv, BN eps 1e-5.

Not part of the package, and sharing no code with it: the tests check the
checkpoint converter and `MobileNetV2CA` against it
(`tests/test_weights.py`), and `run.py` times it as the authors' network in
PyTorch eager mode. It imports nothing but torch.
"""

import torch
from torch import nn


def make_divisible(v, divisor=8):
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class CoordAtt(nn.Module):
    def __init__(self, channels, reduction=32, gate_names=("conv2", "conv3")):
        super().__init__()
        mip = max(8, channels // reduction)
        self.conv1 = nn.Conv2d(channels, mip, 1)
        self.bn1 = nn.BatchNorm2d(mip)
        self.gate_names = gate_names
        setattr(self, gate_names[0], nn.Conv2d(mip, channels, 1))
        setattr(self, gate_names[1], nn.Conv2d(mip, channels, 1))

    def forward(self, x):
        h, w = x.shape[2], x.shape[3]
        x_h = x.mean(dim=3, keepdim=True)  # (N, C, H, 1)
        x_w = x.mean(dim=2, keepdim=True).permute(0, 1, 3, 2)  # (N, C, W, 1)
        y = torch.cat([x_h, x_w], dim=2)
        y = nn.functional.hardswish(self.bn1(self.conv1(y)))
        y_h, y_w = torch.split(y, [h, w], dim=2)
        a_h = torch.sigmoid(getattr(self, self.gate_names[0])(y_h))
        a_w = torch.sigmoid(
            getattr(self, self.gate_names[1])(y_w.permute(0, 1, 3, 2))
        )
        return x * a_w * a_h


def conv_bn(inp, oup, kernel, stride, groups=1, relu=True):
    layers = [
        nn.Conv2d(inp, oup, kernel, stride, kernel // 2, groups=groups,
                  bias=False),
        nn.BatchNorm2d(oup),
    ]
    if relu:
        layers.append(nn.ReLU6(inplace=True))
    return layers


class InvertedResidual(nn.Module):
    def __init__(self, inp, oup, stride, expand_ratio, gate_names):
        super().__init__()
        hidden = round(inp * expand_ratio)
        self.identity = stride == 1 and inp == oup
        if expand_ratio == 1:
            layers = conv_bn(hidden, hidden, 3, stride, groups=hidden)
            layers += conv_bn(hidden, oup, 1, 1, relu=False)
        else:
            layers = conv_bn(inp, hidden, 1, 1)
            layers += conv_bn(hidden, hidden, 3, stride, groups=hidden)
            layers.append(CoordAtt(hidden, gate_names=gate_names))
            layers += conv_bn(hidden, oup, 1, 1, relu=False)
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.identity else self.conv(x)


class MobileNetV2CA(nn.Module):
    STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
              (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes=1000, width_mult=1.0,
                 gate_names=("conv2", "conv3")):
        super().__init__()
        inp = make_divisible(32 * width_mult)
        layers = [nn.Sequential(*conv_bn(3, inp, 3, 2))]
        for t, c, n, s in self.STAGES:
            oup = make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(inp, oup, s if i == 0 else 1, t,
                                               gate_names))
                inp = oup
        self.features = nn.Sequential(*layers)
        last = make_divisible(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv = nn.Sequential(*conv_bn(inp, last, 1, 1))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Sequential(nn.Dropout(0.1),
                                        nn.Linear(last, num_classes))

    def forward(self, x):
        x = self.avgpool(self.conv(self.features(x)))
        return self.classifier(torch.flatten(x, 1))


def randomized(model, seed=0):
    """Random weights and non-trivial BN statistics, in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape,
                                                generator=gen)
                                    * (2.0 / fan_in) ** 0.5)
                if module.bias is not None:
                    module.bias.copy_(0.1 * torch.randn(module.bias.shape,
                                                        generator=gen))
            elif isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(0.5 + torch.rand(n, generator=gen))
                module.bias.copy_(0.2 * torch.randn(n, generator=gen))
                module.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(n, generator=gen))
                module.num_batches_tracked.fill_(1234)
    return model.eval()
