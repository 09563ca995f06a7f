"""A whole training step (forward, the loss, backward, the optimizer) captured with ``torch.cuda.graph`` and
replayed: bit for bit the eager step's parameters, for every loss (the steps each family's test file
declares, families.py). The capture follows PyTorch's recipe:
warm-up iterations on a side stream first, which also size the crate's workspace for these shapes
(docs/pytorch.md, "CUDA graphs"). Skipped, with the reason, where there is no GPU or no kernels."""

import copy

import pytest
import torch
from cases import Step, step_inputs
from families import STEPS

import kd_kernels

if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU visible to torch: CUDA graphs need one", allow_module_level=True)
if not kd_kernels.kernels_compiled():
    pytest.skip("a GPU is present but this build has no kernels (nvcc was not found when it was built)",
                allow_module_level=True)


def sgd_step(model, optimizer, image, teacher):
    optimizer.zero_grad(set_to_none=False)
    loss = model(image, teacher)
    loss.backward()
    optimizer.step()
    return loss


@pytest.mark.parametrize("name", list(STEPS))
def test_captured_training_step_replays_bit_for_bit(name):
    torch.manual_seed(0)
    model = Step(STEPS[name], dtype=torch.float32, device="cuda")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    image, teacher = step_inputs(STEPS[name], torch.float32, "cuda")
    static_image, static_teacher = image.clone(), teacher.clone()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            sgd_step(model, optimizer, static_image, static_teacher)
    torch.cuda.current_stream().wait_stream(side)

    eager = copy.deepcopy(model)
    eager_optimizer = torch.optim.SGD(eager.parameters(), lr=0.1)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = sgd_step(model, optimizer, static_image, static_teacher)

    for k in range(3):
        new_image, new_teacher = step_inputs(STEPS[name], torch.float32, "cuda")
        new_image = new_image * (1.0 + 0.1 * k)
        static_image.copy_(new_image)
        static_teacher.copy_(new_teacher)
        graph.replay()
        want = sgd_step(eager, eager_optimizer, new_image, new_teacher)
        torch.cuda.synchronize()
        assert torch.equal(static_loss, want.detach()), (k, static_loss.item(), want.item())
        for (n, a), b in zip(model.named_parameters(), eager.parameters()):
            assert torch.equal(a, b), (k, n)
