"""A trial's ``config.yaml`` artifact, written by libyaml where PyYAML has it.

``OmegaConf.to_yaml`` makes the plain config an OmegaConf object again and walks it with
PyYAML's pure-Python emitter: a third of a small trial's CPU. This writes the same data,
quoting the strings that OmegaConf quotes (those that would read back as a boolean or a
number), so that ``OmegaConf.load`` reads every value back with its type.
"""

from __future__ import annotations

from typing import Any

import yaml

# YAML 1.1's booleans, which OmegaConf quotes when they are strings (omegaconf._utils).
_BOOLS = frozenset(("y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true",
                    "True", "TRUE", "false", "False", "FALSE", "on", "On", "ON", "off",
                    "Off", "OFF"))


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    pass


def _reads_as_other(text: str) -> bool:
    if text in _BOOLS:
        return True
    for number in (int, float):
        try:
            number(text)
        except ValueError:
            continue
        return True
    return False


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", data,
                                   style="'" if _reads_as_other(data) else None)


_Dumper.add_representer(str, _str)


def config_yaml(container: dict[str, Any]) -> str:
    """``container`` (plain dicts, lists and scalars) as ``OmegaConf.to_yaml`` writes it,
    up to where long strings are folded."""
    text: str = yaml.dump(container, Dumper=_Dumper, default_flow_style=False,
                          allow_unicode=True, sort_keys=False)
    return text
