{{- define "factpatch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "factpatch.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "factpatch.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "factpatch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "factpatch.selectorLabels" -}}
app.kubernetes.io/name: {{ include "factpatch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "factpatch.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "factpatch.shardName" -}}
{{ include "factpatch.fullname" . }}-shard
{{- end -}}

{{- define "factpatch.agentSecret" -}}
{{ .Values.agentToken.existingSecret | default (printf "%s-agent-token" (include "factpatch.fullname" .)) }}
{{- end -}}

{{- define "factpatch.gatewaySecret" -}}
{{ .Values.gateway.token.existingSecret | default (printf "%s-gateway-token" (include "factpatch.fullname" .)) }}
{{- end -}}

{{- define "factpatch.tokensSecret" -}}
{{ .Values.controlPlane.tokensExistingSecret | default (printf "%s-client-tokens" (include "factpatch.fullname" .)) }}
{{- end -}}

{{/* Checksum of what the pods read at start, so a changed secret or config rolls them. */}}
{{- define "factpatch.configChecksum" -}}
{{ dict "tokens" .Values.controlPlane.tokens "monitors" .Values.controlPlane.monitors "agent" .Values.agentToken | toJson | sha256sum }}
{{- end -}}

{{/* Labels every scraped series gets (the operator adds namespace): the rules and dashboard group by them. */}}
{{- define "factpatch.targetLabels" -}}
- targetLabel: release
  replacement: {{ .Release.Name | quote }}
- targetLabel: model
  replacement: {{ .Values.model.name | quote }}
{{- end -}}
