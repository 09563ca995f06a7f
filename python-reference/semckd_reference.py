"""PyTorch reference implementation of SemCKD (Chen et al., AAAI 2021), without the regressors.

This is the ground truth the `kd-kernels` SemCKD fixtures are recorded from (see
`record_semckd_cwt_fixtures.py`). The maths is in the crate's `docs/losses.md` §4; the
official sources are quoted next to every class:

    DefangChen/SemCKD @ ebe5db190d87f3e493a5fdf04a808ef3179486dc
      models/util.py         (last changed 85140adb): SelfA lines 55-119, AAEmbed 121-144,
                             MLPEmbed 171-184, Normalize 187-196
      distiller_zoo/SemCKD.py (last changed 01f3dbbd): SemCKDLoss lines 8-23
      train_student.py lines 266-271 (construction), helper/loops.py lines 119-136, 182 (use)

Split of work, as the crate draws it: the regressors `R_ij` (`AAEmbed`: convs + batch norms)
belong to the caller's training stack, so here their outputs are *inputs*:
`student_proj[i][j]` is `R_ij(...)` for the pair (i, j), already at the compared size
h = min(Hs_i, Ht_j), shape [B, Ct_j, h, h]. Everything else is computed here exactly as the
official code computes it:
  * batch Gram per layer, `X = F.reshape(B, -1); X @ X.T` (no normalisation);
  * query / key embeddings `MLPEmbed(B, B // 4)`: Linear B->2d, ReLU, Linear 2d->d, then
    `Normalize`, `x / x.pow(2).sum(1, keepdim=True).pow(1/2)` with **no epsilon**;
  * attention `softmax_j(<q_i[b], k_j[b]>)` over the teacher layers, no temperature;
  * the teacher map adaptive-average-pooled to (Hs_i, Hs_i) when Hs_i <= Ht_j (the official
    square target, H used for both sides). When Hs_i > Ht_j the official code pools the
    *student* before the regressor; that pooling is the caller's, so `student_proj[i][j]`
    already has the teacher's size and the teacher is used as is;
  * the per-sample MSE (mean over c, h, w), and `SemCKDLoss`:
    `loss_weight * sum_{b,i,j} attention * mse / (B * S)`.

Gradients come from autograd. Because `student_proj` are separate leaves, the gradient with
respect to a student feature map is the Gram/attention path only (the regressor path is the
caller's backward). `semckd_analytic` re-derives every gradient by hand (docs/losses.md
§4.4) and `check_semckd_analytic` compares it with autograd in float64.

Nothing here is used at run time by the crate; CI never needs torch.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

FACTOR = 4  # SelfA(..., factor=4): d = B // 4 (models/util.py line 57)


# ---------------------------------------------------------------------------------------------
# Official building blocks (models/util.py), kept literal. `eps` is the only addition.


class Normalize(nn.Module):
    """`Normalize` (models/util.py lines 187-196): x / ||x||_p over dim 1, **no epsilon**.

    `eps=None` is the official behaviour. With a number, the norm is clamped from below,
    `x / max(||x||, eps)` (the `F.normalize` convention); only for users who accept a deviation.
    """

    def __init__(self, power=2, eps=None):
        super().__init__()
        self.power = power
        self.eps = eps

    def forward(self, x):
        norm = x.pow(self.power).sum(1, keepdim=True).pow(1. / self.power)
        if self.eps is not None:
            norm = norm.clamp_min(self.eps)
        out = x.div(norm)
        return out


class MLPEmbed(nn.Module):
    """`MLPEmbed` (models/util.py lines 171-184): Linear(dim_in, 2*dim_out), ReLU,
    Linear(2*dim_out, dim_out), Normalize(2). Built as `MLPEmbed(B, B // 4)` by SelfA."""

    def __init__(self, dim_in=1024, dim_out=128, eps=None):
        super().__init__()
        self.linear1 = nn.Linear(dim_in, 2 * dim_out)
        self.relu = nn.ReLU(inplace=True)
        self.linear2 = nn.Linear(2 * dim_out, dim_out)
        self.l2norm = Normalize(2, eps=eps)

    def forward(self, x):
        x = x.view(x.shape[0], -1)
        x = self.relu(self.linear1(x))
        x = self.l2norm(self.linear2(x))
        return x


class AAEmbed(nn.Module):
    """`AAEmbed` (models/util.py lines 121-144), the official regressor R_ij. Not part of the
    crate's loss; used only to cross-check `SelfA` against `SelfAOfficial`."""

    def __init__(self, num_input_channels=1024, num_target_channels=128):
        super().__init__()
        self.num_mid_channel = 2 * num_target_channels

        def conv1x1(in_channels, out_channels, stride=1):
            return nn.Conv2d(in_channels, out_channels, kernel_size=1, padding=0, stride=stride, bias=False)

        def conv3x3(in_channels, out_channels, stride=1):
            return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, stride=stride, bias=False)

        self.regressor = nn.Sequential(
            conv1x1(num_input_channels, self.num_mid_channel),
            nn.BatchNorm2d(self.num_mid_channel),
            nn.ReLU(inplace=True),
            conv3x3(self.num_mid_channel, self.num_mid_channel),
            nn.BatchNorm2d(self.num_mid_channel),
            nn.ReLU(inplace=True),
            conv1x1(self.num_mid_channel, num_target_channels),
        )

    def forward(self, x):
        x = self.regressor(x)
        return x


