"""The families' test files, in one table: the shared tests (test_ops.py, test_compile.py, test_cuda.py,
test_cuda_graphs.py, test_ddp.py, test_mmrazor.py) take the cases each declares (cases.py says which) from
here. A new family's test file is imported here and listed in ``FAMILY_TESTS``."""

import test_cirkd
import test_cwd
import test_cwt
import test_dist
import test_icsd
import test_ifvd
import test_pixel_kd
import test_pkd
import test_semckd
import test_skd

FAMILY_TESTS = (
    test_cwd,
    test_pixel_kd,
    test_icsd,
    test_dist,
    test_cwt,
    test_semckd,
    test_pkd,
    test_ifvd,
    test_skd,
    test_cirkd,
)


def declared(attribute):
    """Every family's ``attribute`` (a list of cases), in the table's order."""
    return [case for module in FAMILY_TESTS for case in getattr(module, attribute, ())]


def merged(attribute):
    """Every family's ``attribute`` (a dict), merged."""
    return {key: value for module in FAMILY_TESTS for key, value in getattr(module, attribute, {}).items()}


PAIR_CASES = declared("PAIR_CASES")
STEPS = merged("STEPS")
# The steps compiled with inductor and run under autocast by the shared tests.
LOSSES = [name for name, step in STEPS.items() if step.inductor]
