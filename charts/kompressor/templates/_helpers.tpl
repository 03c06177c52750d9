{{/*
Expand the name of the chart.
*/}}
{{- define "kompressor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name.
We truncate at 63 chars because some Kubernetes name fields are limited to this (by the DNS naming spec).
If release name contains chart name it will be used as a full name.
*/}}
{{- define "kompressor.fullname" -}}
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

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "kompressor.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels: the recommended app.kubernetes.io/* labels of every object.
Called with a dict: (dict "root" $ "component" "operator"); the component may be empty.
*/}}
{{- define "kompressor.labels" -}}
helm.sh/chart: {{ include "kompressor.chart" .root }}
{{ include "kompressor.selectorLabels" . }}
{{- if .root.Chart.AppVersion }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: kompressor
{{- with .root.Values.additionalLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels. Called like "kompressor.labels"; the component keeps the operator's selector from
matching the dev RabbitMQ and SeaweedFS pods of the same release.
*/}}
{{- define "kompressor.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kompressor.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{/*
Create the name of the service account to use
*/}}
{{- define "kompressor.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kompressor.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
An image reference "repository:tag"; an empty tag means the chart's appVersion.
Called with (dict "image" .Values.x.image "root" $).
*/}}
{{- define "kompressor.image" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (.image.tag | default .root.Chart.AppVersion | toString) }}
{{- end }}
{{- end }}

{{/*
The operator's default S3 endpoint: storage.endpointURL, else the dev SeaweedFS when dev.enabled,
else nothing (AWS S3).
*/}}
{{- define "kompressor.storageEndpoint" -}}
{{- if .Values.storage.endpointURL }}
{{- .Values.storage.endpointURL }}
{{- else if .Values.dev.enabled }}
{{- printf "http://%s-seaweedfs.%s.svc:8333" (include "kompressor.fullname" .) .Release.Namespace }}
{{- end }}
{{- end }}

{{/*
RBAC rules kopf needs cluster-wide whatever it watches: the CRD scan (kopf watches CRDs to learn the
resources it serves) and the namespace scan.
*/}}
{{- define "kompressor.clusterRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- if gt (int .Values.operator.replicas) 1 }}
{{- /* Leader election (kopf peering): the operator makes its ClusterKopfPeering object if it is
missing, kopf watches it and patches its keep-alive into it. */}}
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["create", "list", "watch", "patch"]
{{- end }}
{{- end }}

{{/*
RBAC rules the operator needs in every namespace it watches: exactly the calls it makes, no more.
kopf lists, watches and patches its jobs (annotations, finalizers) and patches their status; the
operator deletes a job after ttlSecondsAfterFinished, posts Events, creates the worker Deployment,
reads it (its owner and ready replicas) and patches it (template and replicas, by uid), and reads
Secrets (the webhook HMAC key, a job's storage credentials). tests/e2e pins this set with can-i.
*/}}
{{- define "kompressor.namespacedRules" -}}
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create"]
- apiGroups: ["kompressor.dev"]
  resources: ["compressionjobs"]
  verbs: ["list", "watch", "patch", "delete"]
- apiGroups: ["kompressor.dev"]
  resources: ["compressionjobs/status"]
  verbs: ["patch"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "create", "update", "patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{- end }}
