"""PyTorch reference implementations of the ICSD (inter-class similarity distillation) loss
of AICSD, its ALW schedule and the combined AICSD objective.

These functions are the ground truth the `kd-kernels` crate is checked against (through the
recorded fixtures `tests/fixtures/icsd_*.safetensors`). The maths is the crate's
`docs/losses.md` §3 (ICSD / AICSD): the official forward §3.4, its closed form §3.5 and
gradient §3.6, the `paper` variant §3.7, numerics §3.8, the KD term §3.9, ALW §3.10.

Official source: AmirMansurian/AICSD @ f99949ee9dae4f5e50f92f80a969121b42ceaa27,
`distiller.py` (last changed in beba48c5d7b1dfd36229034a79b4ea96184f2140):
  * line 84: `self.temperature = 1` (used for ICS and for the pixel-KD term);
  * line 108: `pi_loss` (pixel KD, `KLDivLoss()` default reduction `mean`);
  * lines 128-146: `lo_loss`, the ICS term, quoted in `icsd_official_loop` below.
`train_kd.py` (last changed in 0e5d76b256bf2c60cd95c93c1da82ce739d69470), lines 128-133: the
(commented-out) ALW lines `alpha = epoch/120; loss = alpha * (loss_seg + lo_loss) + (1-alpha) * pi_loss`.

Variants:
  * `official` (the crate's default): what the official code computes. Softmax along H only
    (dim=2 of the 4-D tensor), and the "KL" is `KLDivLoss(input=P_i, target=P_j)` with a
    probability, not a log-probability, as input. For i <= j this is
    `M[i,j] = M[j,i] = A_j - G_ij`, i.e. `M = A_max(i,j) - G` with
    `A_k = (1/B) sum P_k log P_k` and `G = P P^T / B` over (b, h, w).
  * `paper`: softmax over the flattened H*W per (b, c) and a true KL
    `M[i,j] = (1/B) sum_b KL(P_j || P_i)`, zero diagonal. No official commit computes exactly
    this; the crate offers it behind an explicit option.
Both: row L2 normalisation (`F.normalize(M, p=2, dim=1)`, eps 1e-12), then
`loss = loss_weight * mean over C^2 of (Mh_S - Mh_T)^2 / B`. The teacher is constant.

Nothing here is used at run time by the crate; CI never needs torch.
"""

import torch
import torch.nn.functional as F

from kd_reference import pixel_kd

NORMALIZE_EPS = 1e-12  # F.normalize's default eps, as the official call uses it
VARIANTS = ("official", "paper")


# --------------------------------------------------------------------------------------------
# Official variant
# --------------------------------------------------------------------------------------------


def _official_matrices_loop(s_out, t_out, tau):
    """Steps of `Distiller.forward`'s `lo_loss` branch up to the row normalisation.

    Literal copy of distiller.py lines 130-145, except that
      * the class count is `C = s_out.shape[1]` instead of the hard-coded 21
        (`range(21)`, `torch.empty((21,21)).cuda()`, lines 137-140);
      * the matrices are allocated on the input's device with the input's dtype (the official
        `torch.empty((21,21)).cuda()` is fp32 on CUDA, which is the same thing for fp32 inputs);
      * the teacher is detached (officially it is not, but teacher gradients are never applied).
    """
    b, c, h, w = s_out.shape
    t_out = t_out.detach()
    # Lines 131-132: a flattened (b, c, h*w) copy that is overwritten on the next two lines
    # (dead code in the official loss, kept here so the copy stays literal).
    s_logit = torch.reshape(s_out, (b, c, h * w))
    t_logit = torch.reshape(t_out, (b, c, h * w))

    # Lines 134-135: softmax over dim=2 of the 4-D tensor, i.e. along H only.
    s_logit = F.softmax(s_out / tau, dim=2)
    t_logit = F.softmax(t_out / tau, dim=2)
    kl = torch.nn.KLDivLoss(reduction="batchmean")
    ICCS = torch.empty((c, c), dtype=s_out.dtype, device=s_out.device)
    ICCT = torch.empty((c, c), dtype=s_out.dtype, device=s_out.device)
    for i in range(c):
        for j in range(i, c):
            # `input` is the probability P_i itself (not log P_i): kl = (1/B) sum P_j (log P_j - P_i).
            ICCS[j, i] = ICCS[i, j] = kl(s_logit[:, i], s_logit[:, j])
            ICCT[j, i] = ICCT[i, j] = kl(t_logit[:, i], t_logit[:, j])

    # Lines 144-145.
    ICCS = torch.nn.functional.normalize(ICCS, dim=1)
    ICCT = torch.nn.functional.normalize(ICCT, dim=1)
    return ICCS, ICCT


