"""Hardware profiles: shipped table loads, user YAML extends it, a bad file names the bad field."""

import pytest

from leaninfer.errors import LeaninferError
from leaninfer.hardware import get_profile, load_profiles, local_profile


def test_shipped_profiles_cover_cpu_and_gpu_classes():
    profiles = load_profiles()
    names = set(profiles)
    for expected in ("aws-g4dn.xlarge", "aws-g5.xlarge", "aws-g6.xlarge", "gcp-a2-highgpu-1g", "h100-sxm",
                     "aws-c7i.2xlarge"):
        assert expected in names
    for p in profiles.values():
        assert p.priced and p.price_date and p.price_source
        assert p.memory_bandwidth_bytes_per_s > 0
        assert p.peak_flops_per_s("fp32") > 0


def test_get_profile_unknown_lists_valid_names():
    with pytest.raises(LeaninferError) as e:
        get_profile("a100-typo")
    assert "a100-typo" in str(e.value) and "aws-g5.xlarge" in str(e.value) and "local" in str(e.value)


def test_local_profile_unpriced_unless_given():
    p = get_profile("local")
    assert p.usd_per_hour is None and not p.priced and "unpriced" in p.notes
    assert get_profile("local", usd_per_hour=0.5).usd_per_hour == 0.5
    assert local_profile(memory_bandwidth_gb_per_s=20).memory_bandwidth_bytes_per_s == 20e9


def test_user_yaml_extends_and_overrides(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("""
profiles:
  - name: my-box
    kind: cpu
    usd_per_hour: 0.10
    price_date: "2026-01"
    price_source: my invoice
    memory_bandwidth_gb_per_s: 25
    peak_tflops_per_s: {fp32: 1.0}
  - name: aws-g5.xlarge
    kind: gpu
    usd_per_hour: 0.5
    price_date: "2026-01"
    price_source: reserved
""")
    profiles = load_profiles(f)
    assert profiles["my-box"].usd_per_hour == 0.10
    assert profiles["aws-g5.xlarge"].usd_per_hour == 0.5
    assert "h100-sxm" in profiles
    assert get_profile("my-box", user_yaml=f).memory_bandwidth_gb_per_s == 25


@pytest.mark.parametrize("entry,field", [
    ("name: x\n    kind: tpu", "kind"),
    ("name: x\n    kind: cpu\n    usd_per_hour: cheap\n    price_date: d\n    price_source: s", "usd_per_hour"),
    ("name: x\n    kind: cpu\n    memory_bandwidth_gb_per_s: -3", "memory_bandwidth_gb_per_s"),
    ("name: x\n    kind: gpu\n    peak_tflops_per_s: {fp8x: 3}", "peak_tflops_per_s.fp8x"),
    ("name: x\n    kind: gpu\n    usd_per_hour: 1.0", "price_date"),
    ("name: x\n    kind: gpu\n    bandwidth: 3", "bandwidth"),
    ("kind: gpu", "name"),
])
def test_bad_profile_file_names_the_bad_field(tmp_path, entry, field):
    f = tmp_path / "bad.yaml"
    f.write_text(f"profiles:\n  - {entry}\n")
    with pytest.raises(LeaninferError) as e:
        load_profiles(f)
    assert repr(field) in str(e.value) and "bad.yaml" in str(e.value)
