"""The search space, written as Hydra's Optuna sweeper reads it, so its configs carry over.

- ``choice(a, b, c)`` and ``a,b,c``: categorical.
- ``interval(lo, hi)``: uniform float (Hydra's parser makes both ends floats);
  ``tag(log, interval(lo, hi))`` log-uniform; ``tag(int, interval(lo, hi))`` integers.
- ``range(start, stop, step)``: the values Hydra's basic sweeper would run, ``stop``
  excluded, as in Python (hydra-optuna-sweeper 1.3 also sampled ``stop`` itself);
  ``shuffle(range(...))`` is categorical.
- Anything else is a fixed value, passed to every trial.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override, RangeSweep, Transformer
from hydra.errors import OverrideParseException
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from rnnsweep.errors import Refused
from rnnsweep.text import first_line


class SpaceError(Refused):
    """A sweep override the search space cannot hold; one line naming it."""


@dataclass
class Space:
    distributions: dict[str, BaseDistribution]
    fixed: dict[str, str]  # key (with its +/++ prefix) -> value as written

    def overrides(self, params: Mapping[str, Any]) -> tuple[str, ...]:
        """A trial's overrides: its sampled values, then the fixed ones."""
        sampled = tuple(f"{key}={_text(params[key])}" for key in self.distributions)
        return sampled + tuple(f"{key}={value}" for key, value in self.fixed.items())

    def grid(self) -> dict[str, list[Any]]:
        """Every value of every parameter, for the grid sampler."""
        return {key: _values(key, dist) for key, dist in self.distributions.items()}


def parse(arguments: Sequence[str]) -> Space:
    """``arguments``: ``hydra.sweeper.params`` first, then the command line's (a later
    override of a key wins, as in Hydra's sweeper)."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(arguments))
    except OverrideParseException as exc:
        raise SpaceError(f"cannot parse the search space: {first_line(str(exc))}") from None
    distributions: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for override in parsed:
        key = override.get_key_element()
        distributions.pop(key, None)
        fixed.pop(key, None)
        if override.is_sweep_override():
            distributions[key] = distribution(override)
        else:
            fixed[key] = override.get_value_element_as_str()
    return Space(distributions, fixed)


def distribution(override: Override) -> BaseDistribution:
    key, sweep = override.get_key_element(), override.value()
    if override.is_choice_sweep() or (isinstance(sweep, RangeSweep) and sweep.shuffle):
        return CategoricalDistribution(_choices(override))
    if isinstance(sweep, RangeSweep):
        return _range(key, sweep)
    if isinstance(sweep, IntervalSweep):
        return _interval(key, sweep)
    raise SpaceError(f"{override.input_line}: not a search space; allowed: choice(...), "
                     "a,b,c, range(...), interval(...), tag(log, interval(...))")


def _choices(override: Override) -> list[Any]:
    choices = list(override.sweep_iterator(transformer=Transformer.encode))
    for value in choices:
        if not isinstance(value, str | int | float | bool):
            raise SpaceError(f"{override.input_line}: a choice must be a string, number or "
                             f"boolean, got {value!r}")
    return choices


def _range(key: str, sweep: RangeSweep) -> BaseDistribution:
    start, stop, step = sweep.start, sweep.stop, sweep.step
    if start is None or stop is None:  # Hydra's parser fills both; its type allows None
        raise SpaceError(f"{key}: range(...) needs a start and a stop")
    count = math.ceil((stop - start) / step) if step else 0
    if count < 1:
        raise SpaceError(f"{key}=range({start},{stop},{step}): the range is empty")
    last = start + (count - 1) * step
    if all(isinstance(v, int) for v in (start, stop, step)):
        return IntDistribution(int(start), int(last), step=int(step))
    # A float range's own last value may carry rounding (0.30000000000000004): Optuna's
    # grid is start + k * step either way.
    return FloatDistribution(float(start), float(start) + (count - 1) * float(step),
                             step=float(step))


def _interval(key: str, sweep: IntervalSweep) -> BaseDistribution:
    log, integer = "log" in sweep.tags, "int" in sweep.tags
    start, end = sweep.start, sweep.end
    if start is None or end is None:  # Hydra's parser fills both; its type allows None
        raise SpaceError(f"{key}: interval(...) needs both ends")
    if log and start <= 0:
        raise SpaceError(f"{key}: tag(log, interval({start}, {end})) needs a "
                         "lower end above 0")
    if not start < end:
        raise SpaceError(f"{key}=interval({start}, {end}): the lower end must be "
                         "below the upper")
    if integer:
        return IntDistribution(int(start), int(end), log=log)
    return FloatDistribution(float(start), float(end), log=log)


def _values(key: str, dist: BaseDistribution) -> list[Any]:
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    if isinstance(dist, IntDistribution) and not dist.log:
        return list(range(dist.low, dist.high + 1, dist.step))
    if isinstance(dist, FloatDistribution) and dist.step is not None:
        count = round((dist.high - dist.low) / dist.step) + 1
        return [dist.low + i * dist.step for i in range(count)]
    raise SpaceError(f"{key}: hydra.sweeper.sampler=grid needs discrete values "
                     "(choice(...) or range(...)); an interval has no grid")


def _text(value: Any) -> str:
    """A sampled value as an override's value: Hydra parses it back to the same value."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    return str(value)
