{{/* The DaemonSet's component label and name. */}}
{{- define "vipd.component" -}}
{{- if eq .Values.mode "services" -}}services
{{- else if eq .Values.mode "controlPlane" -}}control-plane
{{- else if eq .Values.mode "both" -}}control-plane-and-services
{{- else -}}{{ fail (printf "mode must be services, controlPlane or both, not %q" .Values.mode) }}
{{- end -}}
{{- end -}}

{{- define "vipd.daemonsetName" -}}
{{- if eq .Values.mode "services" -}}vipd-services{{- else -}}vipd{{- end -}}
{{- end -}}

{{- define "vipd.image" -}}
{{ .Values.image.repository }}:{{ default (printf "v%s" .Chart.AppVersion) .Values.image.tag }}
{{- end -}}
