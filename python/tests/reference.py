"""The official formulas, written in PyTorch: what kd_kernels must agree with (loss and autograd gradients)."""

import torch
import torch.nn.functional as F


def cwd_official(preds_s, preds_t, tau, loss_weight):
    """mmrazor ``ChannelWiseDivergence.forward`` (= TorchDistiller ``CriterionCWD``, channel, kl)."""
    n, c, h, w = preds_s.shape
    softmax_pred_t = F.softmax(preds_t.reshape(-1, w * h) / tau, dim=1)
    logsoftmax = torch.nn.LogSoftmax(dim=1)
    loss = torch.sum(
        softmax_pred_t * logsoftmax(preds_t.reshape(-1, w * h) / tau)
        - softmax_pred_t * logsoftmax(preds_s.reshape(-1, w * h) / tau)
    ) * (tau**2)
    return loss_weight * loss / (c * n)


def pixel_kd_official(preds_s, preds_t, tau, loss_weight, reduction, scale_tau2):
    """TorchDistiller ``CriterionKD`` / AICSD ``pi_loss`` (``KLDivLoss`` over the channels), with the crate's
    reductions (``pixelmean`` = the sum over N*H*W pixels)."""
    log_ps = F.log_softmax(preds_s / tau, dim=1)
    pt = F.softmax(preds_t / tau, dim=1)
    if reduction == "pixelmean":
        n, _, h, w = preds_s.shape
        kl = F.kl_div(log_ps, pt, reduction="sum") / (n * h * w)
    else:
        kl = F.kl_div(log_ps, pt, reduction=reduction)
    return loss_weight * (tau * tau if scale_tau2 else 1.0) * kl


def mmrazor_kl_divergence(preds_s, preds_t, tau, reduction, loss_weight):
    """mmrazor ``KLDivergence.forward`` (teacher detached)."""
    preds_t = preds_t.detach()
    softmax_pred_t = F.softmax(preds_t / tau, dim=1)
    logsoftmax_preds_s = F.log_softmax(preds_s / tau, dim=1)
    loss = (tau**2) * F.kl_div(logsoftmax_preds_s, softmax_pred_t, reduction=reduction)
    return loss_weight * loss


def cwt_reference(student, teacher, w1, b1, w2, b2, loss_weight, normalize):
    """CWT as docs/losses.md §5.3 states it (no official code exists; python-reference/cwt_reference.py):
    1x1 conv, ReLU, 1x1 conv, then MGD's ``MSELoss(reduction='sum') / N`` (``batch``) or the mean."""
    ch, cs = w1.shape[0], w1.shape[1]
    ct = w2.shape[0]
    hidden = F.relu(F.conv2d(student, w1.reshape(ch, cs, 1, 1), b1))
    y = F.conv2d(hidden, w2.reshape(ct, ch, 1, 1), b2)
    t = teacher.detach()
    if normalize == "batch":
        loss = F.mse_loss(y, t, reduction="sum") / t.shape[0]
    else:
        loss = F.mse_loss(y, t, reduction="mean")
    return loss_weight * loss
