"""The seed's ``where``, once: the :class:`~enumwatch.match.matcher.Matcher` that tests events in
any shape, and the byte :class:`~enumwatch.match.prefilter.Prefilter` built from it.

Pure (no I/O, no clock): the layer between decoding (:mod:`enumwatch.audit`) and the rule.
"""

from enumwatch.match.matcher import Matcher
from enumwatch.match.prefilter import Prefilter

__all__ = ["Matcher", "Prefilter"]
