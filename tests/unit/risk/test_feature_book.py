"""The model's feature state (``risk_features.FeatureBook``) as docs/risk.md describes it:
bounded maps that keep the most recently seen keys, decayed window counts, declines fed
back by ``outcome``, distinct instruments / devices / users from hashed slots, the hour
against the user's habit, and ``features`` reading without writing."""

from __future__ import annotations

import math

import pytest

from orchestrator.risk_features import FEATURES, FeatureBook, Signals

F = {name: i for i, name in enumerate(FEATURES)}
MIDNIGHT = 1_799_971_200.0  # a UTC midnight (divisible by 86,400), so hours read plainly
T0 = MIDNIGHT + 20 * 3600.0  # 20:00 UTC
L1, L2, L3 = math.log1p(1), math.log1p(2), math.log1p(3)


def sig(user: str = "u1", at: float = T0, amount: float = 10.0, instrument: str | None = "tok_1",
        device: str | None = "dev_1", **kw: object) -> Signals:
    return Signals(user_id=user, amount_base=amount, country="CN", at_s=at, instrument_key=instrument,
                   device_id=device, **kw)  # type: ignore[arg-type]


def feature(book: FeatureBook, s: Signals, name: str) -> float:
    return book.features(s)[F[name]]


def test_the_vector_has_one_value_per_feature_for_known_and_unknown_keys() -> None:
    book = FeatureBook()
    assert len(book.features(sig())) == len(FEATURES) == 49
    book.record(sig())
    assert len(book.features(sig(at=T0 + 5))) == len(FEATURES)
    assert len(book.features(sig(instrument=None, device=None, at=T0 + 5))) == len(FEATURES)


# -- bounds ------------------------------------------------------------------------------


def test_many_distinct_users_stay_within_the_bounds() -> None:
    book = FeatureBook(max_users=1000, max_instruments=1000, max_devices=500, max_pending=200)
    for n in range(20_000):
        book.record(sig(user=f"u{n}", instrument=f"tok_{n}", device=f"dev_{n}", at=T0 + n / 100), f"r{n}")
        sizes = book.sizes()
        assert sizes["users"] <= 1000 and sizes["instruments"] <= 1000
        assert sizes["devices"] <= 500 and sizes["pending"] <= 200
    # The newest user is known (one recharge recorded); the first one was dropped.
    at = T0 + 300
    assert feature(book, sig(user="u19999", instrument="tok_19999", device="dev_19999", at=at),
                   "user_recharges") == pytest.approx(L1)
    assert feature(book, sig(user="u0", instrument="tok_0", device="dev_0", at=at), "user_first_recharge") == 1.0
    assert feature(book, sig(user="u0", instrument="tok_0", device="dev_0", at=at), "instrument_new") == 1.0
    assert feature(book, sig(user="u0", instrument="tok_0", device="dev_0", at=at), "device_new") == 1.0


def test_a_user_seen_often_is_kept_while_distinct_users_pass_through() -> None:
    book = FeatureBook(max_users=100)
    at = T0
    for n in range(5000):
        at += 1
        book.record(sig(user=f"u{n}", at=at))
        if n % 20 == 0:
            book.record(sig(user="regular", at=at))
    assert book.sizes()["users"] <= 100
    assert feature(book, sig(user="regular", at=at + 1), "user_recharges") == pytest.approx(math.log1p(250))


# -- decayed windows ----------------------------------------------------------------------


def test_a_burst_of_five_in_a_minute_counts_about_five_then_fades() -> None:
    book = FeatureBook()
    for k in range(5):
        book.record(sig(at=T0 + k))
    now = sig(at=T0 + 4)
    assert feature(book, now, "user_count_1m") == pytest.approx(math.log1p(5), abs=0.05)
    assert feature(book, now, "user_count_10m") == pytest.approx(math.log1p(5), abs=0.01)
    assert feature(book, now, "user_amount_10m") == pytest.approx(math.log1p(50), abs=0.01)
    hour_later = sig(at=T0 + 4 + 3600)
    assert feature(book, hour_later, "user_count_1m") < 1e-6
    assert feature(book, hour_later, "user_count_10m") < 0.02
    assert feature(book, hour_later, "user_count_1h") == pytest.approx(math.log1p(5 / math.e), abs=0.01)
    assert feature(book, hour_later, "user_count_24h") == pytest.approx(math.log1p(5), abs=0.05)
    assert feature(book, hour_later, "since_last_s") == pytest.approx(math.log1p(3600))