def _gram_embed_attention(module, feat_s, feat_t):
    """SelfA.forward lines 72-100, verbatim: batch Grams, key/query embeddings, attention."""
    sim_t = list(range(len(feat_t)))
    sim_s = list(range(len(feat_s)))
    bsz = feat_s[0].shape[0]
    # similarity matrix
    for i in range(len(feat_t)):
        sim_temp = feat_t[i].reshape(bsz, -1)
        sim_t[i] = torch.matmul(sim_temp, sim_temp.t())
    for i in range(len(feat_s)):
        sim_temp = feat_s[i].reshape(bsz, -1)
        sim_s[i] = torch.matmul(sim_temp, sim_temp.t())

    # key of target layers
    proj_key = module.key_weight0(sim_t[0])
    proj_key = proj_key[:, :, None]

    for i in range(1, len(sim_t)):
        temp_proj_key = getattr(module, 'key_weight' + str(i))(sim_t[i])
        proj_key = torch.cat([proj_key, temp_proj_key[:, :, None]], 2)

    # query of source layers
    proj_query = module.query_weight0(sim_s[0])
    proj_query = proj_query[:, None, :]
    for i in range(1, len(sim_s)):
        temp_proj_query = getattr(module, 'query_weight' + str(i))(sim_s[i])
        proj_query = torch.cat([proj_query, temp_proj_query[:, None, :]], 1)

    # attention weight
    energy = torch.bmm(proj_query, proj_key)  # batch_size X No.stu feature X No.tea feature
    attention = F.softmax(energy, dim=-1)
    return attention


