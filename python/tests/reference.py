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


def _pixels(x):
    """``[N, C, H, W]`` features normalised per pixel over the channels, as ``[N, C, P]``."""
    return F.normalize(x, p=2, dim=1).flatten(2)


def skd_pxp(student, teacher, loss_weight=1.0, pool=2):
    """SKD as CIRKD's ``CriterionStructuralKD`` computes it: 2x2 max pool (stride 2, ceil_mode) unless
    ``pool = 1``, then every image's ``P x P`` cosine similarities, and the mean squared difference."""
    if pool == 2:
        student = F.max_pool2d(student, 2, 2, ceil_mode=True)
        teacher = F.max_pool2d(teacher, 2, 2, ceil_mode=True)
    fs, ft = _pixels(student), _pixels(teacher)
    a_s = fs.transpose(1, 2) @ fs
    a_t = ft.transpose(1, 2) @ ft
    return loss_weight * ((a_s - a_t) ** 2).mean()


def cirkd_window(pool, h, w):
    """The average pool's window side: the official rule (4 from 256x256 up) for ``"auto"``."""
    if pool == "auto":
        return 4 if h >= 256 and w >= 256 else 1
    return 1 if pool == "none" else pool


def cirkd_pxp(student, teacher, tau=0.1, loss_weight=1.0, pool="auto"):
    """CIRKD's ``CriterionMiniBatchCrossImagePair(tau)``: average pool (stride = window, ceil_mode), then for
    every ordered pair of images ``(i, j)`` the ``P x P`` logits ``S_i^T S_j / tau``, the KL divergence of the
    row softmaxes (teacher's || student's) summed over a row and averaged over the rows, averaged over the
    ``B^2`` pairs."""
    k = cirkd_window(pool, *student.shape[2:])
    if k > 1:
        student = F.avg_pool2d(student, k, k, ceil_mode=True)
        teacher = F.avg_pool2d(teacher, k, k, ceil_mode=True)
    fs, ft = _pixels(student), _pixels(teacher)
    log_ps = F.log_softmax(torch.einsum("icp,jcq->ijpq", fs, fs) / tau, dim=-1)
    log_pt = F.log_softmax(torch.einsum("icp,jcq->ijpq", ft, ft) / tau, dim=-1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1).mean(-1)
    return loss_weight * kl.mean()
