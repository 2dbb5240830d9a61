"""A small reader of the parts of a CUDA cubin (an ELF file) the compile tests check.

Only what the tests need: the ELF header's flags (the SM the code is for), the sections by
name, the symbol table, and the ``.nv.info`` attribute records: the kernel's parameter table
(``KPARAM_INFO``: ordinal, offset and size of every parameter), and per function the register
count (``REGCOUNT``) and the stack frame size (``FRAME_SIZE``: local memory, spills included).
"""
from __future__ import annotations

import struct

EIATTR_FRAME_SIZE = 0x11
EIATTR_KPARAM_INFO = 0x17
EIATTR_REGCOUNT = 0x2F
EIFMT_NVAL, EIFMT_BVAL, EIFMT_HVAL, EIFMT_SVAL = 1, 2, 3, 4


class Cubin:
    def __init__(self, data: bytes):
        if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
            raise ValueError("not a 64-bit little-endian ELF file")
        self.data = data
        self.flags = struct.unpack_from("<I", data, 0x30)[0]
        shoff = struct.unpack_from("<Q", data, 0x28)[0]
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
        raw = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
        names_off = raw[shstrndx][4]
        self.sections = {}
        for name, _typ, _flags, _addr, off, size in raw:
            self.sections[self._str(names_off, name)] = data[off:off + size]
        strtab = self.sections.get(".strtab", b"")
        symtab = self.sections.get(".symtab", b"")
        self.symbols = []
        for i in range(0, len(symtab), 24):
            st_name = struct.unpack_from("<I", symtab, i)[0]
            end = strtab.index(b"\0", st_name)
            self.symbols.append(strtab[st_name:end].decode())

    def _str(self, base, off):
        end = self.data.index(b"\0", base + off)
        return self.data[base + off:end].decode()

    @property
    def sm(self) -> int:
        """The SM version the machine code is for (90 for sm_90), from the ELF flags."""
        return self.flags & 0xFF

    @staticmethod
    def records(info: bytes):
        """``(attribute, payload)`` of each record of a ``.nv.info`` section."""
        i = 0
        while i < len(info):
            fmt, attr = info[i], info[i + 1]
            if fmt == EIFMT_SVAL:
                size = struct.unpack_from("<H", info, i + 2)[0]
                yield attr, info[i + 4:i + 4 + size]
                i += 4 + size
            elif fmt in (EIFMT_HVAL, EIFMT_BVAL, EIFMT_NVAL):   # 4 bytes each, NVAL padded
                yield attr, info[i + 2:i + 4]
                i += 4
            else:
                raise ValueError(f"unknown .nv.info record format {fmt}")

    def params(self, entry: str) -> list[tuple[int, int, int]]:
        """``(ordinal, offset, size)`` of each parameter of kernel ``entry``, by ordinal."""
        out = []
        for attr, payload in self.records(self.sections[".nv.info." + entry]):
            if attr == EIATTR_KPARAM_INFO:
                _index, ordinal, offset, flags = struct.unpack("<IHHI", payload)
                out.append((ordinal, offset, flags >> 18))
        return sorted(out)

    def function_info(self, entry: str) -> dict:
        """``{"registers": n, "frame_bytes": n}`` of function ``entry``."""
        sym = self.symbols.index(entry)
        out = {}
        for attr, payload in self.records(self.sections[".nv.info"]):
            if attr in (EIATTR_REGCOUNT, EIATTR_FRAME_SIZE):
                index, value = struct.unpack("<II", payload)
                if index == sym:
                    out["registers" if attr == EIATTR_REGCOUNT else "frame_bytes"] = value
        return out
