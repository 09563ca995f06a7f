"""Running a loss on fresh leaves, so that a test can compare kd_kernels with a reference on the same values."""


def loss_and_grad(loss_fn, student):
    """``loss_fn(s)`` on a fresh leaf ``s`` holding ``student``'s values, and ``s``'s gradient after backward."""
    s = student.clone().requires_grad_(True)
    loss = loss_fn(s)
    loss.backward()
    return loss, s.grad
