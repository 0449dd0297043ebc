"""The report's text helpers now live in :mod:`rnnsweep.text`, shared with the terminal.

Kept while ``rnnsweep.compare`` still imports them from here (issue 21 owns that file).
"""

from rnnsweep.text import cut, one_line, plain

__all__ = ["cut", "one_line", "plain"]
