"""The seed rule in DuckDB SQL: an independent formulation to check enumwatch against.

Shared by the oracle test (tests/unit/test_rule_duckdb.py, which reads raw JSON with the skip
policy) and the benchmark (bench/scan_bench.py, which reads typed columns). Each supplies an
``events`` relation with the columns username, user_groups, level, verb, request_uri, user_agent,
resource, namespace, message, code, decision and ips, followed by ``RULE_SQL``.
"""

RULE_SQL = """
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
HAVING count(DISTINCT request_uri) > 5
   AND count(DISTINCT resource) > 3
   AND count(*) < 50
   AND (count(*) FILTER (outcome = 'authz_forbid') >= 1
        OR count(*) FILTER (outcome = 'authn_authz_failed') >= 1
        OR count(*) FILTER (outcome = 'not_found') >= 3)
ORDER BY source_ip ASC NULLS LAST, user_agent ASC NULLS LAST
"""
