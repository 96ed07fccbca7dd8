{{/* exip-syncer's own flags and environment. */}}
{{- define "exip-syncer.args" -}}
- --failover-grace-period={{ .Values.failoverGracePeriod }}
- --failback={{ .Values.failback }}
- --failback-delay={{ .Values.failbackDelay }}
- --failover-on-unhealthy-tunnels={{ .Values.failoverOnUnhealthyTunnels }}
- --unhealthy-failover-holddown={{ .Values.unhealthyFailoverHolddown }}
- --max-imported-per-cluster={{ .Values.maxImportedPerCluster }}
- --max-imported={{ .Values.maxImported }}
{{- with .Values.globalnetCidr }}
- --globalnet-cidr={{ . }}
{{- end }}
{{- end -}}
{{- define "exip-syncer.env" -}}
{{- $b := .Values.global.broker -}}
- name: GATEWAY_NAMESPACE
  value: {{ .Values.global.gatewayNamespace | quote }}
- name: NAT_GW_NAME_PREFIX
  value: {{ include "multivpc.natGwNamePrefix" . | quote }}
- name: BROKER_CREDENTIALS
{{- if eq $b.credentials "secret" }}
  value: {{ printf "secret:%s/%s" .Release.Namespace (required "global.broker.secretName is required with global.broker.credentials=secret" $b.secretName) | quote }}
{{- else if eq $b.credentials "none" }}
  value: "none"
{{- else }}
  value: "service-discovery"
{{- end }}
{{- with $b.namespace }}
- name: BROKER_NAMESPACE
  value: {{ . | quote }}
{{- end }}
{{- end -}}
