"""PyTorch reference implementations of the CWD and pixel-wise KD losses.

These functions are the ground truth the `kd-kernels` crate is checked against (through the
recorded fixtures in `tests/fixtures/`). They reproduce the official PyTorch code's semantics
in fp32, operation by operation, so that a fixture says "this is what the official code
computes" and not "this is what we think the paper means". See `docs/losses.md`
sections 1.3-1.7 and 2.5 for the maths; the official sources are quoted next to each function.

Nothing here is used at run time by the crate; CI never needs torch.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

PIXEL_KD_REDUCTIONS = ("mean", "batchmean", "sum", "pixelmean")


def cwd_torchdistiller(s, t, tau, loss_weight):
    """Official CWD behind the ICCV 2021 numbers: TorchDistiller `CriterionCWD`.

    Source: irfanICMLL/TorchDistiller @ 78bac7cb, `SemSeg-distill/utils/criterion.py`
    (`ChannelNorm` lines 194-201, `CriterionCWD` lines 205-260), constructed as
    `CriterionCWD('channel', 'kl', tau)` and multiplied by `lambda_cwd` in
    `SemSeg-distill/networks/kd_model.py` line 163.

    Kept deliberately literal: the student's log-probabilities come from `softmax(...).log()`
    (criterion.py line 249), not `log_softmax`. That is why this form turns NaN when a student
    probability underflows to exactly 0 in fp32 (spec 1.5.1); the recorder documents it.
    The teacher is detached as in the official code (line 242), so this form never yields a
    teacher gradient.
    """
    n, c, h, w = s.shape
    # ChannelNorm: reshape (n, c, h*w) and softmax over the spatial axis.
    norm_s = (s / tau).reshape((n, c, -1)).softmax(dim=-1)
    norm_t = (t.detach() / tau).reshape((n, c, -1)).softmax(dim=-1)
    norm_s = norm_s.log()
    loss = nn.KLDivLoss(reduction="sum")(norm_s, norm_t)
    # norm_type == 'channel' divides by n*c (line 255), then the temperature is applied (line 260).
    loss = loss / (n * c)
    return loss_weight * (loss * (tau**2))


def cwd_mmrazor(s, t, tau, loss_weight):
    """mmrazor `ChannelWiseDivergence`: the canonical CWD form (spec 1.3, 1.5.2).

    Source: open-mmlab/mmrazor @ 90c7af1f, `mmrazor/models/losses/cwd.py` lines 37-51.
    Uses `LogSoftmax` on both sides, so it stays finite where TorchDistiller's form is NaN.
    The teacher is *not* detached here (mmrazor relies on running the teacher under
    `torch.no_grad()`), so autograd gives the teacher gradient of spec 1.4 when asked for.
    """
    assert s.shape[-2:] == t.shape[-2:]
    n, c, h, w = s.shape
    # `.view` (not reshape) as in mmrazor: the inputs must be contiguous NCHW.
    s_rows = s.view(-1, w * h) / tau
    t_rows = t.view(-1, w * h) / tau
    softmax_t = F.softmax(t_rows, dim=1)
    logsoftmax = nn.LogSoftmax(dim=1)
    loss = torch.sum(softmax_t * logsoftmax(t_rows) - softmax_t * logsoftmax(s_rows)) * (tau**2)
    return loss_weight * loss / (c * n)


def pixel_kd(s, t, tau, loss_weight, reduction, scale_tau2):
    """Pixel-wise KD: per-pixel softmax over channels, KL(teacher || student).

    The student side uses `log_softmax` (as both official codes do), the teacher side `softmax`;
    the elementwise term is PyTorch's `KLDivLoss` (`xlogy(pT, pT) - pT * log pS`).

    reduction:
      * `mean`: divide by N*C*H*W, the `KLDivLoss()` default used by TorchDistiller `CriterionKD`
        and by AICSD's `pi_loss` (spec 2.5);
      * `batchmean`: divide by N;
      * `sum`: no division;
      * `pixelmean`: divide by N*H*W (the mean per-pixel KL).
    scale_tau2: multiply by tau**2 (Hinton's gradient-scale correction; neither official
    segmentation code applies it).
    """
    if reduction not in PIXEL_KD_REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}")
    n, c, h, w = s.shape
    log_p_s = F.log_softmax(s / tau, dim=1)
    p_t = F.softmax(t / tau, dim=1)
    if reduction == "pixelmean":
        loss = F.kl_div(log_p_s, p_t, reduction="sum") / (n * h * w)
    else:
        # `mean` goes through kl_div's own reduction so that it is bit-identical to the
        # official `nn.KLDivLoss()` call.
        loss = F.kl_div(log_p_s, p_t, reduction=reduction)
    if scale_tau2:
        loss = loss * (tau**2)
    return loss_weight * loss


class _CriterionKDOfficial(nn.Module):
    """Literal copy of TorchDistiller `CriterionKD` (criterion.py lines 28-49).

    Kept as a module taking lists, like the original, so that its quirks stay visible:
    * `soft[0].detach()` (line 40) discards its result, so it detaches nothing; the teacher
      is constant only because `kd_model.py` runs it under `torch.no_grad()` (line 142).
    * `temperature` divides the logits but no `temperature**2` factor is applied.
    * `KLDivLoss()` uses the default reduction `mean`, i.e. divides by numel (N*C*H*W).
    """

    def __init__(self, upsample=False, temperature=1):
        super().__init__()
        self.upsample = upsample
        self.temperature = temperature
        self.criterion_kd = torch.nn.KLDivLoss()

    def forward(self, pred, soft):
        soft[0].detach()
        h, w = soft[0].size(2), soft[0].size(3)
        if self.upsample:
            # F.upsample is deprecated; interpolate is its exact replacement.
            scale_pred = F.interpolate(input=pred[0], size=(h * 8, w * 8), mode="bilinear", align_corners=True)
            scale_soft = F.interpolate(input=soft[0], size=(h * 8, w * 8), mode="bilinear", align_corners=True)
        else:
            scale_pred = pred[0]
            scale_soft = soft[0]
        loss = self.criterion_kd(
            F.log_softmax(scale_pred / self.temperature, dim=1),
            F.softmax(scale_soft / self.temperature, dim=1),
        )
        return loss


def pixel_kd_torchdistiller_official(s, t, temperature=1):
    """TorchDistiller `CriterionKD` exactly as `kd_model.py` line 105 builds it (defaults:
    no upsampling, temperature 1), fed the way line 152 feeds it (lists whose element 0 is
    the logits). `lambda_kd` (default 10, options.py line 91) is applied by the caller."""
    return _CriterionKDOfficial(upsample=False, temperature=temperature)([s], [t])


def cwd_teacher_grad_closed_form(s, t, tau, loss_weight):
    """Closed-form teacher gradient of CWD (spec 1.4), used only to cross-check autograd.

    dL/dT = lambda*tau/(N*C) * pT * (log pT - log pS - KL_row)
    """
    n, c, h, w = s.shape
    ls = F.log_softmax(s.reshape(n * c, -1) / tau, dim=1)
    lt = F.log_softmax(t.reshape(n * c, -1) / tau, dim=1)
    pt = lt.exp()
    kl_row = torch.sum(pt * (lt - ls), dim=1, keepdim=True)
    g = loss_weight * tau / (n * c) * pt * (lt - ls - kl_row)
    return g.reshape(s.shape)
