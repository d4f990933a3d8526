"""A process's share of every device's rate limit (Admission.set_share), in the compiled core
and the twin alike: 1/N of rps and burst, the burst never below one message."""

from __future__ import annotations

from types import ModuleType

import pytest
from test_admission import admit, batch, core

__all__ = ["core"]  # the fixture, used by name

D2 = ("t1", "d2", "s1", "tok2")  # rps 1, burst 2 in test_admission's registry
D1 = ("t1", "d1", "s1", "tok1")  # the defaults: rps 10, burst 100


def accepted(core: ModuleType, admission: object, now: float, *groups: tuple[str, ...]) -> int:
    b = batch(core, *groups)
    admit(admission, b, now)
    return sum(reason is None for reason in b.reasons())


def test_a_half_share_halves_the_burst_and_the_rate(core: ModuleType) -> None:
    a = core.Admission()
    a.set_share(0.5)
    assert accepted(core, a, 0.0, *[D1] * 60) == 50
    assert accepted(core, a, 1.0, *[D1] * 10) == 5  # 5 tokens a second
    assert a.limits("t1", "d1") == (10.0, 100)  # the configured limits, unscaled


def test_a_share_never_leaves_a_device_less_than_one_message_of_burst(core: ModuleType) -> None:
    a = core.Admission()
    a.set_share(0.1)
    assert accepted(core, a, 0.0, D2, D2) == 1
    assert accepted(core, a, 5.0, D2) == 0  # 0.1 token a second: not yet
    assert accepted(core, a, 10.0, D2) == 1
    a.set_share(1.0)
    assert accepted(core, a, 12.0, D2, D2, D2) == 2


@pytest.mark.parametrize("share", [0.0, -1.0, 1.5, float("nan")])
def test_a_share_outside_0_to_1_is_refused(core: ModuleType, share: float) -> None:
    with pytest.raises(ValueError, match="share must be a number in"):
        core.Admission().set_share(share)
