"""The sidebar's date groups follow the reader's calendar (chatlm.ui.sidebar), and only a time zone
this machine knows is used."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from zoneinfo import ZoneInfo

from chatlm.ui import sidebar

NOW = datetime(2026, 12, 3, 23, 30)  # naive UTC, as stored: 3 December 23:30 UTC


def test_today_and_yesterday_are_the_readers_days() -> None:
    late_yesterday_utc = datetime(2026, 12, 2, 22, 0)
    assert sidebar.group_of(late_yesterday_utc, NOW) == "Yesterday"
    # in Paris (UTC+1) it is already 4 December 00:30, and 2 December 23:00 was "Previous 7 days"
    assert sidebar.group_of(late_yesterday_utc, NOW, ZoneInfo("Europe/Paris")) == "Previous 7 days"
    # in New York (UTC-5) it is 18:30 on the 3rd: 17:00 on the 2nd is yesterday, and so is 21:00
    # on the 2nd (02:00 UTC on the 3rd), which UTC calls today
    assert sidebar.group_of(late_yesterday_utc, NOW, ZoneInfo("America/New_York")) == "Yesterday"
    assert sidebar.group_of(datetime(2026, 12, 3, 2, 0), NOW, ZoneInfo("America/New_York")) == "Yesterday"
    assert sidebar.group_of(datetime(2026, 12, 3, 2, 0), NOW) == "Today"


def test_a_zone_name_the_machine_does_not_know_is_utc() -> None:
    assert sidebar.zone("Europe/Paris") == ZoneInfo("Europe/Paris")
    for bad in ("", "Mars/Olympus", "../../etc/passwd", "/etc/localtime", None, 3, "UTC\x00"):
        assert sidebar.zone(bad) is UTC


def test_the_listing_groups_by_the_zone_given() -> None:
    conv = SimpleNamespace(id=1, title="Late", updated_at=datetime(2026, 12, 3, 23, 10))
    assert sidebar.listing([conv], 1, NOW)["groups"][0]["label"] == "Today"
    after_midnight = datetime(2026, 12, 4, 0, 10)  # UTC: the chat was yesterday
    assert sidebar.listing([conv], 1, after_midnight)["groups"][0]["label"] == "Yesterday"
    paris = sidebar.listing([conv], 1, after_midnight, tz=ZoneInfo("Europe/Paris"))
    assert paris["groups"][0]["label"] == "Today"  # 00:10 and 01:10 on 4 December in Paris
