{{/* Name of the chart, overridable. */}}
{{- define "connector-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name, prefixed with the chart name unless it already contains it. */}}
{{- define "connector-operator.fullname" -}}
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

{{- define "connector-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "connector-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "connector-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "connector-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "connector-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "connector-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "connector-operator.leaseName" -}}
{{- default (include "connector-operator.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/*
The watched namespaces, comma-separated (WATCH_NAMESPACE), or "" for all. Fails the render on a
configuration the operator cannot run.
*/}}
{{- define "connector-operator.watchNamespace" -}}
{{- $namespaces := .Values.watchNamespaces | default list }}
{{- if and .Values.rbac.namespaced (eq (len $namespaces) 0) }}
{{- fail "rbac.namespaced=true needs the namespaces to grant access in: set watchNamespaces (without it the operator watches all namespaces and needs a ClusterRole)" }}
{{- end }}
{{- if ne (len $namespaces) (len (uniq $namespaces)) }}
{{- fail (printf "watchNamespaces lists a namespace twice: %s" (join ", " $namespaces)) }}
{{- end }}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail (printf "replicaCount=%d needs leaderElection.enabled=true: without it every replica reconciles the same objects" (int .Values.replicaCount)) }}
{{- end }}
{{- join "," $namespaces }}
{{- end }}

{{/* Rules on the namespaced resources the operator manages (ClusterRole or Role). */}}
{{- define "connector-operator.namespacedRules" -}}
# Watched (list + watch); the finalizer is set and released by a JSON merge patch.
- apiGroups: ["openconnectors.io"]
  resources: ["connectorinstances"]
  verbs: ["list", "watch", "patch"]
# Status is written by server-side apply, never read back through the API.
- apiGroups: ["openconnectors.io"]
  resources: ["connectorinstances/status"]
  verbs: ["patch"]
# Watched; read directly when an instance refers to one the watch has not shown yet.
- apiGroups: ["openconnectors.io"]
  resources: ["connectorplatforms"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["openconnectors.io"]
  resources: ["connectorplatforms/status"]
  verbs: ["patch"]
# Token Secrets are written by server-side apply (create + patch), and replaced when their
# template changes their type (delete); the OAuth callback's grant Secrets are deleted once used.
# `get`: a Secret an instance refers to that the metadata watch has not shown yet.
# Every Secret's metadata is watched for changes of referenced ones.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
{{- if .Values.rolloutRestart.enabled }}
# spec.tokenSecret.rolloutRestart: workloads listed (by label selector) and their pod template
# annotated (JSON merge patch), which rolls them.
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets", "daemonsets"]
  verbs: ["list", "patch"]
{{- end }}
# ClusterConnectorPlatform namespace selectors read the instance's namespace.
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/* Rules on the cluster-scoped resources: always in a ClusterRole. */}}
{{- define "connector-operator.clusterRules" -}}
- apiGroups: ["openconnectors.io"]
  resources: ["clusterconnectorplatforms"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["openconnectors.io"]
  resources: ["clusterconnectorplatforms/status"]
  verbs: ["patch"]
{{- end }}

{{/*
The Secret holding the key that signs the OAuth state.
*/}}
{{- define "connector-operator.oauthStateSecret" -}}
{{- .Values.oauth.stateKeySecret | default (printf "%s-oauth-state" (include "connector-operator.fullname" .)) }}
{{- end }}

{{/* The OAuth callback's Deployment, ServiceAccount, Service and roles. */}}
{{- define "connector-operator.callbackName" -}}
{{- printf "%s-oauth-callback" (include "connector-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The callback's pods: another `name` than the operator's, so that no selector of one matches
the other's pods. */}}
{{- define "connector-operator.callbackSelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-oauth-callback" (include "connector-operator.name" .) | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: oauth-callback
{{- end }}

{{/* What the callback does with the API, and nothing else (see README, "Permissions"). */}}
{{- define "connector-operator.callbackRules" -}}
# The instance an authorization answers: its UID, generation and pending request.
- apiGroups: ["openconnectors.io"]
  resources: ["connectorinstances"]
  verbs: ["get"]
# The grant Secret that hands the code (or the provider's error code) to the operator; created
# once, never read, changed or deleted by the callback.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create"]
{{- end }}
