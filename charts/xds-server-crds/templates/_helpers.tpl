{{- define "xds-server-crds.files" -}}
{{- $files := .root.Subcharts.upstream.Files }}
{{- range $path, $_ := $files.Glob .glob }}
---
{{ $files.Get $path }}
{{- end }}
{{- end }}
