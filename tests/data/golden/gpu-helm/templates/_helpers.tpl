{{- define "modelyard.namespace" -}}
{{- .Values.namespace | default .Release.Namespace -}}
{{- end -}}