def test_recording_after_a_pause_decays_the_old_count_before_adding() -> None:
    book = FeatureBook()
    for k in range(5):
        book.record(sig(at=T0 + k))
    book.record(sig(at=T0 + 4 + 3600))
    assert feature(book, sig(at=T0 + 4 + 3600), "user_count_1m") == pytest.approx(L1, abs=1e-6)


# -- outcomes -----------------------------------------------------------------------------


def test_a_declined_outcome_counts_against_the_user_instrument_and_device() -> None:
    book = FeatureBook()
    book.record(sig(at=T0), "r1")
    now = sig(at=T0 + 30)
    for name in ("user_declines_1h", "user_declines_24h", "instrument_declines_24h", "device_declines_1h"):
        assert feature(book, now, name) == 0.0
    book.outcome("r1", declined=True, at_s=T0 + 10)
    assert feature(book, now, "user_declines_1h") == pytest.approx(L1, abs=0.01)
    assert feature(book, now, "user_declines_24h") == pytest.approx(L1, abs=0.001)
    assert feature(book, now, "instrument_declines_24h") == pytest.approx(L1, abs=0.001)
    assert feature(book, now, "device_declines_1h") == pytest.approx(L1, abs=0.01)
    assert 0 < feature(book, now, "user_decline_ratio_24h") < 0.5
    # Another user on the same card sees its decline too.
    assert feature(book, sig(user="u2", at=T0 + 30), "instrument_declines_24h") == pytest.approx(L1, abs=0.001)


def test_a_success_a_repeat_or_an_unknown_recharge_counts_no_decline() -> None:
    book = FeatureBook()
    book.record(sig(at=T0), "r1")
    book.record(sig(at=T0 + 1), "r2")
    book.outcome("r1", declined=False, at_s=T0 + 5)
    book.outcome("r1", declined=True, at_s=T0 + 6)  # already ended: forgotten
    book.outcome("nope", declined=True, at_s=T0 + 6)
    assert feature(book, sig(at=T0 + 10), "user_declines_1h") == 0.0
    assert book.sizes()["pending"] == 1  # r2 still waits for its outcome
    book.outcome("r2", declined=True, at_s=T0 + 7)
    book.outcome("r2", declined=True, at_s=T0 + 8)
    assert feature(book, sig(at=T0 + 10), "user_declines_1h") == pytest.approx(L1, abs=0.01)
    assert book.sizes()["pending"] == 0


def test_a_blocked_recharge_counts_against_the_user_not_as_activity() -> None:
    book = FeatureBook()
    book.blocked(sig(at=T0))
    book.blocked(sig(at=T0 + 1))
    now = sig(at=T0 + 2)
    assert feature(book, now, "user_blocked_24h") == pytest.approx(L2, abs=0.001)
    assert feature(book, now, "user_count_1m") == 0.0
    assert feature(book, now, "user_recharges") == 0.0
    assert feature(book, now, "user_first_recharge") == 1.0
    assert book.sizes()["instruments"] == 0 and book.sizes()["devices"] == 0


# -- reading does not write -------------------------------------------------------------


def test_features_change_nothing() -> None:
    book = FeatureBook()
    for k in range(10):
        book.record(sig(instrument=f"tok_{k % 3}", device=f"dev_{k % 2}", at=T0 + 60 * k), f"r{k}")
    book.outcome("r3", True, T0 + 600)
    sizes = book.sizes()
    probes = [sig(at=T0 + 700), sig(user="stranger", instrument="tok_new", device="dev_new", at=T0 + 700),
              sig(instrument="tok_9", device="dev_9", ip_country="PH", at=T0 + 700)]
    for s in probes:
        assert book.features(s) == book.features(s)
    assert book.sizes() == sizes


