"""The losses as functions with autograd, on CUDA tensors (the kernels, on the current stream, no host
synchronisation) and CPU tensors (the crate's f64 reference).

Each function checks what the C ABI cannot see (_checks.py) and calls its custom op
(``torch.ops.kd_kernels.*``, _ops.py), asking for the gradients autograd will need: so the same call runs
under ``torch.compile(fullgraph=True)`` (one node per call, no graph break), under ``torch.autocast`` (the op
has no autocast rule: the logits stay in their own dtype, the loss is f32) and in eager mode, where plain
tensors skip the dispatcher's Python layers and call the op's kernel directly (_eager.py)."""

from __future__ import annotations

import math

import torch

from . import _checks, _impl, _ops  # noqa: F401 (_ops registers the ops)
from ._eager import Fused, plain
from ._lib import KdInputError

__all__ = [
    "cwd_loss", "pixel_kd_loss", "cwt_loss", "icsd_loss", "aicsd_loss", "alw_alpha", "semckd_loss", "pkd_loss",
    "ifvd_loss", "dist_loss", "skd_loss", "cirkd_loss",
]

_CWD = torch.ops.kd_kernels.cwd.default
_PIXEL_KD = torch.ops.kd_kernels.pixel_kd.default
_ICSD = torch.ops.kd_kernels.icsd.default
_DIST = torch.ops.kd_kernels.dist.default
_CWT = torch.ops.kd_kernels.cwt.default
_SEMCKD = torch.ops.kd_kernels.semckd.default
_PKD = torch.ops.kd_kernels.pkd.default
_IFVD = torch.ops.kd_kernels.ifvd.default
_SKD = torch.ops.kd_kernels.skd.default
_CIRKD = torch.ops.kd_kernels.cirkd.default
_grad_enabled = torch.is_grad_enabled


def _loss(op, cpu, cuda, slots, tensors, params, want):
    """The loss of ``op(*tensors, *params)``: through the op, or its kernel directly where :func:`plain`
    allows."""
    if plain(tensors):
        kernel = cuda if tensors[0].is_cuda else cpu
        return Fused.apply(kernel, params, slots, *tensors) if want else kernel(*tensors, *params)[0]
    return op(*tensors, *params)[0]


def cwd_loss(student: torch.Tensor, teacher: torch.Tensor, tau: float = 4.0, loss_weight: float = 3.0) -> torch.Tensor:
    """Channel-wise distillation (Shu et al., ICCV 2021; docs/losses.md §1): per (n, c), a softmax over the
    H*W positions of ``x / tau``; ``loss_weight * tau^2 / (N*C) * sum KL(pT || pS)``.

    ``student`` and ``teacher`` are NCHW logits of one shape, dtype (float32, float16, bfloat16; float64 on
    the CPU) and device. Returns a 0-d float32 tensor (float64 for float64 inputs) on that device;
    ``backward()`` fills ``student.grad``, and ``teacher.grad`` when the teacher requires grad. Defaults:
    the paper's (tau 4, weight 3). Non-contiguous inputs are copied to contiguous ones."""
    _checks.pair(student, teacher)
    grad = _grad_enabled()
    want_s, want_t = grad and student.requires_grad, grad and teacher.requires_grad
    return _loss(_CWD, _impl.cwd_cpu, _impl.cwd_cuda, (0, 1), (student, teacher),
                 (float(tau), float(loss_weight), want_s, want_t), want_s or want_t)


def pixel_kd_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    tau: float = 1.0,
    loss_weight: float = 10.0,
    reduction: str = "mean",
    scale_tau2: bool = False,
) -> torch.Tensor:
    """Pixel-wise KD (docs/losses.md §2): per pixel, a softmax over the C channels of ``x / tau``;
    ``loss_weight * [tau^2] / divisor * sum KL(pT || pS)`` with divisor N*C*H*W (``mean``), N
    (``batchmean``), 1 (``sum``) or N*H*W (``pixelmean``), and tau^2 when ``scale_tau2``.

    Defaults: the official TorchDistiller ``CriterionKD`` / AICSD ``pi_loss`` (tau 1, weight 10, ``mean``).
    The teacher is a constant (no gradient flows into it, as in every official config). Otherwise as
    :func:`cwd_loss`."""
    _checks.reduction(reduction)
    _checks.pair(student, teacher)
    want = _grad_enabled() and student.requires_grad
    return _loss(_PIXEL_KD, _impl.pixel_kd_cpu, _impl.pixel_kd_cuda, (0,), (student, teacher),
                 (float(tau), float(loss_weight), reduction, bool(scale_tau2), want), want)


