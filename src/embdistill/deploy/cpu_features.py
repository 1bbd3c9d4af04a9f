"""Which 8-bit integer kernels this CPU gives ONNX Runtime, read from the CPU itself.

ONNX Runtime's x86 kernels multiply uint8 activations by int8 weights (U8S8). With VNNI
(AVX512-VNNI or AVX-VNNI) or AMX the products are summed in 32 bits, exactly. Without them
(AVX2, AVX-512 before Cascade Lake, SSE4.1) ``vpmaddubsw`` adds each pair of products into a
*saturating 16-bit* lane first: two products of 255 x 127 overflow it, and the embedding
drifts (ONNX Runtime's ``session.x64quantprecision`` and OpenVINO's saturation notes say so).
ARM's kernels (dot-product or widening multiplies) accumulate in 32 bits and never saturate.

The x86 features are read with the CPUID instruction, not from ``/proc/cpuinfo``: an
emulator (``qemu-x86_64 -cpu Haswell``, which ``benchmarks/parity/int8_cpu_paths.py`` uses to
measure the path without VNNI on a machine with it) answers CPUID as the CPU it emulates,
while ``/proc/cpuinfo`` still describes the host.
"""
from __future__ import annotations

import ctypes
import mmap
import platform
import sys
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = ["CpuInt8", "cpu_int8", "cpuid"]

# x86-64 System V: cpuid(leaf=edi, subleaf=esi, out=rdx) -> out[0..3] = eax, ebx, ecx, edx
_CPUID_SYSV = bytes.fromhex(
    "53"            # push rbx (callee-saved, cpuid writes it)
    "89f8"          # mov eax, edi
    "89f1"          # mov ecx, esi
    "4989d0"        # mov r8, rdx
    "0fa2"          # cpuid
    "418900"        # mov [r8], eax
    "41895804"      # mov [r8+4], ebx
    "41894808"      # mov [r8+8], ecx
    "4189500c"      # mov [r8+12], edx
    "5b"            # pop rbx
    "c3"            # ret
)


@lru_cache(maxsize=None)
def _cpuid_function() -> Any:
    """The CPUID instruction as a ctypes function, or None where it cannot be called (not x86-64, not POSIX)."""
    if platform.machine().lower() not in ("x86_64", "amd64") or sys.platform == "win32":
        return None
    try:
        code = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except (OSError, ValueError, AttributeError):  # W^X systems refuse an executable anonymous map
        return None
    code.write(_CPUID_SYSV)
    address = ctypes.addressof(ctypes.c_char.from_buffer(code))
    function = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32))(address)
    function._keep_alive = code  # the mapping must outlive the function
    return function


def cpuid(leaf: int, subleaf: int = 0) -> tuple[int, int, int, int] | None:
    """(eax, ebx, ecx, edx) of CPUID ``leaf``/``subleaf``; None where CPUID cannot be called from here."""
    function = _cpuid_function()
    if function is None:
        return None
    out = (ctypes.c_uint32 * 4)()
    function(leaf, subleaf, out)
    return out[0], out[1], out[2], out[3]


def _bit(value: int, bit: int) -> bool:
    return bool(value >> bit & 1)


@dataclass(frozen=True)
class CpuInt8:
    """The CPU's 8-bit integer dot-product support, as it decides ONNX Runtime's INT8 kernels."""

    machine: str  # platform.machine(): x86_64, aarch64, arm64, ...
    model: str  # the CPU's name where it says one
    features: tuple[str, ...]  # the integer-kernel features found: avx2, avx512bw, avx512_vnni, avx_vnni, amx_int8, asimddp, i8mm
    source: str  # where the features were read: "cpuid", "/proc/cpuinfo", "sysctl" or "unknown"

    @property
    def is_x86(self) -> bool:
        return self.machine.lower() in ("x86_64", "amd64", "i386", "i686", "x86")

    @property
    def u8s8_saturates(self) -> bool | None:
        """True where ONNX Runtime's U8S8 kernel sums product pairs in 16 bits (x86 without VNNI or AMX); None: unknown."""
        if not self.is_x86:
            return False
        if self.source == "unknown":
            return None
        return not {"avx512_vnni", "avx_vnni", "amx_int8"} & set(self.features)

    @property
    def int8_path(self) -> str:
        """One phrase naming the kernel path, for records and warnings."""
        if not self.is_x86:
            return f"{self.machine}: 32-bit integer accumulation" + (" (dot product)" if "asimddp" in self.features else "")
        if self.u8s8_saturates is None:
            return f"{self.machine}, integer features unknown"
        if not self.u8s8_saturates:
            best = next(f for f in ("amx_int8", "avx512_vnni", "avx_vnni") if f in self.features)
            return f"x86 with {best}: U8S8 summed in 32 bits"
        widest = next((f for f in ("avx512bw", "avx2") if f in self.features), "sse4.1")
        return f"x86 {widest} without VNNI: U8S8 pairs summed in saturating 16 bits"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "features": list(self.features), "u8s8_saturates": self.u8s8_saturates,
                "int8_path": self.int8_path}


def _x86_features() -> tuple[str, ...] | None:
    top = cpuid(0)
    if top is None:
        return None
    found = []
    if top[0] >= 7:
        _, ebx, ecx, edx = cpuid(7, 0)  # type: ignore[misc]
        found += [name for name, on in (("avx2", _bit(ebx, 5)), ("avx512f", _bit(ebx, 16)), ("avx512bw", _bit(ebx, 30)),
                                        ("avx512_vnni", _bit(ecx, 11)), ("amx_int8", _bit(edx, 25))) if on]
        if cpuid(7, 0)[0] >= 1:  # type: ignore[index]
            if _bit(cpuid(7, 1)[0], 4):  # type: ignore[index]
                found.append("avx_vnni")
    return tuple(found)


def _x86_brand() -> str:
    """The brand string of CPUID leaves 0x80000002-4 ("" where the CPU has none)."""
    if (cpuid(0x80000000) or (0,))[0] < 0x80000004:
        return ""
    words = [w for leaf in (0x80000002, 0x80000003, 0x80000004) for w in cpuid(leaf)]  # type: ignore[union-attr]
    return b"".join(w.to_bytes(4, "little") for w in words).split(b"\0", 1)[0].decode("ascii", "replace").strip()


def _proc_cpuinfo() -> tuple[str, set[str]]:
    """(model name, flags) from /proc/cpuinfo; ("", set()) where it cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "", set()
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, flags


@lru_cache(maxsize=None)
def cpu_int8() -> CpuInt8:
    """This process's CPU, as ONNX Runtime's integer kernels see it."""
    machine = platform.machine() or "unknown"
    model, flags = _proc_cpuinfo()
    model = model or platform.processor() or "unknown"
    features = _x86_features()
    if features is not None:
        return CpuInt8(machine, _x86_brand() or model, features, "cpuid")
    if flags:
        wanted = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")
        return CpuInt8(machine, model, tuple(f for f in wanted if f in flags), "/proc/cpuinfo")
    if sys.platform == "darwin" and machine == "arm64":
        return CpuInt8(machine, model, ("asimddp",), "sysctl")  # every Apple arm64 core has the dot product
    return CpuInt8(machine, model, (), "unknown")
