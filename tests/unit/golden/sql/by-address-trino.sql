WITH events AS (
  SELECT
    "user"."username" AS username,
    "user"."groups" AS user_groups,
    "level" AS level,
    "verb" AS verb,
    "requestURI" AS request_uri,
    "userAgent" AS user_agent,
    "objectRef"."resource" AS resource,
    "objectRef"."namespace" AS namespace,
    "responseStatus"."message" AS message,
    "responseStatus"."code" AS code,
    ELEMENT_AT("annotations", 'authorization.k8s.io/decision') AS decision,
    "sourceIPs" AS ips
  FROM audit_events
), kept AS (
  SELECT
    *,
    CASE
      WHEN decision = 'allow'
      THEN 'authz_allow'
      WHEN decision = 'forbid'
      THEN 'authz_forbid'
      WHEN code IS NULL
      THEN 'unknown'
      WHEN code IN (401, 403)
      THEN 'authn_authz_failed'
      WHEN code >= 200 AND code < 300
      THEN 'success'
      WHEN code = 404
      THEN 'not_found'
      ELSE 'other_error'
    END AS outcome
  FROM events
  WHERE
    level IN ('Request', 'RequestResponse', 'ResponseComplete')
    AND (
      username IN ('system:anonymous', 'system:unauthenticated')
      OR username IS NULL
      OR username = ''
    )
), by_ip AS (
  SELECT
    *
  FROM kept
  CROSS JOIN UNNEST(CASE
    WHEN ips IS NULL OR CARDINALITY(ips) = 0
    THEN ARRAY[CAST(NULL AS VARCHAR)]
    ELSE ARRAY[ips[CARDINALITY(ips) + 0]]
  END) AS one_ip(source_ip)
), grouped AS (
  SELECT
    source_ip,
    COUNT(*) AS "Esql.document_count",
    COUNT_IF(outcome = 'authz_allow') AS "Esql.authz_allow_count",
    COUNT_IF(outcome = 'authz_forbid') AS "Esql.authz_forbid_count",
    COUNT_IF(outcome = 'authn_authz_failed') AS "Esql.status_fail_count",
    COUNT_IF(outcome = 'success') AS "Esql.success_count",
    COUNT_IF(outcome = 'not_found') AS "Esql.not_found_count",
    COUNT_IF(outcome = 'other_error') AS "Esql.other_error_count",
    COUNT_IF(outcome = 'unknown') AS "Esql.unknown_count",
    COUNT(DISTINCT verb) AS "Esql.kubernetes_audit_verb_count_distinct",
    COUNT(DISTINCT request_uri) AS "Esql.kubernetes_audit_requestURI_count_distinct",
    COUNT(DISTINCT resource) AS "Esql.kubernetes_audit_objectRef_resource_count_distinct",
    COALESCE(
      ARRAY_SORT(ARRAY_AGG(DISTINCT outcome) FILTER(WHERE
        NOT outcome IS NULL)),
      CAST(ARRAY[] AS ARRAY(VARCHAR))
    ) AS "Esql.kubernetes_audit_outcome_values",
    COALESCE(
      ARRAY_SORT(ARRAY_AGG(DISTINCT decision) FILTER(WHERE
        NOT decision IS NULL)),
      CAST(ARRAY[] AS ARRAY(VARCHAR))
    ) AS "Esql.kubernetes_audit_decision_values",
    COALESCE(
      ARRAY_SORT(ARRAY_AGG(DISTINCT code) FILTER(WHERE
        NOT code IS NULL)),
      CAST(ARRAY[] AS ARRAY(BIGINT))
    ) AS "Esql.kubernetes_audit_responseStatus_code_values",
    COALESCE(
      ARRAY_SORT(ARRAY_AGG(DISTINCT message) FILTER(WHERE
        NOT message IS NULL)),
      CAST(ARRAY[] AS ARRAY(VARCHAR))
    ) AS "Esql.kubernetes_audit_responseStatus_message_values",
    COALESCE(
      ARRAY_SORT(ARRAY_AGG(DISTINCT verb) FILTER(WHERE
        NOT verb IS NULL)),
      CAST(ARRAY[] AS ARRAY(VARCHAR))
    ) AS "Esql.kubernetes_audit_verb_values",
    COALESCE(
      ARRAY_SORT(ARRAY_AGG(DISTINCT resource) FILTER(WHERE
        NOT resource IS NULL)),
      CAST(ARRAY[] AS ARRAY(VARCHAR))
    ) AS "Esql.kubernetes_audit_objectRef_resource_values",
    COALESCE(
      ARRAY_SORT(ARRAY_AGG(DISTINCT namespace) FILTER(WHERE
        NOT namespace IS NULL)),
      CAST(ARRAY[] AS ARRAY(VARCHAR))
    ) AS "Esql.kubernetes_audit_objectRef_namespace_values",
    COALESCE(
      ARRAY_SORT(ARRAY_AGG(DISTINCT username) FILTER(WHERE
        NOT username IS NULL)),
      CAST(ARRAY[] AS ARRAY(VARCHAR))
    ) AS "Esql.kubernetes_audit_user_username_values",
    COALESCE(
      ARRAY_SORT(ARRAY_AGG(DISTINCT request_uri) FILTER(WHERE
        NOT request_uri IS NULL)),
      CAST(ARRAY[] AS ARRAY(VARCHAR))
    ) AS "Esql.kubernetes_audit_requestURI_values",
    COUNT(DISTINCT user_agent) AS "Esql.user_agent_count_distinct",
    COALESCE(
      ARRAY_SORT(ARRAY_AGG(DISTINCT user_agent) FILTER(WHERE
        NOT user_agent IS NULL)),
      CAST(ARRAY[] AS ARRAY(VARCHAR))
    ) AS "Esql.user_agent_values"
  FROM by_ip
  GROUP BY
    source_ip
  HAVING
    COUNT(DISTINCT request_uri) > 5
    AND COUNT(DISTINCT resource) > 3
    AND COUNT(*) < 50
    AND (
      COUNT_IF(outcome = 'authz_forbid') >= 1
      OR COUNT_IF(outcome = 'authn_authz_failed') >= 1
      OR COUNT_IF(outcome = 'not_found') >= 3
    )
), names AS (
  SELECT
    source_ip,
    COALESCE(
      ARRAY_SORT(ARRAY_AGG(DISTINCT name) FILTER(WHERE
        NOT name IS NULL)),
      CAST(ARRAY[] AS ARRAY(VARCHAR))
    ) AS names
  FROM by_ip
  CROSS JOIN UNNEST(user_groups) AS one_name(name)
  GROUP BY
    source_ip
)
SELECT
  g."Esql.document_count",
  g."Esql.authz_allow_count",
  g."Esql.authz_forbid_count",
  g."Esql.status_fail_count",
  g."Esql.success_count",
  g."Esql.not_found_count",
  g."Esql.other_error_count",
  g."Esql.unknown_count",
  g."Esql.kubernetes_audit_verb_count_distinct",
  g."Esql.kubernetes_audit_requestURI_count_distinct",
  g."Esql.kubernetes_audit_objectRef_resource_count_distinct",
  g."Esql.kubernetes_audit_outcome_values",
  g."Esql.kubernetes_audit_decision_values",
  g."Esql.kubernetes_audit_responseStatus_code_values",
  g."Esql.kubernetes_audit_responseStatus_message_values",
  g."Esql.kubernetes_audit_verb_values",
  g."Esql.kubernetes_audit_objectRef_resource_values",
  g."Esql.kubernetes_audit_objectRef_namespace_values",
  g."Esql.kubernetes_audit_user_username_values",
  COALESCE(n.names, CAST(ARRAY[] AS ARRAY(VARCHAR))) AS "Esql.kubernetes_audit_user_groups_values",
  g."Esql.kubernetes_audit_requestURI_values",
  ARRAY['default'] AS "Esql.data_stream_namespace_values",
  g."Esql.user_agent_count_distinct",
  g."Esql.user_agent_values",
  g.source_ip AS "kubernetes.audit.sourceIPs"
FROM grouped AS g
LEFT JOIN names AS n
  ON g.source_ip IS NOT DISTINCT FROM n.source_ip
ORDER BY
  g.source_ip ASC;
