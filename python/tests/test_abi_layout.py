"""The ctypes side of the C ABI against include/kd_kernels.h, which cbindgen generates from the Rust source
(crates/kd-kernels-capi; its own test keeps the committed header equal to the generated one). Every
ctypes Structure of `_lib` and of each family's file (kd_kernels/families/) names its C struct (`_c_name_`)
and must match it field for field (names, order, types, offsets, size), every struct of the header must have
one, and every prototype of the library (`_lib`'s and each family's, `_lib.declare`) must take the header's
arguments (count, and per argument a type of the same kind and size) and return its type.
"""

import ctypes
import re
from pathlib import Path

import pytest

from kd_kernels import _lib
from kd_kernels.families import FAMILIES

HEADER = Path(__file__).resolve().parents[2] / "include" / "kd_kernels.h"

# The C scalar types the header uses, as ctypes types.
SCALARS = {
    "double": ctypes.c_double,
    "float": ctypes.c_float,
    "int32_t": ctypes.c_int32,
    "int64_t": ctypes.c_int64,
    "uint64_t": ctypes.c_uint64,
    "size_t": ctypes.c_size_t,
    "char": ctypes.c_char,
    "void": None,
}


def _parse_header():
    """The header's typedefs of scalars, its structs (fields in order) and its function prototypes, read from
    the text with comments removed (cbindgen writes one declaration per statement, in plain C)."""
    text = re.sub(r"/\*.*?\*/", "", HEADER.read_text(), flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"#[^\n]*", "", text)
    aliases = dict((alias, base) for base, alias in re.findall(r"typedef\s+(\w+)\s+(\w+)\s*;", text))
    structs = {}
    for name, body, closing in re.findall(r"typedef\s+struct\s+(\w+)\s*\{(.*?)\}\s*(\w+)\s*;", text, flags=re.S):
        assert name == closing, f"typedef struct {name} {{...}} {closing}: two names"
        fields = []
        for decl in filter(None, (d.strip() for d in body.split(";"))):
            m = re.fullmatch(r"(.+?)\s*\b(\w+)", decl)
            assert m, f"struct {name}: cannot read the field declaration {decl!r}"
            fields.append((m.group(2), " ".join(m.group(1).split())))
        structs[name] = fields
    functions = {}
    for ret, name, args in re.findall(r"([\w\s\*]+?)\s*\b(kd_\w+)\s*\(([^)]*)\)\s*;", text):
        params = []
        if args.strip() != "void":
            for arg in args.split(","):
                m = re.fullmatch(r"(.+?)\s*\b(\w+)\s*(\[\d*\])?", arg.strip())
                assert m, f"{name}: cannot read the parameter {arg!r}"
                ctype = " ".join(m.group(1).split()) + (" *" if m.group(3) else "")
                params.append((m.group(2), ctype))
        functions[name] = (" ".join(ret.split()), params)
    return aliases, structs, functions


ALIASES, STRUCTS, FUNCTIONS = _parse_header()


def _structures():
    """The ctypes Structures `_lib` and the families' files define, keyed by the C struct each names."""
    found = {}
    for module in (_lib, *FAMILIES):
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, ctypes.Structure) and value.__module__ == module.__name__:
                c_name = getattr(value, "_c_name_", None)
                assert c_name, f"{module.__name__}.{value.__name__} does not name its C struct (_c_name_)"
                assert c_name not in found, f"two ctypes Structures name {c_name}"
                found[c_name] = value
    return found


STRUCTURES = _structures()


def _resolve(ctype):
    """A header type (`const struct kd_grad_options *`, `kd_dtype`, `double`) as ('pointer', what it points to),
    ('scalar', ctypes type or None for void), ('struct', name) or ('opaque', name)."""
    ctype = ctype.replace("const", " ").strip()
    if ctype.endswith("*"):
        return ("pointer", _resolve(ctype[:-1]))
    ctype = " ".join(ctype.split())
    if ctype.startswith("struct "):
        ctype = ctype[len("struct "):]
    while ctype in ALIASES:
        ctype = ALIASES[ctype]
    if ctype in SCALARS:
        return ("scalar", SCALARS[ctype])
    if ctype in STRUCTS:
        return ("struct", ctype)
    return ("opaque", ctype)