def test_reading_before_each_record_leaves_the_same_state_as_not_reading() -> None:
    read, unread = FeatureBook(), FeatureBook()
    stream = [sig(user=f"u{k % 4}", instrument=f"tok_{k % 5}", device=f"dev_{k % 3}", amount=5.0 + k,
                  at=T0 + 37 * k, ip_country="PH" if k % 2 else None) for k in range(60)]
    for k, s in enumerate(stream):
        read.features(s)
        read.features(sig(user="stranger", instrument="tok_x", device="dev_x", at=s.at_s))
        read.record(s, f"r{k}")
        unread.record(s, f"r{k}")
    for s in stream[-4:]:
        later = sig(user=s.user_id, instrument=s.instrument_key, device=s.device_id, at=T0 + 5000)
        assert read.features(later) == pytest.approx(unread.features(later), rel=1e-12, abs=1e-12)
    assert read.sizes() == unread.sizes()


# -- distinct instruments, devices and users --------------------------------------------


def test_distinct_instruments_and_devices_per_user() -> None:
    book = FeatureBook()
    for k, (instrument, device) in enumerate([("tok_1", "dev_1"), ("tok_2", "dev_1"), ("tok_3", "dev_2"),
                                              ("tok_1", "dev_2"), ("tok_2", "dev_1")]):
        book.record(sig(instrument=instrument, device=device, at=T0 + k))
    now = sig(at=T0 + 10)
    assert feature(book, now, "user_instruments") == pytest.approx(L3)
    assert feature(book, now, "user_devices") == pytest.approx(L2)
    assert feature(book, now, "user_countries") == pytest.approx(L1)
    assert feature(book, now, "user_recharges") == pytest.approx(math.log1p(5))
    # tok_1 / dev_1 have one user each and, from dev_1, two instruments were used.
    assert feature(book, now, "instrument_users") == pytest.approx(L1)
    assert feature(book, now, "device_users") == pytest.approx(L1)
    assert feature(book, now, "device_instruments") == pytest.approx(L2)
    assert feature(book, sig(instrument="tok_3", device="dev_1", at=T0 + 10), "device_instruments") == \
        pytest.approx(L3)  # this one included


def test_new_instrument_device_and_country_flags() -> None:
    book = FeatureBook()
    stranger = sig(user="fresh", instrument="tok_x", device="dev_x", at=T0)
    # A user never seen: nothing is "new for the user", everything is new to the book.
    for name in ("new_instrument_for_user", "new_device_for_user", "new_country_for_user"):
        assert feature(book, stranger, name) == 0.0
    assert feature(book, stranger, "instrument_new") == 1.0
    assert feature(book, stranger, "device_new") == 1.0 and feature(book, stranger, "device_given") == 1.0
    book.record(sig(at=T0))
    same = sig(at=T0 + 5)
    for name in ("new_instrument_for_user", "new_device_for_user", "new_country_for_user",
                 "instrument_new", "device_new"):
        assert feature(book, same, name) == 0.0, name
    assert feature(book, sig(instrument="tok_2", at=T0 + 5), "new_instrument_for_user") == 1.0
    assert feature(book, sig(device="dev_2", at=T0 + 5), "new_device_for_user") == 1.0
    assert feature(book, sig(device="dev_2", at=T0 + 5), "device_new") == 1.0
    assert feature(book, sig(device=None, at=T0 + 5), "new_device_for_user") == 0.0
    assert feature(book, sig(device=None, at=T0 + 5), "device_given") == 0.0
    away = Signals(user_id="u1", amount_base=10.0, country="PH", at_s=T0 + 5, instrument_key="tok_1",
                   device_id="dev_1", ip_country="MY")
    assert feature(book, away, "new_country_for_user") == 1.0
    assert feature(book, away, "ip_country_mismatch") == 1.0
    assert feature(book, away, "ip_country_new_for_user") == 1.0
    assert feature(book, sig(at=T0 + 5, ip_country="CN"), "ip_country_new_for_user") == 0.0


def test_a_user_adding_instruments_within_the_hour_is_counted() -> None:
    book = FeatureBook()
    for k in range(4):
        book.record(sig(instrument=f"tok_{k}", at=T0 + k))
    # The first instrument comes with the first recharge: three were added after it.
    assert feature(book, sig(at=T0 + 5), "user_new_instruments_1h") == pytest.approx(L3, abs=0.01)


