"""Small problems for every loss, shared by the op, compile, autocast and CUDA-graph tests: inputs, a
training step's parameters, and the call of the public function."""

import sys
from pathlib import Path

import torch

import kd_kernels

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python-reference"))
from semckd_reference import init_params  # noqa: E402

MLP_NAMES = ("linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias")
PAIR_LOSSES = ("cwd", "pixel_kd", "icsd", "aicsd", "dist")
LOSSES = PAIR_LOSSES + ("cwt", "semckd")
# Features whose teacher has more channels than the student (6 against 5): not in LOSSES, whose inductor
# compiles (test_compile.py) cost CI minutes; test_skd_cirkd.py compiles them with aot_eager.
RELATION_LOSSES = ("skd", "cirkd")


def randn(shape, seed, dtype=torch.float64, device="cpu", scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(device=device, dtype=dtype)


def pair_loss(name):
    """The public call of a pair loss, with non-default parameters so that they are seen to pass through."""
    return {
        "cwd": lambda s, t: kd_kernels.cwd_loss(s, t, 2.0, 3.0),
        "pixel_kd": lambda s, t: kd_kernels.pixel_kd_loss(s, t, 1.5, 10.0, "batchmean", True),
        "icsd": lambda s, t: kd_kernels.icsd_loss(s, t, 1.0, 95.0, "official"),
        "aicsd": lambda s, t: kd_kernels.aicsd_loss(s, t, 30.0, 1.0, 95.0, 10.0),
        "dist": lambda s, t: kd_kernels.dist_loss(s, t, 2.0, 1.5, 0.5, 3.0),
        "skd": lambda s, t: kd_kernels.skd_loss(s, t, 10.0, 2),
        "cirkd": lambda s, t: kd_kernels.cirkd_loss(s, t, 0.5, 2.0, 3),
    }[name]


class Step(torch.nn.Module):
    """A student (1x1 convolutions from an input image) and what the loss needs besides, as parameters: the
    loss of ``forward(image, teacher...)`` is a training step's distillation term."""

    def __init__(self, name, dtype=torch.float64, device="cpu"):
        super().__init__()
        self.name = name
        if name in PAIR_LOSSES + RELATION_LOSSES:
            self.conv = torch.nn.Conv2d(3, 5, 1)
        elif name == "cwt":
            self.conv = torch.nn.Conv2d(3, 4, 1)
            self.cwt = kd_kernels.ChannelWiseTransformation(4, 6, hidden_channels=5, loss_weight=0.01)
        else:  # semckd: two student stages, one regressor output per (student, teacher) pair, the MLPs
            self.conv = torch.nn.Conv2d(3, 4, 1)
            self.conv2 = torch.nn.Conv2d(4, 6, 1)
            self.proj = torch.nn.ParameterList([torch.nn.Parameter(randn(shape, 40 + k))
                                                for k, shape in enumerate(((4, 2, 4, 4), (4, 2, 2, 2)))])
            params = init_params(2, 1, 4, torch.Generator().manual_seed(3))
            self.query = torch.nn.ParameterList([torch.nn.Parameter(params[f"query.{i}.{n}"].double())
                                                 for i in range(2) for n in MLP_NAMES])
            self.key = torch.nn.ParameterList([torch.nn.Parameter(params[f"key.0.{n}"].double()) for n in MLP_NAMES])
        self.to(device=device, dtype=dtype)

    def forward(self, image, teacher):
        s = self.conv(image)
        if self.name in PAIR_LOSSES + RELATION_LOSSES:
            return pair_loss(self.name)(s, teacher)
        if self.name == "cwt":
            return self.cwt(s, teacher)
        s2 = torch.nn.functional.avg_pool2d(self.conv2(s), 2)
        query = [list(self.query[4 * i:4 * i + 4]) for i in range(2)]
        # As a regressor's output would be, in the maps' dtype (bf16 under autocast).
        proj = [[self.proj[0].to(s.dtype)], [self.proj[1].to(s.dtype)]]
        return kd_kernels.semckd_loss([s, s2], [teacher], proj, query, [list(self.key)])


def step_inputs(name, dtype=torch.float64, device="cpu"):
    """The image and the teacher's map of a :class:`Step`."""
    image = randn((4, 3, 4, 4), 1, dtype, device)
    channels = {"cwt": 6, "semckd": 2, "skd": 6, "cirkd": 6}.get(name, 5)
    return image, randn((4, channels, 4, 4), 2, dtype, device)
