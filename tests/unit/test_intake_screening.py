"""Screening word list and the in-memory attempt limiter."""

from __future__ import annotations

from services.intake.screening import AttemptLimiter, Screen


def test_bundled_list_holds_abuse_and_threats_and_ignores_ordinary_complaints() -> None:
    screen = Screen.load()
    assert screen.reasons("物业的狗官不管事") == ["abusive_language"]
    assert screen.reasons("再不解决我就炸掉你们的办公楼") == ["threat"]
    assert screen.reasons("小区门口夜间施工噪音扰民，希望处理。") == []


def test_spacing_punctuation_and_full_width_do_not_hide_a_term() -> None:
    screen = Screen.parse(["abusive_language\t王八蛋", "# comment", "", "混蛋"])
    assert screen.reasons("这些王 八·蛋") == ["abusive_language"]
    assert screen.reasons("ＡＢ混蛋") == ["abusive_language"]
    assert Screen.parse(["slander\t全家死光"]).reasons("祝你全家死光") == ["slander"]


def test_limiter_blocks_after_the_limit_and_forgets_after_the_window() -> None:
    now = [0.0]
    limiter = AttemptLimiter(3, 60.0, clock=lambda: now[0])
    for _ in range(3):
        assert not limiter.blocked("code")
        limiter.record("code")
    assert limiter.blocked("code")
    assert not limiter.blocked("other")
    now[0] = 60.5
    assert not limiter.blocked("code")
