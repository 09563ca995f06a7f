"""IFVD (docs/losses.md §11) in PyTorch, in two forms written for this project (CIRKD's own file has no
license and is read only by the fixture recorder, from a checkout):

* ``ifvd_class_loop``: the algorithm as the official module runs it, a Python loop over the classes that
  builds full-size masks and blends per class (what the benches time as the PyTorch baseline);
* ``ifvd_closed_form``: a vectorised form (scatter-add prototypes, one gather), the reference of the tests.

Both take student ``[N, Cs, H, W]``, teacher ``[N, Ct, H, W]`` and integer labels ``[N, Hl, Wl]`` (resized by
PyTorch's ``nearest``), and return ``loss_weight * mean (cos_S - cos_T)^2``; autograd gives the student's
gradient, through the prototypes too."""

import torch
import torch.nn.functional as F

COUNT_EPS = 1e-6


def nearest_index(inp, out):
    """PyTorch's `nearest` source index for each output index, computed as ATen does in f32."""
    dst = torch.arange(out)
    if out == inp:
        return dst
    if out == 2 * inp:
        return dst // 2
    scale = torch.tensor(float(inp), dtype=torch.float32) / torch.tensor(float(out), dtype=torch.float32)
    return torch.clamp(torch.floor(dst.to(torch.float32) * scale).to(torch.int64), max=inp - 1)


def resized_labels(labels, h, w):
    _, hl, wl = labels.shape
    rows, cols = nearest_index(hl, h).to(labels.device), nearest_index(wl, w).to(labels.device)
    return labels.long()[:, rows][:, :, cols]


def cos_map(feat, classes, num_classes):
    """Per-pixel cosine to the class prototype (own feature where ignored), [N, H*W]."""
    n, c, h, w = feat.shape
    x = feat.reshape(n, c, h * w)
    valid = (classes >= 0) & (classes < num_classes)
    slot = torch.where(valid, classes, torch.full_like(classes, num_classes)).reshape(n, 1, h * w)
    index = slot.expand(n, c, h * w)
    sums = torch.zeros(n, c, num_classes + 1, dtype=x.dtype, device=x.device).scatter_add(2, index, x)
    ones = torch.ones_like(x[:, :1])
    counts = torch.zeros(n, 1, num_classes + 1, dtype=x.dtype, device=x.device).scatter_add(2, slot, ones)
    protos = sums / (counts + COUNT_EPS)
    partner = torch.where(valid.reshape(n, 1, h * w), torch.gather(protos, 2, index), x)
    return F.cosine_similarity(x, partner, dim=1)


def ifvd_closed_form(student, teacher, labels, num_classes, loss_weight=1.0):
    classes = resized_labels(labels, student.shape[2], student.shape[3])
    d = cos_map(student, classes, num_classes) - cos_map(teacher.detach(), classes, num_classes)
    return loss_weight * (d * d).mean()


def _class_loop_map(feat, target, num_classes):
    """The per-class loop: for each class, a full-size mask, the masked mean as the prototype, blended into
    a full-size map of partners; pixels of no class keep their own feature."""
    partners = feat.clone()
    for k in range(num_classes):
        mask = (target == k).unsqueeze(1).to(feat.dtype)  # [N, 1, H, W]
        proto = (feat * mask).sum(dim=(2, 3), keepdim=True) / (mask.sum(dim=(2, 3), keepdim=True) + COUNT_EPS)
        partners = mask * proto + (1 - mask) * partners
    return F.cosine_similarity(feat, partners, dim=1)


def ifvd_class_loop(student, teacher, labels, num_classes, loss_weight=1.0):
    target = F.interpolate(labels.unsqueeze(1).float(), size=student.shape[2:], mode="nearest").squeeze(1)
    d = _class_loop_map(student, target, num_classes) - _class_loop_map(teacher.detach(), target, num_classes)
    return loss_weight * (d * d).mean()
