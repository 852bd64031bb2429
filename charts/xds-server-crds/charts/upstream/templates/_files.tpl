{{- /* Nothing is rendered here: the parent chart (xds-server-crds) renders these files, through .Subcharts, for the
groups its values turn on. A subchart's files are left out of the record Helm stores for a release (a Secret, at
most 1 MiB), which the 3.8 MB of CRDs would otherwise overflow. */ -}}
