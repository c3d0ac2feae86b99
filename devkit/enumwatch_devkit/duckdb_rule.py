"""The seed rule in DuckDB SQL: an independent formulation to check enumwatch against.

Shared by the oracle test (tests/unit/test_rule_duckdb.py, which reads raw JSON with the skip
policy) and the benchmark (bench/scan_bench.py, which reads typed columns). Each supplies an
``events`` relation with the columns username, user_groups, level, verb, request_uri, user_agent,
resource, namespace, message, code, decision and ips, followed by ``RULE_SQL`` (the seed's
thresholds) or :func:`rule_sql` of other thresholds.

Independent of :mod:`enumwatch.query` in everything but the thresholds' meaning: the ``HAVING``
is rendered from :data:`enumwatch.rule.FIRE_CONDITIONS` (the one definition), with this module's
own SQL for each metric (:data:`METRIC_SQL`; a unit test checks every metric has one).
"""

from enumwatch.api.spec import ThresholdsSpec
from enumwatch.rule import FIRE_CONDITIONS, AnyOf, Comparison

#: The DuckDB aggregate each metric of the rule's conditions reads.
METRIC_SQL: dict[str, str] = {
    "document_count": "count(*)",
    "request_uri_count_distinct": "count(DISTINCT request_uri)",
    "resource_count_distinct": "count(DISTINCT resource)",
    "authz_forbid_count": "count(*) FILTER (outcome = 'authz_forbid')",
    "status_fail_count": "count(*) FILTER (outcome = 'authn_authz_failed')",
    "not_found_count": "count(*) FILTER (outcome = 'not_found')",
}


def _condition(c: Comparison | AnyOf, t: ThresholdsSpec) -> str:
    if isinstance(c, AnyOf):
        return "(" + "\n        OR ".join(_condition(d, t) for d in c.conditions) + ")"
    return f"{METRIC_SQL[c.metric]} {c.op} {c.bound(t)}"


def having(t: ThresholdsSpec) -> str:
    """The final ``where`` as DuckDB's ``HAVING`` clause, rendered from the rule's table."""
    return "HAVING " + "\n   AND ".join(_condition(c, t) for c in FIRE_CONDITIONS)


def rule_sql(t: ThresholdsSpec) -> str:
    """The rule (after the ``events`` relation) with the thresholds ``t``."""
    return _RULE_SQL.replace("{having}", having(t))


_RULE_SQL = """
kept AS (
    SELECT *,
        CASE
            WHEN decision = 'allow' THEN 'authz_allow'
            WHEN decision = 'forbid' THEN 'authz_forbid'
            WHEN code IN (401, 403) THEN 'authn_authz_failed'
            WHEN code >= 200 AND code < 300 THEN 'success'
            WHEN code = 404 THEN 'not_found'
            WHEN code IS NULL THEN 'unknown'
            ELSE 'other_error'
        END AS outcome
    FROM events
    WHERE (username IN ('system:anonymous', 'system:unauthenticated')
           OR username IS NULL OR username = '')
      AND level IN ('RequestResponse', 'ResponseComplete', 'Request')
),
by_ip AS (
    -- a multi-valued keyword is a set: each distinct IP is one group; none is the null key
    SELECT *, unnest(CASE WHEN ips IS NULL OR len(ips) = 0 THEN [NULL::VARCHAR]
                          ELSE list_distinct(ips) END) AS source_ip
    FROM kept
)
SELECT
    count(*) AS "Esql.document_count",
    count(*) FILTER (outcome = 'authz_allow') AS "Esql.authz_allow_count",
    count(*) FILTER (outcome = 'authz_forbid') AS "Esql.authz_forbid_count",
    count(*) FILTER (outcome = 'authn_authz_failed') AS "Esql.status_fail_count",
    count(*) FILTER (outcome = 'success') AS "Esql.success_count",
    count(*) FILTER (outcome = 'not_found') AS "Esql.not_found_count",
    count(*) FILTER (outcome = 'other_error') AS "Esql.other_error_count",
    count(*) FILTER (outcome = 'unknown') AS "Esql.unknown_count",
    count(DISTINCT verb) AS "Esql.kubernetes_audit_verb_count_distinct",
    count(DISTINCT request_uri) AS "Esql.kubernetes_audit_requestURI_count_distinct",
    count(DISTINCT resource) AS "Esql.kubernetes_audit_objectRef_resource_count_distinct",
    list_sort(list_distinct(list(outcome))) AS "Esql.kubernetes_audit_outcome_values",
    list_sort(list_distinct(list(decision))) AS "Esql.kubernetes_audit_decision_values",
    list_sort(list_distinct(list(code))) AS "Esql.kubernetes_audit_responseStatus_code_values",
    list_sort(list_distinct(list(message)))
        AS "Esql.kubernetes_audit_responseStatus_message_values",
    list_sort(list_distinct(list(verb))) AS "Esql.kubernetes_audit_verb_values",
    list_sort(list_distinct(list(resource))) AS "Esql.kubernetes_audit_objectRef_resource_values",
    list_sort(list_distinct(list(namespace)))
        AS "Esql.kubernetes_audit_objectRef_namespace_values",
    list_sort(list_distinct(list(username))) AS "Esql.kubernetes_audit_user_username_values",
    list_sort(list_distinct(flatten(list(user_groups))))
        AS "Esql.kubernetes_audit_user_groups_values",
    list_sort(list_distinct(list(request_uri))) AS "Esql.kubernetes_audit_requestURI_values",
    ['default'] AS "Esql.data_stream_namespace_values",
    source_ip AS "kubernetes.audit.sourceIPs",
    user_agent AS "kubernetes.audit.userAgent"
FROM by_ip
GROUP BY source_ip, user_agent
{having}
ORDER BY source_ip ASC NULLS LAST, user_agent ASC NULLS LAST
"""
#: The seed's rule, its thresholds' defaults.
RULE_SQL = rule_sql(ThresholdsSpec())