def _c_layout(fields):
    """Offsets and size of a C struct of scalar fields under the platform's natural alignment (each scalar
    aligned to its size), as C compilers lay them out."""
    offsets, offset, align = [], 0, 1
    for _, ctype in fields:
        kind, target = _resolve(ctype)
        assert kind == "scalar" and target is not None, f"field type {ctype!r}: not a scalar this test reads"
        size = ctypes.sizeof(target)
        offset = (offset + size - 1) // size * size
        offsets.append(offset)
        offset += size
        align = max(align, size)
    return offsets, (offset + align - 1) // align * align


def test_the_header_has_structs_and_functions():
    assert STRUCTS, f"no struct read from {HEADER}"
    assert len(FUNCTIONS) >= 10, f"only {sorted(FUNCTIONS)} read from {HEADER}"


@pytest.mark.parametrize("c_name", sorted(STRUCTS))
def test_every_header_struct_has_its_ctypes_structure(c_name):
    assert c_name in STRUCTURES, (
        f"the header's {c_name} has no ctypes Structure in kd_kernels (_lib.py or its family's file)")


@pytest.mark.parametrize("c_name", sorted(STRUCTURES))
def test_ctypes_structure_matches_the_header(c_name):
    cls = STRUCTURES[c_name]
    assert c_name in STRUCTS, f"{cls.__module__}.{cls.__name__} names {c_name}, which the header does not define"
    c_fields = STRUCTS[c_name]
    py_fields = [(name, ty) for name, ty in cls._fields_]
    assert [n for n, _ in py_fields] == [n for n, _ in c_fields], f"{c_name}: field names or order differ"
    offsets, size = _c_layout(c_fields)
    for (name, py_type), (_, c_type), offset in zip(py_fields, c_fields, offsets):
        kind, target = _resolve(c_type)
        assert py_type is target, f"{c_name}.{name}: ctypes {py_type.__name__}, header {c_type}"
        assert getattr(cls, name).offset == offset, f"{c_name}.{name}: offset {getattr(cls, name).offset} != {offset}"
    assert ctypes.sizeof(cls) == size, f"{c_name}: sizeof {ctypes.sizeof(cls)} != {size}"


def _same_kind(py_type, c_type):
    """Whether the ctypes type `_lib` declares passes what the header's type is: a scalar of the same size and
    kind, a struct by value as its Structure, a pointer as a pointer (to the same Structure where the header
    points to a struct)."""
    kind, target = _resolve(c_type)
    if kind == "scalar":
        if target is None or py_type is None:
            return py_type is target
        floating = (ctypes.c_float, ctypes.c_double)
        return ctypes.sizeof(py_type) == ctypes.sizeof(target) and (py_type in floating) == (target in floating)
    if kind == "struct":
        return py_type is STRUCTURES.get(target)
    # A pointer: to a struct, it must be POINTER(that Structure); else any pointer-sized pointer type.
    if kind == "pointer" and target[0] == "struct":
        return py_type is ctypes.POINTER(STRUCTURES[target[1]])
    return py_type is not None and (
        py_type in (ctypes.c_void_p, ctypes.c_char_p) or issubclass(py_type, ctypes._Pointer)
    )


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_prototypes_match_the_header(name):
    ret, params = FUNCTIONS[name]
    fn = getattr(_lib.lib, name)
    assert fn.argtypes is not None, f"kd_kernels declares no prototype for {name} (_lib.py or its family's file)"
    assert len(fn.argtypes) == len(params), f"{name}: {len(fn.argtypes)} ctypes arguments, header {len(params)}"
    for py_type, (param, c_type) in zip(fn.argtypes, params):
        assert _same_kind(py_type, c_type), f"{name}({param}): ctypes {py_type}, header {c_type}"
    assert _same_kind(fn.restype, ret), f"{name}: returns ctypes {fn.restype}, header {ret}"
