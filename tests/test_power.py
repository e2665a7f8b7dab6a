"""cimflow.power.cpu_name: the CPU's model name from /proc/cpuinfo, what platform says elsewhere."""

from __future__ import annotations

import platform

from cimflow.power import cpu_name


def test_the_model_name_line_names_the_cpu(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14 96-Core Processor\nflags\t: fpu\n")
    assert cpu_name(info) == "AMD EPYC 9R14 96-Core Processor"


def test_without_a_model_name_line_or_file_platform_names_it(tmp_path):
    expected = platform.processor() or platform.machine()
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t: fpu\n")
    assert cpu_name(info) == expected
    assert cpu_name(tmp_path / "absent") == expected
    (tmp_path / "binary").write_bytes(b"\xff\xfe model name")
    assert cpu_name(tmp_path / "binary") == expected
