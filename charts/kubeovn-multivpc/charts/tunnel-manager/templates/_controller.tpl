{{/* tunnel-manager's own flags and environment. */}}
{{- define "tunnel-manager.args" -}}
- --verify-interval={{ .Values.verifyInterval }}
- --exec-timeout={{ .Values.execTimeout }}
- --max-concurrent-execs={{ .Values.maxConcurrentExecs }}
- --probe-interval={{ .Values.health.probeInterval }}
- --probe-timeout={{ .Values.health.probeTimeout }}
- --probe-failure-threshold={{ .Values.health.failureThreshold }}
- --probe-recovery-threshold={{ .Values.health.recoveryThreshold }}
{{- with .Values.ipsec.pskSecret }}
- --ipsec-psk-secret={{ . }}
- --ipsec-psk-key={{ $.Values.ipsec.pskKey }}
- --ipsec-rekey-interval={{ $.Values.ipsec.rekeyInterval }}
{{- end }}
{{- end -}}
{{- define "tunnel-manager.env" -}}
- name: TENANCY
  value: {{ .Values.global.tenancy | quote }}
- name: GATEWAY_NAMESPACE
  value: {{ .Values.global.gatewayNamespace | quote }}
- name: NAT_GW_NAME_PREFIX
  value: {{ include "multivpc.natGwNamePrefix" . | quote }}
{{- end -}}