def test_users_per_device_count_each_user_once_and_this_one_included() -> None:
    book = FeatureBook()
    for k, user in enumerate(["a", "b", "c", "a", "b"]):
        book.record(sig(user=user, instrument=f"tok_{user}", device="farm", at=T0 + k))
    at = T0 + 10
    assert feature(book, sig(user="a", instrument="tok_a", device="farm", at=at), "device_users") == \
        pytest.approx(L3)
    assert feature(book, sig(user="d", instrument="tok_d", device="farm", at=at), "device_users") == \
        pytest.approx(math.log1p(4))
    assert feature(book, sig(user="d", instrument="tok_d", device="farm", at=at), "device_count_10m") == \
        pytest.approx(math.log1p(5), abs=0.05)


def test_users_per_device_past_the_slots_count_at_least_the_slots_and_at_most_the_truth() -> None:
    book = FeatureBook()
    for k in range(10):
        book.record(sig(user=f"u{k}", instrument=f"tok_{k}", device="farm", at=T0 + k))
    users = feature(book, sig(user="u10", instrument="tok_10", device="farm", at=T0 + 20), "device_users")
    assert math.log1p(7) <= users <= math.log1p(11) + 1e-9  # 6 slots + this one, up to 10 + this one


# The hashed "distinct" slots saturate rather than grow: with more keys in rotation than slots,
# a key evicted and coming back must not be counted again (round-robin counting once did).
def test_keys_in_rotation_are_not_counted_again_each_time_they_come_back() -> None:
    book = FeatureBook()
    for k in range(50):  # five devices and seven tokens, one recharge an hour, in turn
        book.record(sig(instrument=f"tok_{k % 7}", device=f"dev_{k % 5}", at=T0 + 3600 * k))
    now = sig(instrument="tok_0", device="dev_0", at=T0 + 3600 * 50)
    farm = FeatureBook()
    for k in range(80):  # eight users taking turns on one device
        farm.record(sig(user=f"u{k % 8}", instrument=f"tok_{k % 8}", device="farm", at=T0 + 60 * k))
    on_farm = sig(user="u0", instrument="tok_0", device="farm", at=T0 + 60 * 80)
    assert feature(book, now, "user_devices") <= math.log1p(5) + 1e-9  # today: log1p(50)
    assert feature(book, now, "user_instruments") <= math.log1p(7) + 1e-9  # today: log1p(50)
    assert feature(farm, on_farm, "device_users") <= math.log1p(8) + 1e-9  # today: log1p(81)


def test_users_per_instrument() -> None:
    book = FeatureBook()
    for k, user in enumerate(["a", "b", "a"]):
        book.record(sig(user=user, instrument="stolen", device=f"dev_{user}", at=T0 + k))
    assert feature(book, sig(user="a", instrument="stolen", at=T0 + 5), "instrument_users") == pytest.approx(L2)
    assert feature(book, sig(user="c", instrument="stolen", at=T0 + 5), "instrument_users") == pytest.approx(L3)


# -- the hour against the habit ----------------------------------------------------------


def test_the_hour_off_habit_is_near_zero_at_the_usual_hour_and_high_twelve_hours_away() -> None:
    book = FeatureBook()
    day = 86_400.0
    for k in range(10):
        book.record(sig(at=T0 + k * day + 60 * (k % 3)))  # 20:00 to 20:02, ten days running
    usual, opposite = sig(at=T0 + 10 * day), sig(at=T0 + 10 * day - 12 * 3600)
    assert feature(book, usual, "hour_habit_strength") == pytest.approx(1.0, abs=0.01)
    assert feature(book, usual, "hour_off_habit") < 0.01
    assert feature(book, opposite, "hour_off_habit") > 0.95
    six_hours = feature(book, sig(at=T0 + 10 * day + 6 * 3600), "hour_off_habit")
    assert 0.4 < six_hours < 0.6


def test_no_habit_before_three_recharges_nor_with_hours_spread_around_the_clock() -> None:
    book = FeatureBook()
    book.record(sig(at=T0))
    book.record(sig(at=T0 + 86_400))
    assert feature(book, sig(at=T0 + 2 * 86_400 - 12 * 3600), "hour_off_habit") == 0.0
    spread = FeatureBook()
    for h in range(24):
        spread.record(sig(at=MIDNIGHT + h * 3600))
    now = sig(at=MIDNIGHT + 30 * 3600)
    assert feature(spread, now, "hour_habit_strength") < 0.01
    assert feature(spread, now, "hour_off_habit") < 0.01
