"""app.machine: every report names its CPU, on the AMD EPYC (AVX2, AVX-512) and Intel Xeon (AMX) kinds alike."""

from __future__ import annotations

from app import machine

# Trimmed /proc/cpuinfo of the two kinds of machine this project has run on.
EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx2 fma avx512f avx512dq avx512_vnni avx512_bf16 sha_ni
processor\t: 1
model name\t: AMD EPYC
"""
XEON = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu avx2 fma avx512f avx512_vnni avx512_bf16 avx512_fp16 avx_vnni amx_bf16 amx_tile amx_int8
"""


def test_the_model_name_and_the_extensions_that_change_kernels_are_read() -> None:
    epyc = machine.describe(EPYC)
    assert epyc["cpu"] == "AMD EPYC"
    assert epyc["extensions"] == ["AVX2", "FMA", "AVX-512", "AVX512-VNNI", "AVX512-BF16"]
    xeon = machine.describe(XEON)
    assert xeon["cpu"].startswith("Intel(R) Xeon(R) Platinum 8481C")
    assert xeon["extensions"][-3:] == ["AMX", "AMX-BF16", "AMX-INT8"]


def test_the_summary_says_amx_or_not_and_onednn() -> None:
    info = {"cpu": "AMD EPYC", "extensions": ["AVX2", "AVX-512"], "cores": 2, "onednn": True, "machine": "x86_64"}
    assert machine.summary(info) == "AMD EPYC, 2 cores, AVX2 AVX-512, no AMX, oneDNN on"
    info |= {"extensions": ["AVX2", "AMX"], "onednn": False}
    assert machine.summary(info) == "AMD EPYC, 2 cores, AVX2 AMX, oneDNN off"


def test_this_machine_is_described() -> None:
    import tensorflow  # noqa: F401  (oneDNN is decided at TensorFlow's import)

    here = machine.describe()
    assert here["cpu"] and here["cores"] >= 1 and isinstance(here["onednn"], bool)