def icsd_official_loop(s_out, t_out, tau=1.0, loss_weight=9500.0):
    """The official ICS loss (`lo_loss`, distiller.py lines 128-146) for any class count.

    `loss = lo_lambda * (ICCS - ICCT).pow(2).mean() / b` (line 146), where `ICCS`, `ICCT` are
    the row-normalised C x C matrices of `_official_matrices_loop`. Autograd gives the
    gradient with respect to `s_out`.

    Numerics, as in the official code: the forward is finite even when a probability
    underflows to exactly 0 (`xlogy(0, 0) = 0`), but the backward is then NaN
    (d/dP of `P log P` at P = 0 is -inf, times the softmax Jacobian's 0).
    """
    b = s_out.shape[0]
    ICCS, ICCT = _official_matrices_loop(s_out, t_out, tau)
    return loss_weight * (ICCS - ICCT).pow(2).mean() / b


def _official_matrix_closed_form(z, tau):
    """Unnormalised official matrix `M = A_max(i,j) - G` (docs/losses.md §3.5) and its pieces.

    `log P = z/tau - LSE_H(z/tau)` (log_softmax along H), finite even where P underflows.
    Returns (M, P, log P).
    """
    b, c, h, w = z.shape
    logp = F.log_softmax(z / tau, dim=2)
    p = F.softmax(z / tau, dim=2)
    a = (p * logp).sum(dim=(0, 2, 3)) / b  # A_k, [C]
    pf = p.transpose(0, 1).reshape(c, -1)  # [C, B*H*W]
    g = pf @ pf.transpose(0, 1) / b  # G = P P^T / B, [C, C]
    k = torch.arange(c, device=z.device)
    kmax = torch.maximum(k[:, None], k[None, :])
    m = a[kmax] - g
    return m, p, logp


def icsd_official_vectorized(s_out, t_out, tau=1.0, loss_weight=9500.0):
    """The official ICS loss in closed form: what the crate implements.

    Equals `icsd_official_loop` wherever the loop is finite (A_k via log_softmax along H, G as
    one GEMM over (b, h, w)), and stays finite where the loop's backward is NaN.
    """
    b = s_out.shape[0]
    ms, _, _ = _official_matrix_closed_form(s_out, tau)
    mh_s = F.normalize(ms, p=2, dim=1, eps=NORMALIZE_EPS)
    with torch.no_grad():
        mt, _, _ = _official_matrix_closed_form(t_out.detach(), tau)
        mh_t = F.normalize(mt, p=2, dim=1, eps=NORMALIZE_EPS)
    return loss_weight * (mh_s - mh_t).pow(2).mean() / b


def icsd_official_grad_closed_form(s_out, t_out, tau=1.0, loss_weight=9500.0):
    """Analytic gradient of the official ICS loss with respect to `s_out` (docs/losses.md §3.6).

        Gh = 2*lambda/(C^2*B) * (Mh_S - Mh_T)
        U[i,:] = (Gh[i,:] - <Gh[i,:], Mh_S[i,:]> Mh_S[i,:]) / ||M_S[i,:]||   (norm >= eps)
               = Gh[i,:] / eps                                               (norm < eps)
        a_k = sum_{(i,j): max(i,j) = k} U[i,j]
        Wm  = U + U^T
        Q_k = (1/B) (a_k log P_k - sum_j Wm[k,j] P_j)
        dL/ds[b,k,h,w] = (1/tau) P_k (Q_k - sum_h' P_k Q_k)     (softmax backward along H)

    Used only to cross-check autograd (float64). No autograd inside.
    """
    with torch.no_grad():
        b, c, h, w = s_out.shape
        ms, p, logp = _official_matrix_closed_form(s_out, tau)
        mt, _, _ = _official_matrix_closed_form(t_out, tau)
        norm_s = ms.norm(p=2, dim=1, keepdim=True)
        mh_s = ms / norm_s.clamp_min(NORMALIZE_EPS)
        mh_t = F.normalize(mt, p=2, dim=1, eps=NORMALIZE_EPS)
        gh = 2.0 * loss_weight / (c * c * b) * (mh_s - mh_t)
        proj = (gh * mh_s).sum(dim=1, keepdim=True)
        # clamp_min passes the gradient where norm >= eps (PyTorch's clamp backward).
        u = torch.where(norm_s >= NORMALIZE_EPS, (gh - proj * mh_s) / norm_s, gh / NORMALIZE_EPS)
        k = torch.arange(c, device=s_out.device)
        kmax = torch.maximum(k[:, None], k[None, :])
        a = torch.zeros(c, dtype=u.dtype, device=u.device).index_add_(0, kmax.reshape(-1), u.reshape(-1))
        wm = u + u.transpose(0, 1)
        q = (a[None, :, None, None] * logp - torch.einsum("kj,bjhw->bkhw", wm, p)) / b
        return p * (q - (p * q).sum(dim=2, keepdim=True)) / tau


