{{/* Chart name. */}}
{{- define "keyward.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Fully qualified name of the injector's objects. */}}
{{- define "keyward.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "keyward.name" .) .Release.Name -}}
{{- printf "%s-injector" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s-injector" .Release.Name (include "keyward.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "keyward.selectorLabels" -}}
app.kubernetes.io/name: {{ include "keyward.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: injector
{{- end -}}

{{- define "keyward.labels" -}}
{{ include "keyward.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: keyward
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The image, pinned by digest. */}}
{{- define "keyward.image" -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- end -}}

{{- define "keyward.serviceName" -}}
{{- include "keyward.fullname" . -}}
{{- end -}}

{{- define "keyward.tlsSecretName" -}}
{{- printf "%s-tls" (include "keyward.fullname" .) -}}
{{- end -}}

{{/* The replicas' spread: .Values.topologySpreadConstraints, else zones and nodes. */}}
{{- define "keyward.topologySpread" -}}
{{- $sel := dict "matchLabels" (include "keyward.selectorLabels" . | fromYaml) -}}
{{- $out := list -}}
{{- if .Values.topologySpreadConstraints -}}
{{- range .Values.topologySpreadConstraints -}}
{{- $c := deepCopy . -}}
{{- if not (hasKey $c "labelSelector") -}}
{{- $_ := set $c "labelSelector" $sel -}}
{{- end -}}
{{- $out = append $out $c -}}
{{- end -}}
{{- else -}}
{{- range list "topology.kubernetes.io/zone" "kubernetes.io/hostname" -}}
{{- $out = append $out (dict "maxSkew" 1 "topologyKey" . "whenUnsatisfiable" "ScheduleAnyway" "labelSelector" $sel) -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* Fails the render on a cluster that cannot run what the values ask for. */}}
{{- define "keyward.guards" -}}
{{- if and .Values.kubeVersionCheck (eq .Values.sidecar.mode "native") -}}
{{- if not (semverCompare ">=1.29.0-0" .Capabilities.KubeVersion.Version) -}}
{{- fail (printf "keyward: Kubernetes %s is older than 1.29, which native sidecars (sidecar.mode: native, initContainers with restartPolicy: Always) need; upgrade the cluster or set sidecar.mode=legacy" .Capabilities.KubeVersion.Version) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.monitoring.podMonitor.enabled (not (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1/PodMonitor")) -}}
{{- fail "keyward: monitoring.podMonitor.enabled needs the PodMonitor CRD (monitoring.coreos.com/v1, Prometheus Operator); install it or set monitoring.podMonitor.enabled=false (monitoring.scrapeAnnotations serves clusters without the operator)" -}}
{{- end -}}
{{- if and .Values.monitoring.prometheusRule.enabled (not (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1/PrometheusRule")) -}}
{{- fail "keyward: monitoring.prometheusRule.enabled needs the PrometheusRule CRD (monitoring.coreos.com/v1, Prometheus Operator); install it or set monitoring.prometheusRule.enabled=false" -}}
{{- end -}}
{{- end -}}