class SelfAOfficial(nn.Module):
    """`SelfA` (models/util.py lines 55-119), literal, regressors included. Cross-check only."""

    def __init__(self, s_len, t_len, input_channel, s_n, s_t, factor=4):
        super().__init__()

        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        for i in range(t_len):
            setattr(self, 'key_weight' + str(i), MLPEmbed(input_channel, input_channel // factor))
        for i in range(s_len):
            setattr(self, 'query_weight' + str(i), MLPEmbed(input_channel, input_channel // factor))

        for i in range(s_len):
            for j in range(t_len):
                setattr(self, 'regressor' + str(i) + str(j), AAEmbed(s_n[i], s_t[j]))

    def forward(self, feat_s, feat_t):
        attention = _gram_embed_attention(self, feat_s, feat_t)

        # feature space alignment
        proj_value_stu = []
        value_tea = []
        for i in range(len(feat_s)):
            proj_value_stu.append([])
            value_tea.append([])
            for j in range(len(feat_t)):
                s_H, t_H = feat_s[i].shape[2], feat_t[j].shape[2]
                if s_H > t_H:
                    input = F.adaptive_avg_pool2d(feat_s[i], (t_H, t_H))
                    proj_value_stu[i].append(getattr(self, 'regressor' + str(i) + str(j))(input))
                    value_tea[i].append(feat_t[j])
                elif s_H < t_H or s_H == t_H:
                    target = F.adaptive_avg_pool2d(feat_t[j], (s_H, s_H))
                    proj_value_stu[i].append(getattr(self, 'regressor' + str(i) + str(j))(feat_s[i]))
                    value_tea[i].append(target)

        return proj_value_stu, value_tea, attention


class SemCKDLossOfficial(nn.Module):
    """`SemCKDLoss` (distiller_zoo/SemCKD.py lines 8-23), literal except that `ind_loss` is
    allocated on `weight`'s device instead of with a hard-coded `.cuda()` (line 16). Like the
    original, `ind_loss` is float32 whatever the input dtype. Cross-check only."""

    def __init__(self):
        super().__init__()
        self.crit = nn.MSELoss(reduction='none')

    def forward(self, s_value, f_target, weight):
        bsz, num_stu, num_tea = weight.shape
        ind_loss = torch.zeros(bsz, num_stu, num_tea).to(weight.device)

        for i in range(num_stu):
            for j in range(num_tea):
                ind_loss[:, i, j] = self.crit(s_value[i][j], f_target[i][j]).reshape(bsz, -1).mean(-1)

        loss = (weight * ind_loss).sum() / (1.0 * bsz * num_stu)
        return loss


# ---------------------------------------------------------------------------------------------
# The crate's split: SelfA with the regressor outputs as inputs.


class SelfA(nn.Module):
    """`SelfA` without the regressors: `forward(feat_s, feat_t, student_proj)`.

    Same parameter names as the official module (`key_weight{j}`, `query_weight{i}`, each an
    `MLPEmbed(input_channel, input_channel // factor)`). `student_proj[i][j]` is the caller's
    regressor output for the pair (i, j) at the compared size h = min(Hs_i, Ht_j); it replaces
    `regressor{i}{j}(...)` of the official lines 111-117.
    """

    def __init__(self, s_len, t_len, input_channel, factor=FACTOR, eps=None):
        super().__init__()
        for i in range(t_len):
            setattr(self, 'key_weight' + str(i), MLPEmbed(input_channel, input_channel // factor, eps=eps))
        for i in range(s_len):
            setattr(self, 'query_weight' + str(i), MLPEmbed(input_channel, input_channel // factor, eps=eps))

    def forward(self, feat_s, feat_t, student_proj):
        attention = _gram_embed_attention(self, feat_s, feat_t)
        value_tea = [[_compared_teacher(fs, ft, student_proj[i][j], f"student_proj.{i}.{j}")
                      for j, ft in enumerate(feat_t)] for i, fs in enumerate(feat_s)]
        proj_value_stu = [[student_proj[i][j] for j in range(len(feat_t))] for i in range(len(feat_s))]
        return proj_value_stu, value_tea, attention


def _compared_teacher(fs, ft, proj, name):
    """The teacher map the regressor output `proj` is compared with (official lines 111-117)."""
    s_H, t_H = fs.shape[2], ft.shape[2]
    # Official for s_H > t_H: regressor(adaptive_avg_pool2d(feat_s[i], (t_H, t_H))); the pooling and the
    # regressor are the caller's, the teacher is used as is.
    target = ft if s_H > t_H else F.adaptive_avg_pool2d(ft, (s_H, s_H))
    if proj.shape != target.shape:
        raise ValueError(f"{name} has shape {tuple(proj.shape)}, the official target has {tuple(target.shape)}")
    return target


class SemCKDLoss(nn.Module):
    """`SemCKDLoss` times `loss_weight` (the `beta` of helper/loops.py line 182: 400 on
    CIFAR-100, 50 on ImageNet). `ind_loss` follows the inputs' dtype and device (the official
    module allocates float32 on CUDA), so float64 runs stay float64."""

    def __init__(self, loss_weight=1.0):
        super().__init__()
        self.crit = nn.MSELoss(reduction='none')
        self.loss_weight = loss_weight

    def forward(self, s_value, f_target, weight):
        bsz, num_stu, num_tea = weight.shape
        ind_loss = torch.zeros(bsz, num_stu, num_tea, dtype=weight.dtype, device=weight.device)

        for i in range(num_stu):
            for j in range(num_tea):
                ind_loss[:, i, j] = self.crit(s_value[i][j], f_target[i][j]).reshape(bsz, -1).mean(-1)

        loss = (weight * ind_loss).sum() / (1.0 * bsz * num_stu)
        return self.loss_weight * loss


# ---------------------------------------------------------------------------------------------
# Fixture-facing helpers: parameter names, initialisation, a functional entry point.


def compared_size(hs, ht):
    """h of the pair (i, j): the student map is pooled to the teacher's size or vice versa."""
    return min(hs, ht)


def param_shapes(num_student_layers, num_teacher_layers, batch, factor=FACTOR):
    """Fixture parameter names (`query.{i}.linear1.weight`, ...) and their shapes, sorted."""
    d = batch // factor
    if d < 1:
        raise ValueError(f"batch {batch} gives embedding width {batch}//{factor} = 0")
    shapes = {}
    for side, count in (("query", num_student_layers), ("key", num_teacher_layers)):
        for i in range(count):
            shapes[f"{side}.{i}.linear1.weight"] = (2 * d, batch)
            shapes[f"{side}.{i}.linear1.bias"] = (2 * d,)
            shapes[f"{side}.{i}.linear2.weight"] = (d, 2 * d)
            shapes[f"{side}.{i}.linear2.bias"] = (d,)
    return dict(sorted(shapes.items()))


def module_name(fixture_name):
    """`query.{i}.linear1.weight` -> `query_weight{i}.linear1.weight` (the official names)."""
    side, idx, rest = fixture_name.split(".", 2)
    return f"{side}_weight{idx}.{rest}"


def init_params(num_student_layers, num_teacher_layers, batch, generator, factor=FACTOR):
    """PyTorch's default `nn.Linear` initialisation (kaiming_uniform(a=sqrt(5)) for the weight,
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the bias, i.e. both U(+-1/sqrt(fan_in))), drawn from
    `generator` so that the values do not depend on the global RNG."""
    params = {}
    for name, shape in param_shapes(num_student_layers, num_teacher_layers, batch, factor).items():
        fan_in = batch if ".linear1." in name else 2 * (batch // factor)
        bound = 1.0 / math.sqrt(fan_in)
        params[name] = (torch.rand(shape, generator=generator) * 2.0 - 1.0) * bound
    return params


def semckd(feat_s, feat_t, student_proj, params, loss_weight, eps=None, factor=FACTOR):
    """Loss and attention [B, S, T] of SemCKD with the regressor outputs given.

    feat_s: list of S student maps [B, Cs_i, Hs_i, Ws_i]; feat_t: list of T teacher maps
    (detached here, as helper/loops.py line 122 does); student_proj: S lists of T tensors
    [B, Ct_j, h, h]; params: fixture-named MLP parameters (see `param_shapes`). Every tensor
    that requires grad receives its gradient from `loss.backward()`.
    """
    S, T, B = len(feat_s), len(feat_t), feat_s[0].shape[0]
    with torch.device("meta"):  # parameters come from `params`; nothing is initialised
        module = SelfA(S, T, B, factor=factor, eps=eps)
    expected = param_shapes(S, T, B, factor)
    if sorted(params) != sorted(expected):
        raise ValueError(f"parameter names {sorted(params)} != {sorted(expected)}")
    for name, shape in expected.items():
        if tuple(params[name].shape) != shape:
            raise ValueError(f"{name}: shape {tuple(params[name].shape)}, expected {shape}")
    feat_t = [t.detach() for t in feat_t]
    s_value, f_target, attention = functional_call(
        module, {module_name(k): v for k, v in params.items()}, (feat_s, feat_t, student_proj))
    loss = SemCKDLoss(loss_weight)(s_value, f_target, attention)
    return loss, attention


def semckd_with_grads(feat_s, feat_t, student_proj, params, loss_weight, eps=None, dtype=None):
    """Runs `semckd` on fresh leaves (cast to `dtype` if given) and returns a dict in fixture
    naming: `loss`, `attention`, `grad.student.{i}`, `grad.student_proj.{i}.{j}`,
    `grad.query.{i}.linear1.weight`, ... (all detached)."""
    def leaf(x):
        x = x.detach()
        return (x.to(dtype) if dtype is not None else x.clone()).requires_grad_(True)

    fs = [leaf(x) for x in feat_s]
    ft = [leaf(x).requires_grad_(False) for x in feat_t]
    pj = [[leaf(x) for x in row] for row in student_proj]
    ps = {k: leaf(v) for k, v in params.items()}
    loss, attention = semckd(fs, ft, pj, ps, loss_weight, eps=eps)
    loss.backward()
    out = {"loss": loss.detach(), "attention": attention.detach()}
    for i, x in enumerate(fs):
        out[f"grad.student.{i}"] = x.grad
    for i, row in enumerate(pj):
        for j, x in enumerate(row):
            out[f"grad.student_proj.{i}.{j}"] = x.grad
    for k, v in ps.items():
        out[f"grad.{k}"] = v.grad
    return out


# ---------------------------------------------------------------------------------------------
# Hand-derived gradients (docs/losses.md §4.4), for the float64 cross-check.


def adaptive_avg_pool2d_ref(x, out_hw):
    """Adaptive average pooling written out: window [floor(o*H/oh), ceil((o+1)*H/oh)) per axis
    (PyTorch's definition; windows overlap when H/oh is not an integer)."""
    oh, ow = out_hw
    n, c, h, w = x.shape
    out = x.new_empty((n, c, oh, ow))
    for a in range(oh):
        h0, h1 = (a * h) // oh, -((-(a + 1) * h) // oh)
        for b in range(ow):
            w0, w1 = (b * w) // ow, -((-(b + 1) * w) // ow)
            out[:, :, a, b] = x[:, :, h0:h1, w0:w1].mean(dim=(2, 3))
    return out


def _mlp_forward(g, w1, b1, w2, b2, eps):
    z1 = g @ w1.t() + b1
    a = z1.clamp_min(0)
    z2 = a @ w2.t() + b2
    norm = z2.pow(2).sum(1, keepdim=True).sqrt()
    clamped = torch.zeros_like(norm, dtype=torch.bool) if eps is None else norm < eps
    denom = norm if eps is None else norm.clamp_min(eps)
    return z1, a, z2, denom, clamped, z2 / denom


def _mlp_backward(dy, g, w1, w2, cache):
    z1, a, z2, denom, clamped, y = cache
    # l2norm: y = z / ||z||  ->  dz = (dy - <dy, y> y) / ||z||; a clamped norm is a constant.
    dz2 = torch.where(clamped, dy / denom, (dy - (dy * y).sum(1, keepdim=True) * y) / denom)
    grads = {"linear2.weight": dz2.t() @ a, "linear2.bias": dz2.sum(0)}
    da = dz2 @ w2
    dz1 = da * (z1 > 0).to(da.dtype)  # ReLU'(0) = 0, as PyTorch's threshold_backward
    grads["linear1.weight"] = dz1.t() @ g
    grads["linear1.bias"] = dz1.sum(0)
    dg = dz1 @ w1
    return dg, grads


def semckd_analytic(feat_s, feat_t, student_proj, params, loss_weight, eps=None):
    """Forward and every gradient of SemCKD by hand, in the inputs' dtype (use float64):

      dL/dShat_ij[b] = w * alpha[b,i,j] * 2 (Shat - That) / (D_ij B S),  D_ij = Ct_j h h
      g[b,i,j]       = w * l[b,i,j] / (B S)
      dL/de[b,i,j]   = alpha (g - sum_j' alpha g)
      dq_i[b] = sum_j de[b,i,j] k_j[b],  dk_j[b] = sum_i de[b,i,j] q_i[b]
      l2norm / Linear / ReLU backward, then dGr, and dX = (dGr + dGr^T) X for the Gram.
    """
    S, T, B = len(feat_s), len(feat_t), feat_s[0].shape[0]
    xs = [f.reshape(B, -1) for f in feat_s]
    xt = [f.reshape(B, -1) for f in feat_t]
    gs = [x @ x.t() for x in xs]
    gt = [x @ x.t() for x in xt]

    def p(side, i, name):
        return params[f"{side}.{i}.{name}"]

    cq = [_mlp_forward(gs[i], p("query", i, "linear1.weight"), p("query", i, "linear1.bias"),
                       p("query", i, "linear2.weight"), p("query", i, "linear2.bias"), eps) for i in range(S)]
    ck = [_mlp_forward(gt[j], p("key", j, "linear1.weight"), p("key", j, "linear1.bias"),
                       p("key", j, "linear2.weight"), p("key", j, "linear2.bias"), eps) for j in range(T)]
    q = torch.stack([c[-1] for c in cq], 1)  # [B, S, d]
    k = torch.stack([c[-1] for c in ck], 1)  # [B, T, d]
    e = torch.einsum("bid,bjd->bij", q, k)
    e_max = e.max(dim=2, keepdim=True).values
    ex = (e - e_max).exp()
    alpha = ex / ex.sum(dim=2, keepdim=True)

    out = {}
    ind = torch.zeros_like(alpha)
    for i in range(S):
        hs = feat_s[i].shape[2]
        for j in range(T):
            ht = feat_t[j].shape[2]
            target = feat_t[j] if hs > ht else adaptive_avg_pool2d_ref(feat_t[j], (hs, hs))
            diff = student_proj[i][j] - target
            numel = diff[0].numel()
            ind[:, i, j] = diff.pow(2).reshape(B, -1).sum(1) / numel
            scale = loss_weight * 2.0 / (numel * B * S)
            out[f"grad.student_proj.{i}.{j}"] = scale * alpha[:, i, j].reshape(B, 1, 1, 1) * diff
    out["loss"] = loss_weight * (alpha * ind).sum() / (B * S)
    out["attention"] = alpha

    g = loss_weight * ind / (B * S)
    de = alpha * (g - (alpha * g).sum(dim=2, keepdim=True))
    dq = torch.einsum("bij,bjd->bid", de, k)
    dk = torch.einsum("bij,bid->bjd", de, q)
    for side, count, d_emb, caches, grams, xflat, feats in (
            ("query", S, dq, cq, gs, xs, feat_s), ("key", T, dk, ck, gt, xt, feat_t)):
        for i in range(count):
            dg, grads = _mlp_backward(d_emb[:, i], grams[i], p(side, i, "linear1.weight"),
                                      p(side, i, "linear2.weight"), caches[i])
            for name, val in grads.items():
                out[f"grad.{side}.{i}.{name}"] = val
            if side == "query":
                out[f"grad.student.{i}"] = ((dg + dg.t()) @ xflat[i]).reshape(feats[i].shape)
    return out


def max_rel_err(a, b):
    """max |a - b| / max |b| (the verifier's measure); exact zeros compare absolutely."""
    a, b = a.double(), b.double()
    return (a - b).abs().max().item() / max(b.abs().max().item(), 1e-30)


def check_semckd_analytic(feat_s, feat_t, student_proj, params, loss_weight, eps=None, names=None):
    """Analytic gradients (docs/losses.md §4.4) against autograd, both in float64.

    Also checks `adaptive_avg_pool2d_ref` against `F.adaptive_avg_pool2d` on the teacher maps.
    Returns {output name: max relative error}; the worst is typically ~1e-15.
    """
    f64 = torch.float64
    fs = [x.detach().to(f64) for x in feat_s]
    ft = [x.detach().to(f64) for x in feat_t]
    pj = [[x.detach().to(f64) for x in row] for row in student_proj]
    ps = {k: v.detach().to(f64) for k, v in params.items()}
    auto = semckd_with_grads(fs, ft, pj, ps, loss_weight, eps=eps)
    hand = semckd_analytic(fs, ft, pj, ps, loss_weight, eps=eps)
    assert sorted(auto) == sorted(hand), (sorted(auto), sorted(hand))
    errs = {k: max_rel_err(hand[k], auto[k]) for k in sorted(auto) if names is None or k in names}
    pool = 0.0
    for t in ft:
        for oh in range(1, t.shape[2] + 1):
            pool = max(pool, max_rel_err(adaptive_avg_pool2d_ref(t, (oh, oh)), F.adaptive_avg_pool2d(t, (oh, oh))))
    errs["adaptive_avg_pool2d"] = pool
    return errs


def _selftest():
    """`python semckd_reference.py`: the analytic check on random inputs, with and without eps."""
    g = torch.Generator().manual_seed(0)
    B = 8
    s_shapes = [(3, 6, 6), (5, 3, 3)]
    t_shapes = [(6, 7, 7), (4, 5, 5), (8, 2, 2)]
    fs = [torch.randn((B, *s), generator=g, dtype=torch.float64) for s in s_shapes]
    ft = [torch.randn((B, *t), generator=g, dtype=torch.float64) for t in t_shapes]
    pj = [[torch.randn((B, t[0], min(s[1], t[1]), min(s[1], t[1])), generator=g, dtype=torch.float64)
           for t in t_shapes] for s in s_shapes]
    ps = {k: v.double() for k, v in init_params(len(fs), len(ft), B, g).items()}
    for eps in (None, 1e-12, 5.0):  # 5 clamps about a third of the embedding norms here
        errs = check_semckd_analytic(fs, ft, pj, ps, 3.0, eps=eps)
        worst = max(errs, key=errs.get)
        print(f"eps={eps}: worst analytic-vs-autograd error {errs[worst]:.2e} ({worst})")
        assert errs[worst] < 1e-10


if __name__ == "__main__":
    _selftest()
