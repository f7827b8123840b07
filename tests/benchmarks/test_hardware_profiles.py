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


# Vendor figures, written here from the datasheets (dense, no sparsity), TFLOP/s or TOPS, and GB/s.
VENDOR_PEAKS = {
    # AWS c7a: AMD EPYC 9R14 (Zen 4) at 3.7 GHz all-core; AVX-512 on 2x256-bit FMA units = 32 FP32 FLOP/cycle:
    # 2 cores x 3.7e9 x 32 = 0.2368 TFLOP/s; BF16 (AVX512_BF16) 2x, INT8 (VNNI) 4x.
    "aws-c7a.large": {"fp32": 0.2368, "bf16": 0.4736, "int8": 0.9472},
    "aws-c7a.2xlarge": {"fp32": 0.9472, "bf16": 1.8944, "int8": 3.7888},
    # NVIDIA A10G (g5): 31.52 FP32, 70 FP16/BF16 tensor, 140 INT8 (not the A10's 125 / 250)
    "aws-g5.xlarge": {"fp32": 31.52, "fp16": 70, "bf16": 70, "int8": 140},
    # NVIDIA T4: 8.1 FP32, 65 FP16 (mixed), 130 INT8; no BF16
    "aws-g4dn.xlarge": {"fp32": 8.1, "fp16": 65, "int8": 130},
    # NVIDIA H100 SXM: 67 FP32, 989 FP16/BF16, 1979 INT8; 3.35 TB/s
    "h100-sxm": {"fp32": 67, "fp16": 989, "bf16": 989, "int8": 1979},
}


@pytest.mark.parametrize("name", sorted(VENDOR_PEAKS))
def test_peaks_match_vendor_specs(name):
    assert load_profiles()[name].peak_tflops_per_s == pytest.approx(VENDOR_PEAKS[name])


def test_bandwidth_of_gpus():
    profiles = load_profiles()
    assert profiles["h100-sxm"].memory_bandwidth_gb_per_s == 3350
    assert profiles["aws-g5.xlarge"].memory_bandwidth_gb_per_s == 600
    assert profiles["aws-g4dn.xlarge"].memory_bandwidth_gb_per_s == 320


def test_missing_precision_is_not_filled_in():
    t4 = get_profile("aws-g4dn.xlarge")
    assert t4.peak_flops_per_s("bf16") is None
    assert t4.peak_flops_per_s("fp16") == 65e12


def test_every_profile_has_price_source_and_date_and_estimates_say_so():
    for p in load_profiles().values():
        assert p.price_source and p.price_date, p.name
        assert p.spec_source, p.name
    flagged = {p.name for p in load_profiles().values() if p.price_estimate}
    assert flagged == {"h100-sxm", "h200"}


def test_cpu_peaks_follow_the_datapath():
    from leaninfer.hardware import cpu_microarchitecture, cpu_peak_tflops

    isa = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16")
    assert cpu_microarchitecture("AuthenticAMD", 25, 17, isa) == "zen4"
    assert cpu_microarchitecture("AuthenticAMD", 26, 2, isa) == "zen5"
    assert cpu_microarchitecture("AuthenticAMD", 25, 1, ("avx2", "fma")) == "zen3"
    # 2 cores at 3 GHz: Zen 4 runs AVX-512 at half rate (32 FP32 FLOP/cycle), Zen 5 at full (64)
    assert cpu_peak_tflops("zen4", 2, 3000) == {"fp32": 0.192, "bf16": 0.384, "int8": 0.768}
    assert cpu_peak_tflops("zen5", 2, 3000) == {"fp32": 0.384, "bf16": 0.768, "int8": 1.536}
    assert cpu_peak_tflops(None, 2, 3000) == {} and cpu_peak_tflops("zen4", 2, None) == {}


def test_price_estimate_must_be_boolean(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("profiles:\n  - name: x\n    kind: gpu\n    price_estimate: maybe\n")
    with pytest.raises(LeaninferError, match="price_estimate"):
        load_profiles(f)
