"""What a 64-bit little-endian ELF shared object asks of the dynamic loader, read without loading
it: the libraries it needs (DT_NEEDED), the symbol versions it needs from each (GLIBC_2.29, ...)
and its undefined dynamic symbols. setup.py uses it to choose the wheel's manylinux tag, the
tests to check that amc_kernels._C stays within the Python limited API."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

SHT_DYNSYM = 11
SHT_DYNAMIC = 6
SHT_GNU_VERNEED = 0x6FFFFFFE
DT_NEEDED = 1


@dataclass(frozen=True)
class Section:
    kind: int
    offset: int
    size: int
    link: int


@dataclass(frozen=True)
class DynamicInfo:
    needed: tuple[str, ...]  # DT_NEEDED, in order
    versions: dict[str, tuple[str, ...]]  # library -> symbol versions needed from it
    undefined: tuple[str, ...]  # undefined dynamic symbols, sorted


def _sections(data: bytes) -> list[Section]:
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    entsize, count = struct.unpack_from("<HH", data, 0x3A)
    sections = []
    for i in range(count):
        _, kind, _, _, offset, size, link = struct.unpack_from(
            "<IIQQQQI", data, shoff + i * entsize
        )
        sections.append(Section(kind, offset, size, link))
    return sections


def _string(data: bytes, table: Section, index: int) -> str:
    start = table.offset + index
    return data[start : data.index(b"\0", start)].decode()


def _needed(data: bytes, sections: list[Section], dynamic: Section) -> list[str]:
    strings = sections[dynamic.link]
    needed = []
    for offset in range(dynamic.offset, dynamic.offset + dynamic.size, 16):
        tag, value = struct.unpack_from("<qQ", data, offset)
        if tag == DT_NEEDED:
            needed.append(_string(data, strings, value))
    return needed


def _versions(data: bytes, sections: list[Section], verneed: Section) -> dict[str, tuple[str, ...]]:
    """Walk the Elf64_Verneed entries and their Elf64_Vernaux lists."""
    strings = sections[verneed.link]
    found: dict[str, tuple[str, ...]] = {}
    entry = verneed.offset
    while True:
        _, count, file_name, aux_offset, next_entry = struct.unpack_from("<HHIII", data, entry)
        names, aux = [], entry + aux_offset
        for _ in range(count):
            _, _, _, name, next_aux = struct.unpack_from("<IHHII", data, aux)
            names.append(_string(data, strings, name))
            aux += next_aux
        found[_string(data, strings, file_name)] = tuple(names)
        if not next_entry:
            return found
        entry += next_entry


def _undefined(data: bytes, sections: list[Section], dynsym: Section) -> list[str]:
    strings = sections[dynsym.link]
    names = []
    for offset in range(dynsym.offset + 24, dynsym.offset + dynsym.size, 24):  # entry 0 is null
        name, _, _, shndx = struct.unpack_from("<IBBH", data, offset)
        if shndx == 0 and name:
            names.append(_string(data, strings, name))
    return names


def read_dynamic_info(path: str | Path) -> DynamicInfo:
    """The loader's view of the shared object at `path`; ValueError if it is not 64-bit ELF."""
    data = Path(path).read_bytes()
    sections = _sections(data)
    needed, versions, undefined = [], {}, []
    for section in sections:
        if section.kind == SHT_DYNAMIC:
            needed = _needed(data, sections, section)
        elif section.kind == SHT_GNU_VERNEED:
            versions = _versions(data, sections, section)
        elif section.kind == SHT_DYNSYM:
            undefined = _undefined(data, sections, section)
    return DynamicInfo(tuple(needed), versions, tuple(sorted(set(undefined))))