def dist_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    tau: float = 1.0,
    inter_loss_weight: float = 1.0,
    intra_loss_weight: float = 1.0,
    loss_weight: float = 1.0,
) -> torch.Tensor:
    """DIST, segmentation form (Huang et al., NeurIPS 2022; docs/losses.md §8): per pixel, ``p = softmax`` over
    the C classes of ``x / tau``; with ``rho`` the Pearson correlation (eps 1e-8 added to the product of the
    norms), ``loss_weight * tau^2 * (inter_loss_weight * (1 - mean over the N*H*W pixels of rho(pS, pT)
    across classes) + intra_loss_weight * (1 - mean over the C classes of rho(pS, pT) across all pixels))``.

    With the defaults (all 1) this is DIST_KD's segmentation loss; ``tau`` and ``loss_weight`` act as in
    mmrazor's ``DISTLoss``. ``[N, C]`` classification logits are ``[N, C, 1, 1]``. The teacher is a constant
    (no gradient flows into it). Otherwise as :func:`cwd_loss`."""
    _checks.pair(student, teacher)
    want = _grad_enabled() and student.requires_grad
    return _loss(_DIST, _impl.dist_cpu, _impl.dist_cuda, (0,), (student, teacher),
                 (float(tau), float(inter_loss_weight), float(intra_loss_weight), float(loss_weight), want), want)


def cwt_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    loss_weight: float = 2e-5,
    normalize: str = "batch",
) -> torch.Tensor:
    """Channel-wise transformation (CWT, Liu et al. 2023; docs/losses.md §5, no official code exists): per
    pixel ``Y = W2 ReLU(W1 x + b1) + b2`` (1x1 convolutions ``Cs -> Ch -> Ct``), ``loss = loss_weight *
    sum (Y - teacher)^2 / D`` with ``D = N`` (``batch``, MGD's normaliser) or ``N*Ct*H*W`` (``mean``).

    ``student`` ``[N, Cs, H, W]`` and ``teacher`` ``[N, Ct, H, W]`` features (one dtype and device);
    ``w1`` ``[Ch, Cs]`` (or a 1x1 convolution's ``[Ch, Cs, 1, 1]``), ``b1`` ``[Ch]``, ``w2`` ``[Ct, Ch]`` (or
    ``[Ct, Ch, 1, 1]``), ``b2`` ``[Ct]``, read as f32 (the crate keeps the MLP in f32). ``backward()`` fills
    the gradients of the student and of the four parameters; the teacher is a constant."""
    _checks.normalize(normalize)
    _checks.tensors(student, teacher)
    weights = (w1, b1, w2, b2)
    _checks.cwt_params(student, teacher, weights)
    want = _grad_enabled() and (student.requires_grad or any(w.requires_grad for w in weights))
    return _loss(_CWT, _impl.cwt_cpu, _impl.cwt_cuda, (0, 2, 3, 4, 5), (student, teacher, w1, b1, w2, b2),
                 (float(loss_weight), normalize, want), want)


def icsd_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    tau: float = 1.0,
    loss_weight: float = 9500.0,
    variant: str = "official",
) -> torch.Tensor:
    """Inter-class similarity distillation ``L_ICS`` (Mansourian et al. 2023; docs/losses.md §3): per class a
    softmax of the logits (``official``: along H, per column, as the official code; ``paper``: over H*W), a
    C x C similarity matrix per network, rows L2-normalised, ``loss_weight / (C^2 B) * sum (Mh_S - Mh_T)^2``.
    Defaults: the official code's (tau 1, ``lo_lambda`` 9500). The teacher is a constant. Otherwise as
    :func:`cwd_loss`."""
    _checks.variant(variant)
    _checks.pair(student, teacher)
    want = _grad_enabled() and student.requires_grad
    return _loss(_ICSD, _impl.icsd_cpu, _impl.icsd_cuda, (0,), (student, teacher),
                 (float(tau), float(loss_weight), variant, want), want)


