"""DistributedDataParallel: two CPU processes (gloo), each with half the batch, take the same SGD steps as one
process with the whole batch.

The loss is the sum of the losses each family's test file declares as batch means (``BATCH_MEAN_LOSSES``,
families.py): each divides by the batch, so the loss of a batch is the mean of the losses of its two equal
halves, and DDP's average of the two ranks' gradients is the gradient of the whole batch's loss. (``sum`` or
``batchmean`` with a sum would be off by the world size.) The model and data are f64 and the two results
differ only by the order of the sums, so they are compared at f64 rounding (1e-12 relative)."""

import os
import socket
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from families import declared

BATCH_MEAN_LOSSES = declared("BATCH_MEAN_LOSSES")

STEPS = 3


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_and_data():
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(6, 5, 1))
    teacher = torch.nn.Conv2d(3, 5, 3, padding=1)
    g = torch.Generator().manual_seed(1)
    images = torch.randn((STEPS, 4, 3, 6, 7), generator=g, dtype=torch.float64)
    return student.double(), teacher.double().requires_grad_(False), images


def distillation_loss(student, teacher, images):
    s, t = student(images), teacher(images)
    return sum(loss(s, t) for loss in BATCH_MEAN_LOSSES)


def train(model, teacher, batches):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    for images in batches:
        optimizer.zero_grad()
        distillation_loss(model, teacher, images).backward()
        optimizer.step()


def worker(rank, world, port, out):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        student, teacher, images = model_and_data()
        ddp = torch.nn.parallel.DistributedDataParallel(student)
        half = images.shape[1] // world
        train(ddp, teacher, [batch[rank * half:(rank + 1) * half] for batch in images])
        if rank == 0:
            torch.save(student.state_dict(), out)
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_equal_one_process_on_the_whole_batch():
    assert len(BATCH_MEAN_LOSSES) >= 2
    student, teacher, images = model_and_data()
    train(student, teacher, list(images))
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "rank0.pt")
        # The children import this file by name: make its folder importable for them.
        os.environ["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
        sys.path.insert(0, str(Path(__file__).parent))
        mp.spawn(worker, args=(2, free_port(), out), nprocs=2, join=True)
        distributed = torch.load(out)
    initial = model_and_data()[0].state_dict()
    for name, value in student.state_dict().items():
        assert not torch.equal(value, initial[name]), f"{name} did not train"
        torch.testing.assert_close(distributed[name], value, rtol=1e-12, atol=1e-14, msg=name)
