"""A rule row as the Finding's ``aggregates`` block: every ES|QL column, bounded in size.

The row is the seed's truth; a Finding is an API object that must stay far below the API server's
size limit, so long value lists are capped here and what was left out is counted in ``omitted``.
This mapping is the sink's, not the API's: :mod:`enumwatch.api.finding` only describes the shape.
"""

from __future__ import annotations

from enumwatch.api.finding import Aggregates
from enumwatch.rule import Row

#: Most values kept per list in ``aggregates`` (the group has at most ``documentsBelow`` events).
MAX_LIST_ITEMS = 50
#: Longest string kept in a list (response messages can be long).
MAX_STRING_CHARS = 256


def _cap(values: tuple[str, ...] | tuple[int, ...], omitted: dict[str, int], key: str) -> list:  # type: ignore[type-arg]
    kept = list(values[:MAX_LIST_ITEMS])
    if len(values) > MAX_LIST_ITEMS:
        omitted[key] = len(values) - MAX_LIST_ITEMS
    return [v[:MAX_STRING_CHARS] if isinstance(v, str) else v for v in kept]


def aggregates_from_row(row: Row) -> Aggregates:
    """Map a rule row to the Finding's ``aggregates`` block, capping long lists."""
    omitted: dict[str, int] = {}
    agents = row.user_agent_values
    return Aggregates(
        documentCount=row.document_count,
        authzAllowCount=row.authz_allow_count,
        authzForbidCount=row.authz_forbid_count,
        statusFailCount=row.status_fail_count,
        successCount=row.success_count,
        notFoundCount=row.not_found_count,
        otherErrorCount=row.other_error_count,
        unknownCount=row.unknown_count,
        verbCountDistinct=row.verb_count_distinct,
        requestURICountDistinct=row.request_uri_count_distinct,
        resourceCountDistinct=row.resource_count_distinct,
        outcomes=_cap(row.outcome_values, omitted, "outcomes"),
        decisions=_cap(row.decision_values, omitted, "decisions"),
        responseCodes=_cap(row.code_values, omitted, "responseCodes"),
        responseMessages=_cap(row.message_values, omitted, "responseMessages"),
        verbs=_cap(row.verb_values, omitted, "verbs"),
        resources=_cap(row.resource_values, omitted, "resources"),
        namespaces=_cap(row.namespace_values, omitted, "namespaces"),
        usernames=_cap(row.username_values, omitted, "usernames"),
        groups=_cap(row.groups_values, omitted, "groups"),
        requestURIs=_cap(row.request_uri_values, omitted, "requestURIs"),
        dataStreamNamespaces=_cap(
            row.data_stream_namespace_values, omitted, "dataStreamNamespaces"
        ),
        # A group of one address (groupBy: sourceIP): its user agents and how many (absent
        # under the seed's grouping, whose Findings stay as they were).
        userAgentCountDistinct=None if agents is None else len(agents),
        userAgents=None if agents is None else _cap(agents, omitted, "userAgents"),
        omitted=omitted,
    )
