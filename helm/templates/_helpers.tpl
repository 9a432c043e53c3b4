{{/* Names: <release>-leanserve unless the release name already says leanserve. */}}
{{- define "leanserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "leanserve.fullname" -}}
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

{{/* Labels every resource carries; selectors use the stable subset. */}}
{{- define "leanserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "leanserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "leanserve.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "leanserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: leanserve
{{- end }}

{{- define "leanserve.image" -}}
{{ printf "%s:%s" .repository .tag }}
{{- end }}

{{- define "leanserve.gatewayName" -}}
{{- printf "%s-gateway" (include "leanserve.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "leanserve.storeClaim" -}}
{{- default (printf "%s-store" (include "leanserve.fullname" .)) .Values.store.existingClaim }}
{{- end }}

{{- define "leanserve.keysSecret" -}}
{{- default (printf "%s-keys" (include "leanserve.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{/* The keys between the chart's parts (internal-keys.yaml), and where the gateway reads them. */}}
{{- define "leanserve.internalKeysSecret" -}}
{{- printf "%s-internal-keys" (include "leanserve.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "leanserve.internalKeysDir" -}}
/etc/leanserve/internal
{{- end }}

{{/* Where the base checkpoint lives in the store, and the file that says it is complete. */}}
{{- define "leanserve.baseDir" -}}
{{- printf "%s/models/%s" .Values.store.mountPath .Values.model.name }}
{{- end }}

{{- define "leanserve.baseReady" -}}
{{- printf "%s/models/.%s.ready" .Values.store.mountPath .Values.model.name }}
{{- end }}

{{/*
Every engine to run, as YAML {engines: [...]}: the base's and one per variant.
Each has key (a DNS-safe suffix), recipe ("" for the base), public (the name clients use),
service, url, and settings (`engine` merged with its own overrides).
*/}}
{{- define "leanserve.engines" -}}
{{- $fullname := include "leanserve.fullname" . }}
engines:
{{- $service := printf "%s-engine-base" $fullname | trunc 63 | trimSuffix "-" }}
  - key: base
    recipe: ""
    public: {{ .Values.model.name | quote }}
    service: {{ $service }}
    url: {{ printf "http://%s:%v" $service .Values.engine.port | quote }}
    settings: {{ include "leanserve.engineSettings" (list .Values.engine .Values.base.engine) }}
{{- range .Values.variants }}
{{- $key := regexReplaceAll "[^a-z0-9]+" (lower .recipe) "-" | trimAll "-" }}
{{- $service := printf "%s-engine-%s" $fullname $key | trunc 63 | trimSuffix "-" }}
  - key: {{ $key }}
    recipe: {{ .recipe | quote }}
    public: {{ printf "%s:%s" $.Values.model.name .recipe | quote }}
    service: {{ $service }}
    url: {{ printf "http://%s:%v" $service $.Values.engine.port | quote }}
    settings: {{ include "leanserve.engineSettings" (list $.Values.engine .engine) }}
{{- end }}
{{- end }}

{{/* `engine` defaults with one engine's overrides, as JSON. Each key given replaces the default's
whole (a plain set, not a deep merge: a deep merge would ignore an override to false or 0). */}}
{{- define "leanserve.engineSettings" -}}
{{- $settings := deepCopy (index . 0) }}
{{- range $key, $value := (index . 1 | default dict) }}
{{- $_ := set $settings $key $value }}
{{- end }}
{{- toJson $settings }}
{{- end }}

{{/* The pod volume of the store. */}}
{{- define "leanserve.storeVolume" -}}
- name: store
  persistentVolumeClaim:
    claimName: {{ include "leanserve.storeClaim" . }}
{{- end }}

{{/* An init container that waits until the base Job has put the base checkpoint in the store. */}}
{{- define "leanserve.waitForBase" -}}
- name: wait-for-base
  image: {{ include "leanserve.image" .image }}
  imagePullPolicy: {{ .image.pullPolicy }}
  securityContext: {{- toYaml .root.Values.securityContext | nindent 4 }}
  command: [sh, -c]
  args:
    - |
      until [ -f {{ include "leanserve.baseReady" .root }} ]; do
        echo "waiting for the base Job to write {{ include "leanserve.baseDir" .root }}"; sleep 10
      done
  volumeMounts:
    - name: store
      mountPath: {{ .root.Values.store.mountPath }}
  resources:
    requests: {cpu: 10m, memory: 16Mi}
    limits: {memory: 64Mi}
{{- end }}

{{/* A short hash that names a Job after what it does, so that a changed Job is a new Job (a Job's
pod template cannot be changed in place) and an unchanged one is left alone on upgrade. */}}
{{- define "leanserve.jobHash" -}}
{{- . | toJson | sha256sum | trunc 8 }}
{{- end }}
