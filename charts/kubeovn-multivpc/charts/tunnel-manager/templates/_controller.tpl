{{/* tunnel-manager's own flags and environment. */}}
{{- define "tunnel-manager.args" -}}
- --verify-interval={{ .Values.verifyInterval }}
- --exec-timeout={{ .Values.execTimeout }}
- --max-concurrent-execs={{ .Values.maxConcurrentExecs }}
{{- end -}}
{{- define "tunnel-manager.env" -}}
- name: TENANCY
  value: {{ .Values.global.tenancy | quote }}
- name: GATEWAY_NAMESPACE
  value: {{ .Values.global.gatewayNamespace | quote }}
- name: NAT_GW_NAME_PREFIX
  value: {{ include "multivpc.natGwNamePrefix" . | quote }}
{{- end -}}
