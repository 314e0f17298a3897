"""gptcourse.profiles: the size profile (env, CI, hardware detection), pick() and device().

The environment and torch's device probes are monkeypatched in every test, so results do not
depend on the machine (a GPU box, CI, a laptop). Exact string / value comparisons.
"""

from __future__ import annotations

import pytest
import torch

from gptcourse import profiles
from gptcourse.profiles import PROFILES, device, pick, profile


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No profile/CI/device variables set; use the returned monkeypatch to set some."""
    for var in ("GPTCOURSE_PROFILE", "CI", "GPTCOURSE_DEVICE"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def set_hardware(mp: pytest.MonkeyPatch, cuda: bool, mps: bool = False) -> None:
    mp.setattr(torch.cuda, "is_available", lambda: cuda)
    if getattr(torch.backends, "mps", None) is not None:
        mp.setattr(torch.backends.mps, "is_available", lambda: mps)


# --------------------------------------------------------------------------------------
# profile()
# --------------------------------------------------------------------------------------


def test_profiles_constant():
    assert PROFILES == ("ci", "cpu", "gpu")


@pytest.mark.parametrize("name", ["ci", "cpu", "gpu"])
def test_profile_from_env(clean_env, name):
    set_hardware(clean_env, cuda=name != "gpu")  # the variable wins over the hardware
    clean_env.setenv("GPTCOURSE_PROFILE", name)
    assert profile() == name


@pytest.mark.parametrize("raw, expected", [("CI", "ci"), ("Cpu", "cpu"), (" GPU ", "gpu"), ("gPu\n", "gpu")])
def test_profile_env_is_case_and_space_insensitive(clean_env, raw, expected):
    clean_env.setenv("GPTCOURSE_PROFILE", raw)
    assert profile() == expected


@pytest.mark.parametrize("raw", ["fast", "tpu", "c i", "cpu,gpu", "0"])
def test_profile_unknown_value_raises_naming_valid_ones(clean_env, raw):
    clean_env.setenv("GPTCOURSE_PROFILE", raw)
    with pytest.raises(ValueError) as info:
        profile()
    msg = str(info.value)
    assert "GPTCOURSE_PROFILE" in msg
    for name in ("ci", "cpu", "gpu"):
        assert name in msg


def test_profile_env_wins_over_ci(clean_env):
    clean_env.setenv("CI", "true")
    clean_env.setenv("GPTCOURSE_PROFILE", "cpu")
    assert profile() == "cpu"


@pytest.mark.parametrize("ci", ["true", "TRUE", "1", "yes"])
@pytest.mark.parametrize("cuda", [False, True])
def test_profile_falls_back_to_ci_when_ci_is_set(clean_env, ci, cuda):
    set_hardware(clean_env, cuda=cuda)
    clean_env.setenv("CI", ci)
    assert profile() == "ci"


@pytest.mark.parametrize("cuda, expected", [(False, "cpu"), (True, "gpu")])
def test_profile_detects_hardware_without_env(clean_env, cuda, expected):
    set_hardware(clean_env, cuda=cuda)
    assert profile() == expected


@pytest.mark.parametrize("ci", ["false", "0", ""])
def test_profile_ci_false_means_detect(clean_env, ci):
    set_hardware(clean_env, cuda=False)
    clean_env.setenv("CI", ci)
    assert profile() == "cpu"


def test_profile_empty_env_means_detect(clean_env):
    set_hardware(clean_env, cuda=True)
    clean_env.setenv("GPTCOURSE_PROFILE", "  ")
    assert profile() == "gpu"


# --------------------------------------------------------------------------------------
# pick()
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("active, expected", [("ci", 1), ("cpu", 2), ("gpu", 3)])
def test_pick_returns_the_active_profiles_value(clean_env, active, expected):
    clean_env.setenv("GPTCOURSE_PROFILE", active)
    assert pick(ci=1, cpu=2, gpu=3) == expected


@pytest.mark.parametrize(
    "active, kwargs, expected",
    [
        ("gpu", dict(ci=1, cpu=2), 2),  # gpu -> cpu
        ("gpu", dict(ci=1), 1),  # gpu -> cpu -> ci
        ("gpu", dict(ci=1, gpu=3), 3),
        ("cpu", dict(ci=1), 1),  # cpu -> ci
        ("cpu", dict(ci=1, gpu=3), 1),  # a gpu value is never used on cpu
        ("ci", dict(ci=1, gpu=3), 1),
    ],
)
def test_pick_fallbacks(clean_env, active, kwargs, expected):
    clean_env.setenv("GPTCOURSE_PROFILE", active)
    assert pick(**kwargs) == expected


def test_pick_none_is_a_value_not_a_missing_one(clean_env):
    clean_env.setenv("GPTCOURSE_PROFILE", "gpu")
    assert pick(ci=1, cpu=2, gpu=None) is None
    clean_env.setenv("GPTCOURSE_PROFILE", "cpu")
    assert pick(ci=1, cpu=None) is None


def test_pick_returns_the_same_object(clean_env):
    clean_env.setenv("GPTCOURSE_PROFILE", "cpu")
    value = {"steps": 10}
    assert pick(ci={}, cpu=value) is value


def test_pick_uses_detection(clean_env):
    set_hardware(clean_env, cuda=True)
    assert pick(ci="a", cpu="b", gpu="c") == "c"


def test_pick_requires_keywords_and_ci():
    with pytest.raises(TypeError):
        pick(1, 2, 3)  # type: ignore[misc]
    with pytest.raises(TypeError):
        pick(cpu=2)  # type: ignore[call-arg]


def test_pick_propagates_a_bad_profile(clean_env):
    clean_env.setenv("GPTCOURSE_PROFILE", "huge")
    with pytest.raises(ValueError, match="GPTCOURSE_PROFILE"):
        pick(ci=1, cpu=2)


# --------------------------------------------------------------------------------------
# device()
# --------------------------------------------------------------------------------------


def test_device_is_cpu_without_accelerators(clean_env):
    set_hardware(clean_env, cuda=False, mps=False)
    assert device() == "cpu"


def test_device_on_this_machine_is_a_valid_torch_device(clean_env):
    name = device()
    assert name in ("cuda", "mps", "cpu")
    torch.empty(1, device=name)  # usable as a torch device
    if not torch.cuda.is_available():
        assert name in ("mps", "cpu")


def test_device_prefers_cuda_then_mps(clean_env):
    set_hardware(clean_env, cuda=True, mps=True)
    assert device() == "cuda"
    set_hardware(clean_env, cuda=False, mps=True)
    assert device() == "mps"


@pytest.mark.parametrize("raw", ["cpu", "CPU", " cpu "])
def test_device_env_cpu_is_honoured(clean_env, raw):
    set_hardware(clean_env, cuda=True)
    clean_env.setenv("GPTCOURSE_DEVICE", raw)
    assert device() == "cpu"


def test_device_prefer_argument_wins_over_env(clean_env):
    set_hardware(clean_env, cuda=True)
    clean_env.setenv("GPTCOURSE_DEVICE", "cuda")
    assert device("cpu") == "cpu"


def test_device_with_index_is_kept(clean_env):
    set_hardware(clean_env, cuda=True)
    assert device("cuda:1") == "cuda:1"


@pytest.mark.parametrize("wanted", ["cuda", "cuda:0", "mps"])
def test_device_unavailable_raises(clean_env, wanted):
    set_hardware(clean_env, cuda=False, mps=False)
    clean_env.setenv("GPTCOURSE_DEVICE", wanted)
    with pytest.raises(RuntimeError) as info:
        device()
    assert wanted in str(info.value) and "not available" in str(info.value)


@pytest.mark.parametrize("wanted", ["tpu", "gpu", "xla", "cuda0"])
def test_device_unknown_raises_naming_the_options(clean_env, wanted):
    clean_env.setenv("GPTCOURSE_DEVICE", wanted)
    with pytest.raises(ValueError) as info:
        device()
    msg = str(info.value)
    assert wanted in msg
    for name in ("cuda", "mps", "cpu"):
        assert name in msg


def test_describe_reports_profile_and_device(clean_env):
    set_hardware(clean_env, cuda=False, mps=False)
    clean_env.setenv("GPTCOURSE_PROFILE", "ci")
    info = profiles.describe()
    assert info["profile"] == "ci" and info["device"] == "cpu"
    assert info["torch"] == torch.__version__


def test_online_respects_the_offline_switches(monkeypatch):
    from gptcourse.profiles import online

    monkeypatch.setenv("GPTCOURSE_OFFLINE", "1")
    assert online() is False


def test_online_is_false_when_nothing_listens():
    import socket

    from gptcourse.profiles import online

    with socket.socket() as s:  # a port that was free a moment ago: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert online("127.0.0.1", port, timeout=1.0) is False


def test_cpu_threads_leaves_busy_cores_alone(monkeypatch):
    import os

    from gptcourse.profiles import cpu_threads

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(os, "getloadavg", lambda: (2.6, 0.0, 0.0))
    assert cpu_threads() == 5  # 8 cores, 3 busy
    monkeypatch.setattr(os, "getloadavg", lambda: (30.0, 0.0, 0.0))
    assert cpu_threads() == 1  # never fewer than one
