WITH events AS (
  SELECT
    p.authenticationInfo.principalEmail AS username,
    ARRAY<STRING>[] AS user_groups,
    CASE
      WHEN NOT p.responseJson IS NULL
      THEN 'RequestResponse'
      WHEN NOT p.requestJson IS NULL
      THEN 'Request'
      ELSE 'Metadata'
    END AS level,
    ARRAY_REVERSE(SPLIT(p.methodName, '.'))[OFFSET(0)] AS verb,
    CASE
      WHEN NOT resource_request
      THEN CONCAT('/', path)
      WHEN path = 'core' OR STARTS_WITH(path, 'core/')
      THEN CONCAT('/api/', SUBSTR(path, 6))
      ELSE CONCAT('/apis/', path)
    END AS request_uri,
    p.requestMetadata.callerSuppliedUserAgent AS user_agent,
    CASE
      WHEN NOT resource_request OR NOT REGEXP_CONTAINS(path, '^[^/]+/[^/]+/[^/]+(/[^/]+)*$')
      THEN NULL
      WHEN REGEXP_CONTAINS(path, '^[^/]+/[^/]+/namespaces/[^/]+/[^/]+')
      THEN REGEXP_EXTRACT(path, '^[^/]+/[^/]+/namespaces/[^/]+/([^/]+)')
      ELSE REGEXP_EXTRACT(path, '^[^/]+/[^/]+/([^/]+)')
    END AS resource,
    CASE
      WHEN resource_request
      AND REGEXP_CONTAINS(path, '^[^/]+/[^/]+/namespaces/[^/]+/[^/]+')
      AND REGEXP_CONTAINS(path, '^[^/]+/[^/]+/[^/]+(/[^/]+)*$')
      THEN REGEXP_EXTRACT(path, '^[^/]+/[^/]+/namespaces/([^/]+)/')
    END AS namespace,
    NULLIF(p.status.message, '') AS message,
    CASE
      WHEN p.status IS NULL
      THEN NULL
      ELSE CASE COALESCE(p.status.code, 0)
        WHEN 0
        THEN 200
        WHEN 1
        THEN 499
        WHEN 2
        THEN 500
        WHEN 3
        THEN 400
        WHEN 4
        THEN 504
        WHEN 5
        THEN 404
        WHEN 6
        THEN 409
        WHEN 7
        THEN 403
        WHEN 8
        THEN 429
        WHEN 9
        THEN 400
        WHEN 10
        THEN 409
        WHEN 11
        THEN 400
        WHEN 12
        THEN 501
        WHEN 13
        THEN 500
        WHEN 14
        THEN 503
        WHEN 15
        THEN 500
        WHEN 16
        THEN 401
        ELSE 500
      END
    END AS code,
    COALESCE(
      label_decision,
      (
        SELECT
          CASE
            WHEN COUNT(*) = 0
            THEN NULL
            WHEN LOGICAL_AND(COALESCE(a.granted, FALSE))
            THEN 'allow'
            ELSE 'forbid'
          END
        FROM UNNEST(p.authorizationInfo) AS a
      )
    ) AS decision,
    CASE
      WHEN COALESCE(p.requestMetadata.callerIp, '') = ''
      THEN ARRAY<STRING>[]
      ELSE [p.requestMetadata.callerIp]
    END AS ips
  FROM (
    SELECT
      e.protopayload_auditlog AS p,
      e.labels.authorization_k8s_io_decision AS label_decision,
      TRIM(COALESCE(e.protopayload_auditlog.resourceName, ''), '/') AS path,
      STARTS_WITH(e.protopayload_auditlog.methodName, 'io.k8s.')
      AND ARRAY_LENGTH(SPLIT(e.protopayload_auditlog.methodName, '.')) >= 5 AS resource_request
    FROM my-project.audit.cloudaudit_googleapis_com_data_access AS e
    WHERE
      e.protopayload_auditlog.serviceName = 'k8s.io'
      AND COALESCE(e.insertId, '') <> ''
      AND COALESCE(e.protopayload_auditlog.methodName, '') <> ''
  )
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
    level IN ('Metadata', 'Request', 'RequestResponse')
    AND (
      username IN ('o\'brien', 'system:anonymous') OR username IS NULL OR username = ''
    )
), by_ip AS (
  SELECT
    *
  FROM kept
  CROSS JOIN UNNEST(CASE
    WHEN ips IS NULL OR ARRAY_LENGTH(ips) = 0
    THEN [CAST(NULL AS STRING)]
    ELSE ARRAY(SELECT DISTINCT
      v
    FROM UNNEST(ips) AS v)
  END) AS source_ip
), grouped AS (
  SELECT
    source_ip,
    user_agent,
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
    COALESCE(ARRAY_AGG(DISTINCT request_uri IGNORE NULLS ORDER BY request_uri), ARRAY<STRING>[]) AS `Esql_kubernetes_audit_requestURI_values`
  FROM by_ip
  GROUP BY
    source_ip,
    user_agent
  HAVING
    COUNT(DISTINCT request_uri) > 3
    AND COUNT(DISTINCT resource) > 2
    AND COUNT(*) < 25
    AND (
      COUNTIF(outcome = 'authz_forbid') >= 2
      OR COUNTIF(outcome = 'authn_authz_failed') >= 2
      OR COUNTIF(outcome = 'not_found') >= 2
    )
), names AS (
  SELECT
    source_ip,
    user_agent,
    COALESCE(ARRAY_AGG(DISTINCT name IGNORE NULLS ORDER BY name), ARRAY<STRING>[]) AS names
  FROM by_ip
  CROSS JOIN UNNEST(user_groups) AS name
  GROUP BY
    source_ip,
    user_agent
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
  ['prod-eu'] AS `Esql_data_stream_namespace_values`,
  g.source_ip AS `kubernetes_audit_sourceIPs`,
  g.user_agent AS `kubernetes_audit_userAgent`
FROM grouped AS g
LEFT JOIN names AS n
  ON g.source_ip IS NOT DISTINCT FROM n.source_ip
  AND g.user_agent IS NOT DISTINCT FROM n.user_agent
ORDER BY
  g.source_ip ASC NULLS LAST,
  g.user_agent ASC NULLS LAST;
