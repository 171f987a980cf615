"""What a 64-bit little-endian ELF shared object asks of the dynamic loader, read without loading
it: the libraries it needs (DT_NEEDED), the symbol versions it needs from each (GLIBC_2.29, ...)
and its undefined dynamic symbols. setup.py uses it to choose the wheel's manylinux tag, the
tests to check that amc_kernels._C stays within the Python limited API.

It also lists the CUDA code images of the object's ``.nv_fatbin`` section (what
``cuobjdump --list-elf --list-ptx`` prints), for the machines that have no cuobjdump."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

SHT_DYNSYM = 11
SHT_DYNAMIC = 6
SHT_GNU_VERNEED = 0x6FFFFFFE
DT_NEEDED = 1


#: A fat binary (CUDA's fatbinary.h): a 16-byte header {u32 magic, u16 version, u16 header size,
#: u64 size of its entries}, then entries, each a header {u16 kind, u16, u32 header size,
#: u64 payload size, ..., u32 arch at byte 28} and the payload (a cubin ELF or PTX text).
FATBIN_MAGIC = 0xBA55ED50
FATBIN_KINDS = {1: "ptx", 2: "elf"}


@dataclass(frozen=True)
class Section:
    name: int  # offset in the section-name string table
    kind: int
    offset: int
    size: int
    link: int


@dataclass(frozen=True, order=True)
class CudaImage:
    kind: str  # "elf" (a cubin, machine code) or "ptx"
    arch: str  # "sm_80", ...


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
        name, kind, _, _, offset, size, link = struct.unpack_from(
            "<IIQQQQI", data, shoff + i * entsize
        )
        sections.append(Section(name, kind, offset, size, link))
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


def _section_named(data: bytes, sections: list[Section], name: str) -> Section | None:
    (names_index,) = struct.unpack_from("<H", data, 0x3E)
    names = sections[names_index]
    return next((s for s in sections if _string(data, names, s.name) == name), None)


def _fatbin_images(data: bytes, start: int, end: int) -> list[CudaImage]:
    images = []
    while start < end:
        magic, _, header, size = struct.unpack_from("<IHHQ", data, start)
        if magic != FATBIN_MAGIC:
            raise ValueError(f"no fat binary header at offset {start:#x}")
        entry, stop = start + header, start + header + size
        while entry < stop:
            kind, _, entry_header, payload = struct.unpack_from("<HHIQ", data, entry)
            (arch,) = struct.unpack_from("<I", data, entry + 28)
            images.append(CudaImage(FATBIN_KINDS.get(kind, f"kind {kind}"), f"sm_{arch}"))
            entry += entry_header + payload
        start = stop
    return images


def read_cuda_images(path: str | Path) -> tuple[CudaImage, ...]:
    """The CUDA code images in the ``.nv_fatbin`` section of the ELF object at `path`, in order
    (none for an object without CUDA code); ValueError if it is not 64-bit ELF."""
    data = Path(path).read_bytes()
    sections = _sections(data)
    fatbin = _section_named(data, sections, ".nv_fatbin")
    if fatbin is None:
        return ()
    return tuple(_fatbin_images(data, fatbin.offset, fatbin.offset + fatbin.size))
