"""Benign test plugin: datetime, zoneinfo (Europe/Berlin), calendar and time."""

import calendar
import time
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo


class Plugin:
    def handle(self, request):
        berlin = ZoneInfo("Europe/Berlin")
        summer = datetime(2024, 7, 1, 12, 0, tzinfo=timezone.utc).astimezone(berlin)
        winter = datetime(2024, 1, 15, 12, 0, tzinfo=timezone.utc).astimezone(berlin)
        new_york = datetime(2024, 3, 10, 12, 0, tzinfo=timezone.utc).astimezone(
            ZoneInfo("America/New_York")
        )
        parsed = datetime.strptime(request["local"], "%Y-%m-%d %H:%M").replace(tzinfo=berlin)
        return {
            "summer": summer.isoformat(),
            "summer_offset": summer.utcoffset().total_seconds(),
            "summer_name": summer.tzname(),
            "winter_offset": winter.utcoffset().total_seconds(),
            "new_york": new_york.isoformat(),
            "parsed": parsed.isoformat(),
            "weekday": date(2024, 2, 29).strftime("%A"),
            "leap": calendar.isleap(2024),
            "days": (date(2025, 1, 1) - date(2024, 1, 1)).days,
            "plus": (datetime(2024, 12, 31, 23, 0) + timedelta(hours=2)).isoformat(),
            "clock_moves": time.time() > 1.7e9 and time.monotonic() >= 0,
        }