# --------------------------------------------------------------------------------------------
# Paper variant
# --------------------------------------------------------------------------------------------


def _paper_matrix(z, tau):
    """`M[i,j] = (1/B) sum_b KL(P_j || P_i)` with P the softmax over the flattened H*W (§3.7).

    Built pair by pair with `F.kl_div(log P_i, log P_j, reduction='batchmean',
    log_target=True)` = (1/B) sum exp(log P_j) (log P_j - log P_i): true log probabilities
    on both sides (log_softmax, finite), and an exactly zero diagonal.
    """
    b, c = z.shape[:2]
    logp = F.log_softmax(z.reshape(b, c, -1) / tau, dim=2)
    rows = []
    for i in range(c):
        rows.append(torch.stack([
            F.kl_div(logp[:, i], logp[:, j], reduction="batchmean", log_target=True) for j in range(c)
        ]))
    return torch.stack(rows)


def _paper_matrix_vectorized(z, tau):
    """Closed form of `_paper_matrix`: `M = (a_j - X_ij) / B` with `a_j = sum P_j log P_j`,
    `X_ij = sum P_j log P_i` over (b, h*w); the diagonal is set to exactly 0."""
    b, c = z.shape[:2]
    logp = F.log_softmax(z.reshape(b, c, -1) / tau, dim=2)
    p = logp.exp()
    a = (p * logp).sum(dim=(0, 2))
    x = torch.einsum("bil,bjl->ij", logp, p)
    m = (a[None, :] - x) / b
    eye = torch.eye(c, dtype=torch.bool, device=z.device)
    return m.masked_fill(eye, 0.0)


def icsd_paper_grad_closed_form(s_out, t_out, tau=1.0, loss_weight=9500.0):
    """Analytic gradient of the `paper` variant with respect to `s_out` (docs/losses.md §3.7).

        Gh, U as for the official variant (§3.6), with M the paper matrix
        c_k = sum_i U[i,k],  r_k = sum_j U[k,j]
        R_k = c_k log P_k - sum_i U[i,k] log P_i
        V_k = sum_j U[k,j] P_j
        dL/ds[b,k,l] = 1/(tau*B) (P_k (R_k - sum_l' P_k R_k) - V_k + r_k P_k)

    with l the flattened position h*W + w. Used only to cross-check autograd (float64).
    """
    with torch.no_grad():
        b, c, h, w = s_out.shape
        ms = _paper_matrix(s_out, tau)
        mh_t = F.normalize(_paper_matrix(t_out, tau), p=2, dim=1, eps=NORMALIZE_EPS)
        norm_s = ms.norm(p=2, dim=1, keepdim=True)
        mh_s = ms / norm_s.clamp_min(NORMALIZE_EPS)
        gh = 2.0 * loss_weight / (c * c * b) * (mh_s - mh_t)
        proj = (gh * mh_s).sum(dim=1, keepdim=True)
        u = torch.where(norm_s >= NORMALIZE_EPS, (gh - proj * mh_s) / norm_s, gh / NORMALIZE_EPS)
        logp = F.log_softmax(s_out.reshape(b, c, -1) / tau, dim=2)
        p = logp.exp()
        col, row = u.sum(dim=0), u.sum(dim=1)
        r = col[None, :, None] * logp - torch.einsum("ik,bil->bkl", u, logp)
        v = torch.einsum("kj,bjl->bkl", u, p)
        g = (p * (r - (p * r).sum(dim=2, keepdim=True)) - v + row[None, :, None] * p) / (tau * b)
        return g.reshape(s_out.shape)


def icsd_paper(s_out, t_out, tau=1.0, loss_weight=9500.0):
    """The `paper` variant: flattened-H*W softmax, true pairwise KL, same normalisation and
    reduction as the official loss (`loss_weight * mean_{C^2}((Mh_S - Mh_T)^2) / B`)."""
    b = s_out.shape[0]
    mh_s = F.normalize(_paper_matrix(s_out, tau), p=2, dim=1, eps=NORMALIZE_EPS)
    with torch.no_grad():
        mh_t = F.normalize(_paper_matrix(t_out.detach(), tau), p=2, dim=1, eps=NORMALIZE_EPS)
    return loss_weight * (mh_s - mh_t).pow(2).mean() / b


