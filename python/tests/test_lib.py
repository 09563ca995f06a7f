"""The C ABI's frame (kd_kernels._lib) on this machine: a CUDA context that cannot open says why."""

import pytest
import torch

import kd_kernels


def test_cuda_without_kernels_or_gpu_raises_the_crates_message():
    """Without a GPU (or without kernels) a CUDA context cannot open: the crate's KernelsUnavailable or
    CudaUnavailable message, as an exception."""
    from kd_kernels import _lib
    if torch.cuda.is_available() and kd_kernels.kernels_compiled():
        pytest.skip("a GPU is present and the kernels are compiled: the CUDA tests cover this path")
    if not kd_kernels.kernels_compiled():
        with pytest.raises(kd_kernels.KernelsUnavailableError) as err:
            _lib.context(0)
        assert "built without nvcc" in str(err.value)
    else:
        with pytest.raises(kd_kernels.CudaUnavailableError) as err:
            _lib.context(0)
        assert str(err.value).startswith("CUDA is not usable here")
