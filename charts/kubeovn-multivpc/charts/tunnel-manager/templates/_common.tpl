{{/*
Helpers shared by the three controller subcharts. This file, deployment.yaml, service.yaml,
serviceaccount.yaml, servicemonitor.yaml and pdb.yaml are byte-identical in every subchart
(e2e/tests/chart.rs checks it); what differs lives in values.yaml, rbac.yaml,
admission-policy.yaml and _controller.tpl.
*/}}

{{- define "multivpc.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Name of objects outside the release namespace (Roles in kube-system, ClusterRoles):
the release namespace is part of it, so two releases of one name never collide. */}}
{{- define "multivpc.globalName" -}}
{{- printf "%s-%s" .Release.Namespace (include "multivpc.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "multivpc.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "multivpc.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "multivpc.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: controller
app.kubernetes.io/part-of: kubeovn-multivpc
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "multivpc.image" -}}
{{- $g := .Values.global.image -}}
{{- $tag := .Values.image.tag | default $g.tag | default .Chart.AppVersion -}}
{{- $repo := .Values.image.repository -}}
{{- if $g.registry -}}{{- $repo = printf "%s/%s" (trimSuffix "/" $g.registry) $repo -}}{{- end -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repo .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}
{{- end -}}

{{/* "true" when the controller runs under leader election: asked for, or forced by replicas > 1. */}}
{{- define "multivpc.leaderElect" -}}
{{- if or .Values.global.leaderElection.enabled (gt (int .Values.replicas) 1) -}}true{{- end -}}
{{- end -}}

{{/* Lease the binary uses: multivpc-<binary> (crates/multivpc-runtime). */}}
{{- define "multivpc.leaseName" -}}
multivpc-{{ .Chart.Name }}
{{- end -}}

{{/* The local Submariner cluster ID: global.clusterId, else ServiceDiscovery's clusterID looked
up at install/upgrade (nothing under `helm template` or before `subctl join`). A looked-up value
that is no DNS label is ignored. */}}
{{- define "multivpc.clusterId" -}}
{{- $id := .Values.global.clusterId | default "" -}}
{{- if not $id -}}
{{- with (lookup "submariner.io/v1alpha1" "ServiceDiscovery" "submariner-operator" "service-discovery") -}}
{{- $found := dig "spec" "clusterID" "" . -}}
{{- if and (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" $found) (le (len $found) 63) -}}
{{- $id = $found -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $id -}}
{{- end -}}

{{/* Kube-OVN's natGwNamePrefix: global.kubeOvn.natGwNamePrefix, else the natGwNamePrefix of
Kube-OVN's ConfigMap ovn-vpc-nat-config looked up at install/upgrade, else Kube-OVN's default.
A looked-up value that is no DNS label is ignored. */}}
{{- define "multivpc.natGwNamePrefix" -}}
{{- $prefix := .Values.global.kubeOvn.natGwNamePrefix | default "" -}}
{{- if not $prefix -}}
{{- with (lookup "v1" "ConfigMap" .Values.global.kubeOvn.namespace "ovn-vpc-nat-config") -}}
{{- $found := dig "data" "natGwNamePrefix" "" . -}}
{{- if and (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" $found) (le (len $found) 63) -}}
{{- $prefix = $found -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $prefix | default "vpc-nat-gw" -}}
{{- end -}}

{{/* The ServiceAccount's user name, as admission policies match it. */}}
{{- define "multivpc.serviceAccountUser" -}}
{{- printf "system:serviceaccount:%s:%s" .Release.Namespace (include "multivpc.fullname" .) -}}
{{- end -}}

{{/* Whether to render the controller's ValidatingAdmissionPolicy (Kubernetes 1.30+; on an older
API server the install fails on the unknown kind: set global.admissionPolicies.enabled=false). */}}
{{- define "multivpc.admissionPolicies" -}}
{{- if .Values.global.admissionPolicies.enabled -}}
true
{{- end -}}
{{- end -}}
