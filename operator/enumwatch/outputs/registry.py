"""The output registry: ``enumwatch run``'s output flags and the dispatcher loop over it.

Adding an output is its module (an :class:`~enumwatch.outputs.output.Output`), its test, one row
here and one line in the docs (``tests/unit/test_registries.py`` checks each row has all three).
Rows are kept in this order: the flags, the deliveries and the health message follow it.
"""

from __future__ import annotations

from enumwatch.outputs.alertmanager import ALERTMANAGER
from enumwatch.outputs.output import Output
from enumwatch.outputs.webhook import WEBHOOK

#: :attr:`Output.name` -> the output.
OUTPUTS: dict[str, Output] = {
    ALERTMANAGER.name: ALERTMANAGER,
    WEBHOOK.name: WEBHOOK,
}
