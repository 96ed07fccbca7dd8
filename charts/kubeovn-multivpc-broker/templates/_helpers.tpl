{{- define "broker.name" -}}
{{- printf "%s-%s" .Release.Name "gatewayexips" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "broker.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: broker
app.kubernetes.io/part-of: kubeovn-multivpc
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}
