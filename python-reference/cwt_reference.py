"""PyTorch reference implementation of channel-wise-transformation (CWT) feature distillation.

"A Simple and Generic Framework for Feature Distillation via Channel-wise Transformation"
(Liu et al., arXiv 2303.13212, ICCV Workshops 2023). **No official code exists**; this follows
the crate's `docs/losses.md` §5 (§5.3, inferred in §5.5): the paper's
`MLP(F_s) = W2(ReLU(W1(F_s)))` with 1x1 convolutions, on the harness of MGD, whose loss it
very probably reuses:

    yzd-v/MGD @ 2c9da0b28625eb948db57afc02c824452c3910fe, det/mmdet/distillation/losses/mgd.py
      lines 58-71 (`get_dis_loss`): `nn.MSELoss(reduction='sum')(new_fea, preds_T) / N`
      line 54: `loss = self.get_dis_loss(preds_S, preds_T) * self.alpha_mgd`
      lines 35-38: MGD's generation block (3x3 conv, ReLU, 3x3 conv; convs with bias), which the
      CWT paper replaces by 1x1 conv, ReLU, 1x1 conv (no masking).

    Y    = conv1x1(W2, ReLU(conv1x1(W1, F_s) + b1)) + b2     W1 [Ch, Cs], W2 [Ct, Ch]
    loss = loss_weight * sum (Y - F_t)^2 / N                  normalize = 'batch' (MGD)
         = loss_weight * sum (Y - F_t)^2 / numel              normalize = 'mean'

The teacher is detached. Gradients with respect to the student and the four parameters come
from autograd; `cwt_analytic` re-derives them (docs/losses.md §5.4) for the float64 check.
An optional MGD-style `align` conv (C_s != C_t) is the caller's business, not part of this loss.

Nothing here is used at run time by the crate; CI never needs torch.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

NORMALIZE = ("batch", "mean")
PARAM_NAMES = ("mlp.linear1.weight", "mlp.linear1.bias", "mlp.linear2.weight", "mlp.linear2.bias")


def cwt(student, teacher, w1, b1, w2, b2, loss_weight, normalize="batch"):
    """CWT loss. student [N, Cs, H, W], teacher [N, Ct, H, W], w1 [Ch, Cs], b1 [Ch],
    w2 [Ct, Ch], b2 [Ct]; the 1x1 convolutions use these weights reshaped to [out, in, 1, 1]."""
    if normalize not in NORMALIZE:
        raise ValueError(f"unknown normalize {normalize!r}")
    assert student.shape[-2:] == teacher.shape[-2:]  # as MGD's forward (mgd.py line 49)
    ch, cs = w1.shape
    ct = w2.shape[0]
    assert student.shape[1] == cs and teacher.shape[1] == ct and w2.shape[1] == ch
    hidden = F.relu(F.conv2d(student, w1.reshape(ch, cs, 1, 1), b1))
    y = F.conv2d(hidden, w2.reshape(ct, ch, 1, 1), b2)
    t = teacher.detach()
    if normalize == "batch":
        n = t.shape[0]
        loss = F.mse_loss(y, t, reduction="sum") / n  # MGD get_dis_loss, mgd.py lines 59-69
    else:
        loss = F.mse_loss(y, t, reduction="mean")
    return loss_weight * loss


class CWTFeatureLoss(nn.Module):
    """The same loss in MGD's module form (mgd.py lines 7-71) with the generation block
    replaced by the CWT transformation and no mask: `generation = Conv1x1(Cs, Ch), ReLU,
    Conv1x1(Ch, Ct)`, `get_dis_loss = MSELoss(reduction='sum')(new_fea, preds_T) / N`, times
    `alpha`. Used by the recorder to check `cwt(normalize='batch')` against a module form."""

    def __init__(self, student_channels, hidden_channels, teacher_channels, alpha):
        super().__init__()
        self.alpha = alpha
        self.generation = nn.Sequential(
            nn.Conv2d(student_channels, hidden_channels, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_channels, teacher_channels, kernel_size=1))

    def load_fixture_params(self, params):
        ch, cs = params["mlp.linear1.weight"].shape
        ct = params["mlp.linear2.weight"].shape[0]
        with torch.no_grad():
            self.generation[0].weight.copy_(params["mlp.linear1.weight"].reshape(ch, cs, 1, 1))
            self.generation[0].bias.copy_(params["mlp.linear1.bias"])
            self.generation[2].weight.copy_(params["mlp.linear2.weight"].reshape(ct, ch, 1, 1))
            self.generation[2].bias.copy_(params["mlp.linear2.bias"])
        return self

    def forward(self, preds_S, preds_T):
        assert preds_S.shape[-2:] == preds_T.shape[-2:]
        return self.get_dis_loss(preds_S, preds_T) * self.alpha

    def get_dis_loss(self, preds_S, preds_T):
        loss_mse = nn.MSELoss(reduction='sum')
        N, C, H, W = preds_T.shape
        new_fea = self.generation(preds_S)
        dis_loss = loss_mse(new_fea, preds_T) / N
        return dis_loss


def init_params(cs, ch, ct, generator):
    """PyTorch's default `nn.Conv2d` initialisation for 1x1 convs with bias (weight and bias
    both U(+-1/sqrt(fan_in)), fan_in = in_channels), from `generator`, as [out, in] matrices."""
    def u(shape, fan_in):
        return (torch.rand(shape, generator=generator) * 2.0 - 1.0) / math.sqrt(fan_in)

    return {
        "mlp.linear1.weight": u((ch, cs), cs),
        "mlp.linear1.bias": u((ch,), cs),
        "mlp.linear2.weight": u((ct, ch), ch),
        "mlp.linear2.bias": u((ct,), ch),
    }


def cwt_with_grads(student, teacher, params, loss_weight, normalize, dtype=None):
    """`cwt` on fresh leaves (cast to `dtype` if given); returns a dict in fixture naming:
    `loss`, `grad.student`, `grad.mlp.linear1.weight`, ... (all detached)."""
    def leaf(x, grad=True):
        x = x.detach()
        return (x.to(dtype) if dtype is not None else x.clone()).requires_grad_(grad)

    s = leaf(student)
    t = leaf(teacher, grad=False)
    ps = {k: leaf(params[k]) for k in PARAM_NAMES}
    loss = cwt(s, t, *(ps[k] for k in PARAM_NAMES), loss_weight, normalize)
    loss.backward()
    out = {"loss": loss.detach(), "grad.student": s.grad}
    for k in PARAM_NAMES:
        out[f"grad.{k}"] = ps[k].grad
    return out


def cwt_analytic(student, teacher, params, loss_weight, normalize):
    """Forward and gradients by hand (use float64), as matrix products over pixels:

      A = W1 x + b1, Hd = ReLU(A), Y = W2 Hd + b2           per pixel (x: the Cs channels)
      dY = 2 alpha (Y - F_t) / D,  D = N ('batch') or numel ('mean')
      dW2 = sum_pixels dY Hd^T, db2 = sum dY, dA = (W2^T dY) * 1[A > 0]
      dW1 = sum_pixels dA x^T,  db1 = sum dA, dx = W1^T dA
    """
    w1, b1 = params["mlp.linear1.weight"], params["mlp.linear1.bias"]
    w2, b2 = params["mlp.linear2.weight"], params["mlp.linear2.bias"]
    n, cs, h, w = student.shape
    ct = teacher.shape[1]
    x = student.permute(1, 0, 2, 3).reshape(cs, -1)  # [Cs, P]
    t = teacher.permute(1, 0, 2, 3).reshape(ct, -1)
    a = w1 @ x + b1[:, None]
    hd = a.clamp_min(0)
    y = w2 @ hd + b2[:, None]
    diff = y - t
    denom = n if normalize == "batch" else diff.numel()
    loss = loss_weight * diff.pow(2).sum() / denom
    dy = 2.0 * loss_weight * diff / denom
    da = (w2.t() @ dy) * (a > 0).to(dy.dtype)  # ReLU'(0) = 0, as PyTorch
    dx = w1.t() @ da
    return {
        "loss": loss,
        "grad.student": dx.reshape(cs, n, h, w).permute(1, 0, 2, 3).contiguous(),
        "grad.mlp.linear1.weight": da @ x.t(),
        "grad.mlp.linear1.bias": da.sum(1),
        "grad.mlp.linear2.weight": dy @ hd.t(),
        "grad.mlp.linear2.bias": dy.sum(1),
    }


def hidden_preactivations(student, params):
    """A = W1 x + b1 for every pixel, [Ch, N*H*W] (for the recorder's ReLU-margin checks)."""
    w1, b1 = params["mlp.linear1.weight"], params["mlp.linear1.bias"]
    cs = student.shape[1]
    return w1 @ student.permute(1, 0, 2, 3).reshape(cs, -1) + b1[:, None]


def max_rel_err(a, b):
    """max |a - b| / max |b| (the verifier's measure); exact zeros compare absolutely."""
    a, b = a.double(), b.double()
    return (a - b).abs().max().item() / max(b.abs().max().item(), 1e-30)


def check_cwt_analytic(student, teacher, params, loss_weight, normalize):
    """Analytic gradients against autograd, both in float64: {output: max relative error}."""
    f64 = torch.float64
    s, t = student.detach().to(f64), teacher.detach().to(f64)
    ps = {k: v.detach().to(f64) for k, v in params.items()}
    auto = cwt_with_grads(s, t, ps, loss_weight, normalize)
    hand = cwt_analytic(s, t, ps, loss_weight, normalize)
    assert sorted(auto) == sorted(hand)
    return {k: max_rel_err(hand[k], auto[k]) for k in sorted(auto)}


if __name__ == "__main__":
    g = torch.Generator().manual_seed(0)
    s = torch.randn((2, 7, 5, 6), generator=g, dtype=torch.float64)
    t = torch.randn((2, 5, 5, 6), generator=g, dtype=torch.float64)
    ps = init_params(7, 13, 5, g)
    for norm in NORMALIZE:
        errs = check_cwt_analytic(s, t, ps, 0.7, norm)
        worst = max(errs, key=errs.get)
        print(f"normalize={norm}: worst analytic-vs-autograd error {errs[worst]:.2e} ({worst})")
        assert errs[worst] < 1e-10