def alw_alpha(epoch: float, total_epochs: float = 120.0) -> float:
    """AICSD's adaptive loss weighting ``alpha = clamp(epoch / total_epochs, 0, 1)`` (docs/losses.md §3.10)."""
    if not (math.isfinite(total_epochs) and total_epochs > 0):
        raise KdInputError(f"parameter `total_epochs` = {total_epochs} is invalid: it must be finite and > 0")
    if not math.isfinite(epoch):
        raise KdInputError(f"parameter `epoch` = {epoch} is invalid: it must be finite")
    return min(max(epoch / total_epochs, 0.0), 1.0)


def aicsd_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    epoch: float,
    tau: float = 1.0,
    ics_weight: float = 9500.0,
    kd_weight: float = 10.0,
    variant: str = "official",
    total_epochs: float = 120.0,
) -> torch.Tensor:
    """AICSD without the task loss: ``alpha * L_ICS + (1 - alpha) * L_KD`` with ``alpha = alw_alpha(epoch,
    total_epochs)`` (docs/losses.md §3.10; officially ``alpha * (L_CE + L_ICS) + (1 - alpha) * L_KD``, so
    weigh your cross-entropy by :func:`alw_alpha` too). ``L_KD`` is :func:`pixel_kd_loss` with ``kd_weight``
    and the official ``mean`` reduction, at the same ``tau``."""
    alpha = alw_alpha(epoch, total_epochs)
    ics = icsd_loss(student, teacher, tau, ics_weight, variant)
    kd = pixel_kd_loss(student, teacher, tau, kd_weight, "mean", False)
    return alpha * ics + (1.0 - alpha) * kd


def semckd_loss(student, teacher, proj, query, key, loss_weight: float = 400.0, eps: float | None = None,
                return_attention: bool = False):
    """SemCKD (Chen et al., AAAI 2021; docs/losses.md §4) without the regressors, which stay yours.

    ``student``: S maps ``[B, Cs_i, Hs_i, Ws_i]``; ``teacher``: T maps ``[B, Ct_j, Ht_j, Wt_j]`` (a constant);
    ``proj[i][j]``: your regressor's output for the pair, ``[B, Ct_j, h, h]`` with ``h = min(Hs_i, Ht_j)``;
    ``query[i]`` / ``key[j]``: the ``MLPEmbed`` parameters ``(linear1.weight [2d, B], linear1.bias [2d],
    linear2.weight [d, 2d], linear2.bias [d])`` (read as f32; officially ``d = B // 4``). Returns
    ``loss_weight * sum(alpha * mse) / (B * S)`` (and the attention ``[B, S, T]`` with ``return_attention``);
    ``backward()`` fills the gradients of the student maps (the Gram/attention path), of ``proj`` (run your
    regressors' backward from there: autograd does it when ``proj`` came from them) and of the MLPs. Default
    weight 400 (CIFAR-100; 50 on ImageNet); ``eps=None`` is the official normalisation without epsilon."""
    _checks.semckd(student, teacher, proj, query, key)
    flat_proj = [p for row in proj for p in row]
    query = [p for m in query for p in m]
    key = [p for m in key for p in m]
    want = _grad_enabled() and any(x.requires_grad for x in (*student, *flat_proj, *query, *key))
    loss, attention, _ = _SEMCKD(list(student), list(teacher), flat_proj, query, key, float(loss_weight),
                                 0.0 if eps is None else float(eps), want)
    return (loss, attention) if return_attention else loss


def pkd_loss(student, teacher, loss_weight: float = 1.0) -> torch.Tensor:
    """PKD (Cao et al., NeurIPS 2022; docs/losses.md §7), mmrazor's ``PKDLoss`` on levels of equal shapes:
    per level and channel, student and teacher standardised over the whole batch (unbiased std, plus 1e-6),
    ``loss_weight * sum_l 0.5 * mse(S_hat_l, T_hat_l)``. ``student`` and ``teacher``: one tensor, or a
    tuple/list of levels ``[N, C_l, H_l, W_l]`` (every level in one call, on CUDA in the same kernel
    launches); a level whose shapes differ is an error that says to resize (:class:`kd_kernels.PKDLoss` resizes
    the student first, as mmrazor does). The teacher is a constant (no gradient)."""
    if isinstance(student, torch.Tensor) and isinstance(teacher, torch.Tensor):
        student, teacher = [student], [teacher]
    elif not isinstance(student, (tuple, list)) or not isinstance(teacher, (tuple, list)):
        raise KdInputError(
            f"preds_S/preds_T: expected tensors or tuples of levels, got {type(student).__name__} and "
            f"{type(teacher).__name__}")
    _checks.pkd(student, teacher)
    want = _grad_enabled() and any(x.requires_grad for x in student)
    loss, _ = _PKD(list(student), list(teacher), float(loss_weight), want)
    return loss
