"""The CPU a measurement ran on: :func:`distillrank.calibration.cpu_info` parses Linux's texts (given
here, so the tests do not depend on the machine they run on), and every benchmark summary names the
CPU and its ISA flags in its one-line "Machine:" header."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from bench.common import machine, machine_line

from distillrank.calibration import cpu_info, machine_identity

XEON = """processor	: 0
vendor_id	: GenuineIntel
cpu family	: 6
model		: 143
model name	: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
stepping	: 8
flags		: fpu sse sse2 avx avx2 fma avx512f avx512dq avx512_bf16 avx512_vnni amx_bf16 amx_tile amx_int8
bugs		: spectre_v1

processor	: 1
vendor_id	: GenuineIntel
cpu family	: 6
model		: 143
model name	: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
stepping	: 8
flags		: fpu sse sse2 avx avx2 fma avx512f avx512dq avx512_bf16 avx512_vnni amx_bf16 amx_tile amx_int8
"""

EPYC = """processor	: 0
vendor_id	: AuthenticAMD
cpu family	: 25
model		: 1
model name	: AMD EPYC
stepping	: 1
flags		: fpu sse sse2 avx f16c fma avx2 sha_ni vaes
"""

ARM = """processor	: 0
BogoMIPS	: 50.00
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid bf16 i8mm
CPU implementer	: 0x41
CPU part	: 0xd0c
"""
ARM_LSCPU = """Architecture:            aarch64
Vendor ID:               ARM
Model name:              Neoverse-N1
Model:                   1
Stepping:                r3p1
"""


def test_cpu_info_reads_the_model_numbers_and_isa_flags_of_an_intel_xeon() -> None:
    info = cpu_info(XEON, lscpu="Model name:   Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz\n")
    assert info["model"] == "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"
    assert (info["vendor"], info["family"], info["model_number"], info["stepping"]) == (
        "GenuineIntel",
        6,
        143,
        8,
    )
    assert info["isa"] == [
        "avx2",
        "avx512f",
        "avx512_bf16",
        "avx512_vnni",
        "amx_bf16",
        "amx_int8",
        "amx_tile",
    ]
    assert (
        info["torch_capability"] == torch.backends.cpu.get_cpu_capability()
    )  # this process's, not the text's
    assert isinstance(info["cores"], int) and isinstance(info["affinity"], int)
    assert 1 <= info["affinity"] <= info["cores"]


def test_cpu_info_of_the_avx2_only_epyc_and_of_a_cpu_that_names_itself_only_to_lscpu() -> None:
    epyc = cpu_info(EPYC, lscpu="")
    assert epyc["model"] == "AMD EPYC" and (epyc["family"], epyc["model_number"], epyc["stepping"]) == (
        25,
        1,
        1,
    )
    assert epyc["isa"] == ["avx2"]  # no AVX-512, no AMX: known absent
    arm = cpu_info(ARM, lscpu=ARM_LSCPU)
    assert arm["model"] == "Neoverse-N1" and arm["vendor"] == "ARM"
    assert arm["isa"] == [] and arm["family"] is None and arm["stepping"] is None  # "r3p1" is no number
    unknown = cpu_info("processor\t: 0\n", lscpu="")
    assert unknown["isa"] is None and unknown["model"]  # no flags line: unknown, and a platform name


def test_the_calibration_fingerprint_keeps_its_fields() -> None:
    info, identity = cpu_info(), machine_identity(torch.device("cpu"))
    assert identity["cpu"] == info["model"] and identity["isa"] == (info["isa"] or [])
    assert identity["cpu_numbers"] == [info["vendor"], info["family"], info["model_number"], info["stepping"]]


def test_two_cpus_of_one_name_and_flags_calibrate_apart(monkeypatch) -> None:
    """"Intel(R) Xeon(R) Processor" with the same flags is model 167 on one machine and 207 on
    another (docs/BENCHMARKS.md): a choice measured on one is not the other's."""
    from distillrank import calibration

    seen = {}
    for number in (167, 207):
        info = {**cpu_info(), "model": "Intel(R) Xeon(R) Processor", "vendor": "GenuineIntel", "family": 6,
                "model_number": number, "stepping": 1, "isa": ["avx2", "avx512f"]}  # fmt: skip
        monkeypatch.setattr(calibration, "cpu_info", lambda info=info: info)
        seen[number] = calibration.CacheKey(machine_identity(torch.device("cpu"))).path("root")
    assert seen[167] != seen[207]


def test_machine_carries_the_cpu_and_the_header_names_it() -> None:
    m = machine()
    assert m["cpu"] == m["cpu_info"]["model"] and m["isa"] == m["cpu_info"]["isa"]
    m = {**m, "cpu": "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz", "cores": 2, "torch": "2.13.0+cpu"}
    m["cpu_info"] = cpu_info(XEON, lscpu="")
    m["isa"] = m["cpu_info"]["isa"]
    m["load_average"] = [0.5, 0.4, 0.3]
    line = machine_line(m, [1.0, 0.9, 0.8])
    assert line.startswith(
        "Machine: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz [GenuineIntel family 6, model 143"
    )
    assert "(avx2, avx512f, avx512_bf16, avx512_vnni, amx_bf16, amx_int8, amx_tile; torch " in line
    assert ", 2 cores" in line and "torch 2.13.0+cpu" in line
    assert "load average [0.5, 0.4, 0.3] → [1.0, 0.9, 0.8]" in line and "\n" not in line


def test_summaries_from_before_the_flags_were_recorded_say_so() -> None:
    from bench import report

    old = json.loads((Path(__file__).resolve().parents[1] / "docs/bench/quick/summary.json").read_text())
    assert "isa" not in old["machine"]
    text = report.render(old)
    assert text.splitlines()[1].startswith(
        "Machine: AMD EPYC (ISA flags not recorded), 2 cores, torch 2.13.0+cpu"
    )


def test_the_scale_pipeline_markdown_starts_with_the_machine() -> None:
    from bench.scale_pipeline import markdown

    m = {**machine(), "cpu_info": cpu_info(EPYC, lscpu=""), "isa": ["avx2"], "cpu": "AMD EPYC"}
    result = {
        "settings": {"passages": 10, "train_queries": [4], "test_queries": 2},
        "machine": m,
        "scale": [],
        "identity": {"pairs": 0, "by_world": []},
        "goal": {"score_peak_rss_gib": 0.5, "train_peak_rss_gib": 0.5, "rss_met": True, "time_met": True},
        "seconds": 1.0,
        "load_average": [[0.1, 0.1, 0.1], [0.2, 0.2, 0.2]],
    }
    first = markdown(result).splitlines()[0]
    assert first.startswith("Machine: AMD EPYC [AuthenticAMD family 25, model 1, stepping 1] (avx2; torch ")
    assert "→ [0.2, 0.2, 0.2]" in first
