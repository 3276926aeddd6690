{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "bssctl-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart unless the release name already contains the chart name. */}}
{{- define "bssctl-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "bssctl-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "bssctl-operator.labels" -}}
helm.sh/chart: {{ include "bssctl-operator.chart" . }}
{{ include "bssctl-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: bssctl
{{- end }}

{{/* The stack's NetworkPolicies admit the operator by app.kubernetes.io/name=bssctl-operator. */}}
{{- define "bssctl-operator.selectorLabels" -}}
app.kubernetes.io/name: bssctl-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "bssctl-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "bssctl-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}