def icsd_paper_vectorized(s_out, t_out, tau=1.0, loss_weight=9500.0):
    """`icsd_paper` with the closed-form matrix (cross-check only)."""
    b = s_out.shape[0]
    mh_s = F.normalize(_paper_matrix_vectorized(s_out, tau), p=2, dim=1, eps=NORMALIZE_EPS)
    with torch.no_grad():
        mh_t = F.normalize(_paper_matrix_vectorized(t_out.detach(), tau), p=2, dim=1, eps=NORMALIZE_EPS)
    return loss_weight * (mh_s - mh_t).pow(2).mean() / b


# --------------------------------------------------------------------------------------------
# Shared entry points
# --------------------------------------------------------------------------------------------


def icsd_similarity_matrices(s_out, t_out, tau=1.0, variant="official", impl="loop"):
    """The two row-normalised C x C matrices (student, teacher) of either variant.

    impl: `loop` (official: the literal `lo_loss` loop; paper: the pairwise KL loop) or
    `vectorized` (the closed forms). The student matrix keeps its autograd graph.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}")
    if impl not in ("loop", "vectorized"):
        raise ValueError(f"unknown impl {impl!r}")
    if variant == "official" and impl == "loop":
        return _official_matrices_loop(s_out, t_out, tau)
    if variant == "official":
        build = lambda z: _official_matrix_closed_form(z, tau)[0]  # noqa: E731
    elif impl == "loop":
        build = lambda z: _paper_matrix(z, tau)  # noqa: E731
    else:
        build = lambda z: _paper_matrix_vectorized(z, tau)  # noqa: E731
    mh_s = F.normalize(build(s_out), p=2, dim=1, eps=NORMALIZE_EPS)
    with torch.no_grad():
        mh_t = F.normalize(build(t_out.detach()), p=2, dim=1, eps=NORMALIZE_EPS)
    return mh_s, mh_t


def icsd(s_out, t_out, tau=1.0, loss_weight=9500.0, variant="official"):
    """The crate's ICSD loss: the finite closed form of the chosen variant."""
    if variant == "official":
        return icsd_official_vectorized(s_out, t_out, tau, loss_weight)
    if variant == "paper":
        return icsd_paper(s_out, t_out, tau, loss_weight)
    raise ValueError(f"unknown variant {variant!r}")


# --------------------------------------------------------------------------------------------
# ALW and the AICSD objective
# --------------------------------------------------------------------------------------------


def alw_alpha(epoch, total_epochs=120):
    """Adaptive loss weighting: `alpha = clamp(epoch / total_epochs, 0, 1)` (docs/losses.md §3.10).

    Official (train_kd.py line 129, commented out): `alpha = epoch/120` with a 0-based integer
    epoch and the 120 hard-coded. The crate makes the total a parameter and clamps to [0, 1]
    (the official line would exceed 1 after epoch 120, e.g. with Cityscapes' 200 epochs).
    """
    if total_epochs <= 0:
        raise ValueError("total_epochs must be positive")
    return min(max(epoch / total_epochs, 0.0), 1.0)


def aicsd_objective(s, t, epoch, total_epochs=120, tau=1.0, ics_weight=9500.0, kd_weight=10.0,
                    variant="official"):
    """`alpha * L_ICS + (1 - alpha) * L_KD` (train_kd.py line 130 without the CE term, which
    belongs to the caller's training stack: the full official line is
    `alpha * (loss_seg + lo_loss) + (1-alpha) * pi_loss`).

    L_ICS = `icsd(..., loss_weight=ics_weight, variant)`; L_KD = the official `pi_loss`
    (distiller.py line 108): pixel KD with reduction `mean` over numel, no tau^2, weight
    `kd_weight`, at the same temperature.
    """
    alpha = alw_alpha(epoch, total_epochs)
    l_ics = icsd(s, t, tau, ics_weight, variant)
    l_kd = pixel_kd(s, t.detach(), tau, kd_weight, "mean", False)
    return alpha * l_ics + (1.0 - alpha) * l_kd


def aicsd_pi_loss_official(s_out, t_out, pi_lambda=10.0, temperature=1.0):
    """Literal distiller.py line 108, for checking that `pixel_kd(mean)` is the official term."""
    return pi_lambda * torch.nn.KLDivLoss()(F.log_softmax(s_out / temperature, dim=1),
                                            F.softmax(t_out / temperature, dim=1))

