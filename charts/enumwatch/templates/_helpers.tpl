{{/*
Names. The release "enumwatch" (docs/install.md) gives exactly the names of manifests/; another release
name prefixes them, like any chart.
*/}}
{{- define "enumwatch.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "enumwatch.tailerServiceAccount" -}}
{{- printf "%s-tailer" (include "enumwatch.fullname" .) -}}
{{- end -}}

{{/* Where the tailers' pods and service account live. */}}
{{- define "enumwatch.tailerNamespace" -}}
{{- if eq .Values.tailer.mode "daemonset" -}}
{{- .Values.tailer.namespace -}}
{{- else -}}
{{- .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/* The labels of every object: manifests/' two, then Helm's own. */}}
{{- define "enumwatch.labels" -}}
app.kubernetes.io/name: enumwatch
app.kubernetes.io/part-of: enumwatch
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The operator's pods, as selected by its Deployment, Services and PodDisruptionBudget. */}}
{{- define "enumwatch.operatorSelector" -}}
app.kubernetes.io/name: enumwatch
app.kubernetes.io/component: operator
{{- end -}}

{{- define "enumwatch.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* Does a pod in the release namespace mount the audit log from the node (hostPath)? */}}
{{- define "enumwatch.hostPathHere" -}}
{{- if or (eq .Values.tailer.mode "sidecar") (and (eq .Values.tailer.mode "daemonset") (eq .Values.tailer.namespace .Release.Namespace)) -}}
true
{{- end -}}
{{- end -}}

{{/* PodSecurity labels: `privileged` only where a tailer mounts the audit log. */}}
{{- define "enumwatch.podSecurity" -}}
{{- if .hostPath }}
pod-security.kubernetes.io/enforce: privileged
pod-security.kubernetes.io/enforce-version: latest
pod-security.kubernetes.io/warn: baseline
pod-security.kubernetes.io/warn-version: latest
pod-security.kubernetes.io/audit: baseline
pod-security.kubernetes.io/audit-version: latest
{{- else }}
pod-security.kubernetes.io/enforce: restricted
pod-security.kubernetes.io/enforce-version: latest
pod-security.kubernetes.io/warn: restricted
pod-security.kubernetes.io/warn-version: latest
pod-security.kubernetes.io/audit: restricted
pod-security.kubernetes.io/audit-version: latest
{{- end }}
{{- end -}}

{{/* Refuse combinations that cannot work, with what to do instead. */}}
{{- define "enumwatch.validate" -}}
{{- if not (has .Values.tailer.mode (list "sidecar" "daemonset" "none")) -}}
{{- fail (printf "tailer.mode must be sidecar, daemonset or none, not %q" .Values.tailer.mode) -}}
{{- end -}}
{{- if and .Values.ingest.tls.secretName (ne .Values.tailer.mode "none") -}}
{{- fail "ingest.tls serves /ingest over HTTPS only, which the tailers do not speak: set tailer.mode=none (the apiserver's audit webhook) or leave ingest.tls.secretName empty" -}}
{{- end -}}
{{- if and (eq .Values.tailer.mode "none") (not .Values.ingest.allowUsers) (not .Values.ingest.tokenSecret) -}}
{{- fail "tailer.mode=none: name who may post audit events, ingest.allowUsers (the webhook's service account) or ingest.tokenSecret; otherwise any token the API server accepts would do" -}}
{{- end -}}
{{- if and (eq .Values.tailer.mode "sidecar") (gt (int .Values.replicas) 1) -}}
{{- fail "tailer.mode=sidecar reads one node's audit log from one pod: use replicas=1, or tailer.mode=daemonset (values-ha.yaml) for more replicas" -}}
{{- end -}}
{{- $reports := include "enumwatch.policyReportApi" . -}}
{{- $results := int .Values.outputs.policyReport.maxResults -}}
{{- if or (lt $results 1) (gt $results 1000) -}}
{{- fail (printf "outputs.policyReport.maxResults must be 1..1000, not %v" .Values.outputs.policyReport.maxResults) -}}
{{- end -}}
{{- end -}}

{{/*
outputs.policyReport.api: off, wgpolicyk8s, openreports or both (enumwatch run --policy-report).
A bare `off` in a values file is YAML's false: taken as "off".
*/}}
{{- define "enumwatch.policyReportApi" -}}
{{- $api := toString .Values.outputs.policyReport.api -}}
{{- if eq $api "false" -}}
{{- $api = "off" -}}
{{- end -}}
{{- if not (has $api (list "off" "wgpolicyk8s" "openreports" "both")) -}}
{{- fail (printf "outputs.policyReport.api must be off, wgpolicyk8s, openreports or both, not %q" $api) -}}
{{- end -}}
{{- $api -}}
{{- end -}}

{{/*
The tailer container, the same in the operator's pod (sidecar) and in the DaemonSet. Why uid 0
with every capability dropped, and why the checkpoint is on the node: manifests/base/operator.yaml.
Argument: (dict "root" $ "forward" URL).
*/}}
{{- define "enumwatch.tailerContainer" -}}
{{- $v := .root.Values -}}
- name: tailer
  image: {{ include "enumwatch.image" .root }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  args:
    - tail
    - --path={{ $v.tailer.auditLogDir }}/{{ $v.tailer.auditLogFile }}
    - --checkpoint=/var/lib/enumwatch/tail.checkpoint
    - --forward={{ .forward }}
    - --token-file=/var/run/secrets/enumwatch/ingest/token
    - --log-format=json
    {{- range $v.tailer.extraArgs }}
    - {{ . }}
    {{- end }}
  resources:
    {{- toYaml $v.tailer.resources | nindent 4 }}
  securityContext:
    runAsUser: 0
    runAsGroup: 0
    runAsNonRoot: false
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    privileged: false
    capabilities:
      drop: ["ALL"]
    seccompProfile:
      type: RuntimeDefault
  volumeMounts:
    - name: audit-log
      mountPath: {{ $v.tailer.auditLogDir }}
      readOnly: true
    - name: tail-checkpoint
      mountPath: /var/lib/enumwatch
    - name: ingest-token
      mountPath: /var/run/secrets/enumwatch/ingest
      readOnly: true
{{- end -}}

{{/* The tailer's volumes: its /ingest token (audience enumwatch-ingest), the log, the checkpoint. */}}
{{- define "enumwatch.tailerVolumes" -}}
- name: ingest-token
  projected:
    sources:
      - serviceAccountToken:
          path: token
          expirationSeconds: 3600
          # Only good for /ingest: the Kubernetes API refuses a token of this audience.
          audience: enumwatch-ingest
- name: audit-log
  hostPath:
    path: {{ .Values.tailer.auditLogDir }}
    type: Directory
- name: tail-checkpoint
  hostPath:
    path: {{ .Values.tailer.checkpointDir }}
    type: DirectoryOrCreate
{{- end -}}