def ifvd_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, num_classes: int,
              loss_weight: float = 1.0) -> torch.Tensor:
    """Intra-class feature variation distillation (Wang et al., ECCV 2020; CIRKD's ``CriterionIFV``;
    docs/losses.md §11): per image and class a prototype (the mean feature of the pixels labelled k), each
    pixel's cosine with its class's prototype (with its own feature where its label is not in
    ``[0, num_classes)``: 255 or -1, "ignore"), for the student and the teacher;
    ``loss_weight * mean over N*H*W of (cos_S - cos_T)^2``.

    ``student`` ``[N, Cs, H, W]`` and ``teacher`` ``[N, Ct, H, W]`` features (one dtype and device; the
    channel counts may differ), ``labels`` ``[N, Hl, Wl]`` integers (long, int32 or uint8) at any resolution,
    resized by PyTorch's ``nearest`` rule. The gradient reaches the student directly and through its
    prototypes; the teacher and the labels are constants. The official module has no weight (CIRKD's scripts
    multiply by 20)."""
    _checks.tensors(student, teacher)
    _checks.labels(student, labels)
    _checks.num_classes(num_classes)
    want = _grad_enabled() and student.requires_grad
    return _loss(_IFVD, _impl.ifvd_cpu, _impl.ifvd_cuda, (0,), (student, teacher, labels),
                 (int(num_classes), float(loss_weight), want), want)


def skd_loss(student: torch.Tensor, teacher: torch.Tensor, loss_weight: float = 1.0, pool: int = 2) -> torch.Tensor:
    """Pair-wise similarity distillation (Liu et al., CVPR 2019, "Structured Knowledge Distillation"; CIRKD's
    ``CriterionStructuralKD``; docs/losses.md §9): per image, the features max pooled 2x2 (stride 2,
    ``ceil_mode``; ``pool=1``: not pooled), normalised per pixel over the channels, and every pixel's cosine
    similarity to every other pixel of its image (``P x P``, never formed); ``loss_weight * mean over N*P*P of
    (A_S - A_T)^2``.

    ``student`` ``[N, Cs, H, W]`` and ``teacher`` ``[N, Ct, H, W]`` features (one dtype and device; the channel
    counts may differ). The teacher is a constant (no gradient flows into it). The official module has no
    weight (CIRKD's scripts multiply by 10). Otherwise as :func:`cwd_loss`."""
    _checks.tensors(student, teacher)
    code = _checks.skd_pool(pool)
    want = _grad_enabled() and student.requires_grad
    return _loss(_SKD, _impl.skd_cpu, _impl.skd_cuda, (0,), (student, teacher), (float(loss_weight), code, want),
                 want)


def cirkd_loss(student: torch.Tensor, teacher: torch.Tensor, tau: float = 0.1, loss_weight: float = 1.0,
               pool="auto") -> torch.Tensor:
    """Cross-image pixel-relation distillation, mini-batch form (Yang et al., CVPR 2022; CIRKD's
    ``CriterionMiniBatchCrossImagePair(temperature)``; docs/losses.md §10): the features pooled, normalised per
    pixel over the channels; for every ordered pair of images ``(i, j)`` of the batch, ``i = j`` included,
    each pixel of image ``i`` gets a softmax over the pixels of image ``j`` of the similarities ``/ tau``, and
    ``loss_weight * sum over pairs of KL(pT || pS) (averaged over the rows) / B^2``.

    ``pool``: ``"auto"`` (the official rule: a 4x4 average pool, ``ceil_mode``, when ``H >= 256`` and
    ``W >= 256``, else none), ``"none"``, or a window side ``K`` (``K x K`` average pool whatever the size).
    ``student`` ``[B, Cs, H, W]`` and ``teacher`` ``[B, Ct, H, W]`` features (the channel counts may differ);
    the teacher is a constant. Defaults: the official ``tau`` (0.1) and no weight. Otherwise as
    :func:`cwd_loss`."""
    _checks.tensors(student, teacher)
    code = _checks.cirkd_pool(pool)
    want = _grad_enabled() and student.requires_grad
    return _loss(_CIRKD, _impl.cirkd_cpu, _impl.cirkd_cuda, (0,), (student, teacher),
                 (float(tau), float(loss_weight), code, want), want)
