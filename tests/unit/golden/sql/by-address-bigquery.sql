WITH events AS (
  SELECT
    `user`.`username` AS username,
    `user`.`groups` AS user_groups,
    `level` AS level,
    `verb` AS verb,
    `requestURI` AS request_uri,
    `userAgent` AS user_agent,
    `objectRef`.`resource` AS resource,
    `objectRef`.`namespace` AS namespace,
    `responseStatus`.`message` AS message,
    `responseStatus`.`code` AS code,
    JSON_EXTRACT_SCALAR(`annotations`, '$[\'authorization.k8s.io/decision\']') AS decision,
    `sourceIPs` AS ips
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
    WHEN ips IS NULL OR ARRAY_LENGTH(ips) = 0
    THEN [CAST(NULL AS STRING)]
    ELSE [ips[ARRAY_LENGTH(ips) + -1]]
  END) AS source_ip
), grouped AS (
  SELECT
    source_ip,
    COUNT(*) AS `Esql_document_count`,
    COUNTIF(outcome = 'authz_allow') AS `Esql_authz_allow_count`,
    COUNTIF(outcome = 'authz_forbid') AS `Esql_authz_forbid_count`,
    COUNTIF(outcome = 'authn_authz_failed') AS `Esql_status_fail_count`,
    COUNTIF(outcome = 'success') AS `Esql_success_count`,
    COUNTIF(outcome = 'not_found') AS `Esql_not_found_count`,
    COUNTIF(outcome = 'other_error') AS `Esql_other_error_count`,
    COUNTIF(outcome = 'unknown') AS `Esql_unknown_count`,
    COUNT(DISTINCT verb) AS `Esql_kubernetes_audit_verb_count_distinct`,
    COUNT(DISTINCT request_uri) AS `Esql_kubernetes_audit_requestURI_count_distinct`,
    COUNT(DISTINCT resource) AS `Esql_kubernetes_audit_objectRef_resource_count_distinct`,
    COALESCE(ARRAY_AGG(DISTINCT outcome IGNORE NULLS ORDER BY outcome), ARRAY<STRING>[]) AS `Esql_kubernetes_audit_outcome_values`,
    COALESCE(ARRAY_AGG(DISTINCT decision IGNORE NULLS ORDER BY decision), ARRAY<STRING>[]) AS `Esql_kubernetes_audit_decision_values`,
    COALESCE(ARRAY_AGG(DISTINCT code IGNORE NULLS ORDER BY code), ARRAY<INT64>[]) AS `Esql_kubernetes_audit_responseStatus_code_values`,
    COALESCE(ARRAY_AGG(DISTINCT message IGNORE NULLS ORDER BY message), ARRAY<STRING>[]) AS `Esql_kubernetes_audit_responseStatus_message_values`,
    COALESCE(ARRAY_AGG(DISTINCT verb IGNORE NULLS ORDER BY verb), ARRAY<STRING>[]) AS `Esql_kubernetes_audit_verb_values`,
    COALESCE(ARRAY_AGG(DISTINCT resource IGNORE NULLS ORDER BY resource), ARRAY<STRING>[]) AS `Esql_kubernetes_audit_objectRef_resource_values`,
    COALESCE(ARRAY_AGG(DISTINCT namespace IGNORE NULLS ORDER BY namespace), ARRAY<STRING>[]) AS `Esql_kubernetes_audit_objectRef_namespace_values`,
    COALESCE(ARRAY_AGG(DISTINCT username IGNORE NULLS ORDER BY username), ARRAY<STRING>[]) AS `Esql_kubernetes_audit_user_username_values`,
    COALESCE(ARRAY_AGG(DISTINCT request_uri IGNORE NULLS ORDER BY request_uri), ARRAY<STRING>[]) AS `Esql_kubernetes_audit_requestURI_values`,
    COUNT(DISTINCT user_agent) AS `Esql_user_agent_count_distinct`,
    COALESCE(ARRAY_AGG(DISTINCT user_agent IGNORE NULLS ORDER BY user_agent), ARRAY<STRING>[]) AS `Esql_user_agent_values`
  FROM by_ip
  GROUP BY
    source_ip
  HAVING
    COUNT(DISTINCT request_uri) > 5
    AND COUNT(DISTINCT resource) > 3
    AND COUNT(*) < 50
    AND (
      COUNTIF(outcome = 'authz_forbid') >= 1
      OR COUNTIF(outcome = 'authn_authz_failed') >= 1
      OR COUNTIF(outcome = 'not_found') >= 3
    )
), names AS (
  SELECT
    source_ip,
    COALESCE(ARRAY_AGG(DISTINCT name IGNORE NULLS ORDER BY name), ARRAY<STRING>[]) AS names
  FROM by_ip
  CROSS JOIN UNNEST(user_groups) AS name
  GROUP BY
    source_ip
)
SELECT
  g.`Esql_document_count`,
  g.`Esql_authz_allow_count`,
  g.`Esql_authz_forbid_count`,
  g.`Esql_status_fail_count`,
  g.`Esql_success_count`,
  g.`Esql_not_found_count`,
  g.`Esql_other_error_count`,
  g.`Esql_unknown_count`,
  g.`Esql_kubernetes_audit_verb_count_distinct`,
  g.`Esql_kubernetes_audit_requestURI_count_distinct`,
  g.`Esql_kubernetes_audit_objectRef_resource_count_distinct`,
  g.`Esql_kubernetes_audit_outcome_values`,
  g.`Esql_kubernetes_audit_decision_values`,
  g.`Esql_kubernetes_audit_responseStatus_code_values`,
  g.`Esql_kubernetes_audit_responseStatus_message_values`,
  g.`Esql_kubernetes_audit_verb_values`,
  g.`Esql_kubernetes_audit_objectRef_resource_values`,
  g.`Esql_kubernetes_audit_objectRef_namespace_values`,
  g.`Esql_kubernetes_audit_user_username_values`,
  COALESCE(n.names, ARRAY<STRING>[]) AS `Esql_kubernetes_audit_user_groups_values`,
  g.`Esql_kubernetes_audit_requestURI_values`,
  ['default'] AS `Esql_data_stream_namespace_values`,
  g.`Esql_user_agent_count_distinct`,
  g.`Esql_user_agent_values`,
  g.source_ip AS `kubernetes_audit_sourceIPs`
FROM grouped AS g
LEFT JOIN names AS n
  ON g.source_ip IS NOT DISTINCT FROM n.source_ip
ORDER BY
  g.source_ip ASC NULLS LAST;
