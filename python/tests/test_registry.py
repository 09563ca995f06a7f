"""The Python tables against the crate's one registry (src/families.rs): the package's ``FAMILIES`` and the
tests' ``FAMILY_TESTS`` are lists of their own (a Python module cannot be generated from a Rust macro), so a
family registered in Rust without its Python side, or the other way round, fails here instead of going
unnoticed."""

import re
from pathlib import Path

from families import FAMILY_TESTS
from kd_kernels.families import FAMILIES

REGISTRY = Path(__file__).resolve().parents[2] / "src" / "families.rs"
# A row of `for_each_family!`: `Variant => module::Marker, "name", FixtureHandler;`.
ROW = re.compile(r"^\s*\w+\s*=>\s*\w+::\w+,\s*\"(\w+)\",\s*\w+;", re.MULTILINE)


def _registered():
    names = ROW.findall(REGISTRY.read_text())
    assert names, f"no family rows found in {REGISTRY}: the row pattern no longer matches the registry"
    return names


def _short(module):
    return module.__name__.rsplit(".", 1)[-1]


def test_the_package_has_a_file_for_every_registered_family():
    assert sorted(_short(m) for m in FAMILIES) == sorted(_registered())


def test_the_tests_have_a_file_for_every_registered_family():
    assert sorted(_short(m) for m in FAMILY_TESTS) == sorted(f"test_{name}" for name in _registered())
