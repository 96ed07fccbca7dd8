{{/* dns-forwarder: no flags beyond the common ones. */}}
{{- define "dns-forwarder.args" -}}
{{- end -}}
{{- define "dns-forwarder.env" -}}
{{- end -}}
