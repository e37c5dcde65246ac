"""Amount suggestions (SPEC 22): the pure model, fed recharges and asked at given times."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config import parse
from orchestrator.clock import VirtualClock
from orchestrator.errors import PricingError
from orchestrator.pricing import RateBook
from orchestrator.suggestion_service import SuggestionService
from orchestrator.suggestions import Settings, SuggestionModel, default_amounts

DAY = 86_400.0
T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC).timestamp()
CNY = {"CNY": (3000, 6800, 9800)}


def model(**kw: object) -> SuggestionModel:
    return SuggestionModel(Settings(**{"defaults": CNY, "cohort_min": 5.0, **kw}))  # type: ignore[arg-type]


def amounts(m: SuggestionModel, user: str, now: float, *, country: str | None = "CN", currency: str = "CNY",
            limits: tuple[int, int] | None = None) -> list[int]:
    return [s.amount_minor for s in m.suggest(user, country, currency, now, limits=limits).amounts]


@dataclass(frozen=True)
class Past:
    amount_minor: int
    currency: str
    country: str
    created_at: float


def test_a_user_who_always_buys_one_amount_gets_it_first() -> None:
    m = model()
    for i in range(12):
        m.observe("u1", "CN", "CNY", 6800, T0 + i * 3 * DAY)
    got = m.suggest("u1", "CN", "CNY", T0 + 40 * DAY)
    assert got.basis == "history"
    assert got.amounts[0].amount_minor == 6800
    assert got.amounts[0].score > 0.8


def test_the_habit_outweighs_a_single_odd_recharge_once_the_moment_has_passed() -> None:
    m = model()
    for i in range(10):
        m.observe("u1", "CN", "CNY", 3000, T0 + i * 2 * DAY)
    m.observe("u1", "CN", "CNY", 64800, T0 + 21 * DAY)
    assert amounts(m, "u1", T0 + 25 * DAY)[0] == 3000


def test_a_pk_countdown_is_one_choice_and_does_not_wash_out_the_habit() -> None:
    def after(gap_s: float) -> list[int]:
        m = model()
        for i in range(10):
            m.observe("u1", "CN", "CNY", 19800, T0 + i * 2 * DAY)
        at = T0 + 30 * DAY
        for j in range(10):
            m.observe("u1", "CN", "CNY", 600, at + j * gap_s)
        return amounts(m, "u1", at + 10 * gap_s + DAY)

    assert after(20) == [19800, 600]  # ten taps in a countdown
    assert after(3 * DAY)[0] == 600  # ten separate choices: the habit has changed


def test_a_payday_users_larger_amount_comes_up_near_payday() -> None:
    m = model()
    start = dt.datetime(2026, 1, 1, 20, tzinfo=dt.UTC)
    for month in range(5):
        first = start.replace(month=1 + month)
        for day in (2, 6, 10, 18, 22, 26):  # the small habit, spread over the month
            m.observe("u1", "CN", "CNY", 3000, first.replace(day=day).timestamp())
        m.observe("u1", "CN", "CNY", 32800, first.replace(day=15).timestamp())  # payday: the 15th
    june = start.replace(month=6)

    def score(day: int) -> dict[int, float]:
        return {s.amount_minor: s.score for s in m.suggest("u1", "CN", "CNY", june.replace(day=day).timestamp()).amounts}

    # Mild on purpose: the weights tuned on the generator's paydays (bench/results/suggestions.md).
    assert score(15)[32800] > 3 * score(4)[32800]
    assert amounts(m, "u1", june.replace(day=4).timestamp()) == [3000, 32800]


def test_a_new_user_gets_what_their_country_buys() -> None:
    m = model()
    for i in range(30):
        m.observe(f"cn{i}", "CN", "CNY", 3000 if i % 3 else 600, T0 + i * 3600)
    for i in range(30):
        m.observe(f"my{i}", "MY", "CNY", 9800, T0 + i * 3600)
    got = m.suggest("new", "CN", "CNY", T0 + DAY)
    assert got.basis == "cohort"
    assert [s.amount_minor for s in got.amounts][:2] == [3000, 600]
    assert amounts(m, "new", T0 + DAY, country="MY")[0] == 9800


def test_a_country_with_too_little_data_falls_back_to_the_currency_then_to_the_defaults() -> None:
    m = model(cohort_min=10.0)
    for i in range(4):
        m.observe(f"hk{i}", "HK", "CNY", 600, T0)
    assert m.suggest("new", "HK", "CNY", T0 + 60).basis == "default"
    for i in range(12):
        m.observe(f"cn{i}", "CN", "CNY", 3000, T0)
    got = m.suggest("new", "HK", "CNY", T0 + 60)
    assert (got.basis, got.amounts[0].amount_minor) == ("cohort", 3000)  # the currency over every country


def test_nothing_known_gets_the_configured_defaults_within_the_limits() -> None:
    m = model()
    got = m.suggest("new", "CN", "CNY", T0)
    assert got.basis == "default"
    assert [s.amount_minor for s in got.amounts] == [3000, 6800, 9800]
    assert amounts(m, "new", T0, limits=(500, 7000)) == [3000, 6800]
    # A currency without defaults: round amounts from the smallest it can buy.
    assert amounts(m, "new", T0, currency="PHP", limits=(4100, 1_600_000)) == [5000, 20000, 50000]
    assert m.suggest("new", None, "EUR", T0).amounts == ()


def test_default_amounts_round_up_in_1_2_5_steps() -> None:
    assert default_amounts(None, (500, 200_000)) == [500, 2000, 5000]
    assert default_amounts(None, (701, 1000)) == [1000]
    assert default_amounts((100, 5000), (500, 1000)) == []


def test_an_amount_the_user_can_no_longer_buy_is_never_suggested() -> None:
    m = model()
    for i in range(5):
        m.observe("u1", "CN", "CNY", 300_000, T0 + i * DAY)
    got = amounts(m, "u1", T0 + 6 * DAY, limits=(500, 200_000))
    assert got and 300_000 not in got


def test_users_are_bounded_and_the_least_recently_used_go_first() -> None:
    m = model(max_users=100)
    for i in range(1000):
        m.observe(f"u{i}", "CN", "CNY", 3000, T0 + i)
    assert len(m) == 100
    assert m.suggest("u0", "CN", "CNY", T0 + DAY).basis == "cohort"  # forgotten
    m.suggest("u900", "CN", "CNY", T0 + DAY)  # asked for: now the most recent
    for i in range(1000, 1099):
        m.observe(f"u{i}", "CN", "CNY", 3000, T0 + i)
    assert m.suggest("u900", "CN", "CNY", T0 + DAY).basis == "history"
    assert m.suggest("u901", "CN", "CNY", T0 + DAY).basis == "cohort"


def test_amounts_per_user_are_bounded_and_the_habit_survives() -> None:
    m = model(max_amounts=4)
    for i in range(200):
        m.observe("u1", "CN", "CNY", 6800 if i % 2 else 100 + i, T0 + i * DAY)
    assert m.amounts_of("u1") == 4
    assert amounts(m, "u1", T0 + 201 * DAY)[0] == 6800
    m.configure(Settings(defaults=CNY, max_amounts=2))
    assert m.amounts_of("u1") == 2 and amounts(m, "u1", T0 + 201 * DAY)[0] == 6800


def test_loading_a_history_again_does_not_count_it_twice_in_the_cohort() -> None:
    once, twice = model(), model()
    history = [Past(3000 if i % 4 else 9800, "CNY", "CN", T0 + i * DAY) for i in range(20)]
    once.load("u1", history, T0 + 30 * DAY)
    for _ in range(2):
        twice.load("u1", history, T0 + 30 * DAY)
    assert once.suggest("new", "CN", "CNY", T0 + 31 * DAY) == twice.suggest("new", "CN", "CNY", T0 + 31 * DAY)
    assert once.loaded_at("u1") == T0 + 30 * DAY and once.country_of("u1") == "CN"
    assert once.suggest("u1", None, "CNY", T0 + 31 * DAY).amounts[0].amount_minor == 3000


def test_a_user_known_only_through_a_success_elsewhere_is_not_made_up() -> None:
    m = model()
    m.observe("u1", "CN", "CNY", 6800, T0, create=False)
    assert m.loaded_at("u1") is None and len(m) == 0


def test_the_same_recharges_give_the_same_suggestions() -> None:
    def run() -> list[object]:
        m = model()
        for i in range(300):
            m.observe(f"u{i % 17}", "CN", "CNY", (3000, 6800, 600, 19800)[(i * 7) % 4], T0 + i * 997.0)
        return [m.suggest(f"u{i}", "CN", "CNY", T0 + 4 * DAY) for i in range(20)]

    assert run() == run()


observation = st.tuples(st.sampled_from(["a", "b", "c"]), st.sampled_from(["CN", "PH"]),
                        st.sampled_from(["CNY", "PHP"]), st.integers(1, 10**9),
                        st.floats(0, 200 * DAY, allow_nan=False))


@settings(max_examples=200, deadline=None)
@given(st.lists(observation, max_size=60), st.sampled_from(["a", "b", "new"]), st.floats(0, 400 * DAY),
       st.integers(1, 5), st.sampled_from([None, (500, 10**6)]))
def test_scores_are_probabilities_of_at_most_k_distinct_positive_amounts(
        seen: list[tuple[str, str, str, int, float]], user: str, later: float, k: int,
        limits: tuple[int, int] | None) -> None:
    m = model(max_amounts=3, max_users=2)
    for uid, country, currency, amount, at in seen:
        m.observe(uid, country, currency, amount, T0 + at)
    got = m.suggest(user, None, "CNY", T0 + later, k, limits)
    listed = [s.amount_minor for s in got.amounts]
    assert len(listed) == len(set(listed)) <= k
    assert all(a > 0 and (limits is None or limits[0] <= a <= limits[1]) for a in listed)
    assert all(0 <= s.score <= 1 for s in got.amounts)
    assert sum(s.score for s in got.amounts) <= 1 + 1e-9
    assert [s.score for s in got.amounts] == sorted((s.score for s in got.amounts), reverse=True)


# -- the use case: read once, again after refresh_s; amounts one can buy ----------------------


class History:
    def __init__(self, past: list[Past]) -> None:
        self.past = past
        self.reads = 0

    async def succeeded_recharges(self, user_id: str, limit: int) -> list[Past]:
        self.reads += 1
        return sorted(self.past, key=lambda p: -p.created_at)[:limit]


def service(history: History, clock: VirtualClock, **suggestions: object) -> SuggestionService:
    cfg = parse({"pricing": {"base_currency": "USD", "rates": {"CNY": 0.1404}},
                 "suggestions": {"refresh_s": 300, **suggestions}}).config
    return SuggestionService(lambda: cfg, history, clock, RateBook(cfg.pricing, clock))  # type: ignore[arg-type]


async def test_a_user_is_read_once_then_again_after_refresh_s() -> None:
    clock = VirtualClock(T0)
    history = History([Past(6800, "CNY", "CN", T0 - i * DAY) for i in range(1, 6)])
    svc = service(history, clock)
    got = await svc.suggest("u1", "CNY")
    assert (got.basis, got.amounts[0].amount_minor, history.reads) == ("history", 6800, 1)
    clock.advance(299)
    await svc.suggest("u1", "CNY")
    assert history.reads == 1
    history.past += [Past(19800, "CNY", "CN", T0 + i) for i in range(0, 3000, 600)]  # seen by another worker
    clock.advance(1)
    got = await svc.suggest("u1", "CNY")
    assert (history.reads, got.amounts[0].amount_minor) == (2, 19800)


async def test_only_amounts_one_can_buy_in_a_currency_that_is_sold() -> None:
    clock = VirtualClock(T0)
    svc = service(History([Past(500_000, "CNY", "CN", T0 - DAY)]), clock)  # 5,000 CNY: over the 2,000 limit
    got = await svc.suggest("u1", "CNY")
    assert got.basis == "history" and 500_000 not in [s.amount_minor for s in got.amounts]
    for currency in ("EUR", "XYZ"):
        with pytest.raises(PricingError) as caught:
            await svc.suggest("u1", currency)
        assert (caught.value.code, caught.value.field) == ("unsupported_currency", "currency")
