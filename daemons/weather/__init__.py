"""``ev-weather`` (EV_W): temperatures at the CPs' locations, told to Central; and
``evweather-sim``, a simulated OpenWeather provider (docs/weather.md)."""

from .cli import main

__all__ = ["main"]
