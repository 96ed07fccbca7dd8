{{/* dns-forwarder's own flags and environment. */}}
{{- define "dns-forwarder.args" -}}
- --repair-spacing={{ .Values.repairSpacing }}
{{- end -}}
{{- define "dns-forwarder.env" -}}
- name: TENANCY
  value: {{ .Values.global.tenancy | quote }}
{{- end -}}
