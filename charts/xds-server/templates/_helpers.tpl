{{/* The release's full name: the release name when it already says xds-server, else "<release>-xds-server". */}}
{{- define "xds-server.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Cluster-scoped objects (ClusterRole, ClusterRoleBinding) name the namespace too: two releases of the same name in
two namespaces must not share them. */}}
{{- define "xds-server.clusterName" -}}
{{- printf "%s-%s" (include "xds-server.fullname" .) .Release.Namespace | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "xds-server.serviceAccountName" -}}
{{- default (include "xds-server.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "xds-server.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "xds-server.labels" -}}
{{ include "xds-server.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "xds-server.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Leader election is off only for a single replica whose values say so. */}}
{{- define "xds-server.leaderElection" -}}
{{- if or (gt (int .Values.replicas) 1) .Values.leaderElection.enabled -}}true{{- end -}}
{{- end -}}

{{/* The controller's command line after `xds-server`. e2e/kube/test_chart.py runs the controller with exactly these
arguments (the listening addresses moved to loopback), so what is tested is what the Deployment runs.
No --extproc-address: without it the controller listens for ext_proc on 0.0.0.0:1063 and tells the Envoys it
provisions to reach it through the Service, like ADS. */}}
{{- define "xds-server.args" -}}
- serve
- --kubernetes
- {{ printf "--log-format=%s" .Values.logFormat | quote }}
- {{ printf "--controller-name=%s" .Values.controllerName | quote }}
- {{ printf "--endpoint-picker=%s" .Values.endpointPicker | quote }}
- {{ printf "--controller-namespace=%s" .Release.Namespace | quote }}
- {{ printf "--control-plane-service=%s" (include "xds-server.fullname" .) | quote }}
- {{ printf "--lease-namespace=%s" .Release.Namespace | quote }}
- --listener-address=0.0.0.0
- {{ printf "--xds-address=0.0.0.0:%v" .Values.service.ports.xds | quote }}
- {{ printf "--admin-address=0.0.0.0:%v" .Values.service.ports.admin | quote }}
{{- if not (include "xds-server.leaderElection" .) }}
- --no-leader-election
{{- end }}
{{- if not .Values.provisioning.enabled }}
- --no-provision
{{- end }}
- {{ printf "--module-image=%s" (include "xds-server.image" .) | quote }}
{{- range .Values.watchNamespaces }}
- {{ printf "--namespace=%s" . | quote }}
{{- end }}
{{- range .Values.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end -}}

{{/* What the controller reads in the namespaces it watches, and the status it writes there: one list for the
ClusterRole of a cluster-wide install and for the Role in each namespace of a namespaced install. */}}
{{- define "xds-server.watchRules" -}}
# BackendTLSPolicies are read only: their status (ancestors) is not written yet.
- apiGroups: [gateway.networking.k8s.io]
  resources: [gateways, httproutes, referencegrants, backendtlspolicies]
  verbs: [get, list, watch]
- apiGroups: [gateway.networking.k8s.io]
  resources: [gateways/status, httproutes/status]
  verbs: [update]
- apiGroups: [aigateway.envoyproxy.io]
  resources: [aigatewayroutes, aiservicebackends, backendsecuritypolicies]
  verbs: [get, list, watch]
- apiGroups: [aigateway.envoyproxy.io]
  resources: [aigatewayroutes/status, aiservicebackends/status, backendsecuritypolicies/status]
  verbs: [update]
- apiGroups: [gateway.envoyproxy.io]
  resources: [backends, envoyproxies]
  verbs: [get, list, watch]
- apiGroups: [inference.networking.k8s.io]
  resources: [inferencepools]
  verbs: [get, list, watch]
- apiGroups: [inference.networking.k8s.io]
  resources: [inferencepools/status]
  verbs: [update]
- apiGroups: [inference.networking.x-k8s.io]
  resources: [inferenceobjectives]
  verbs: [get, list, watch]
# Services and Pods: pool and backend endpoints. Secrets: backend credentials (Helm's release Secrets are not
# listed). ConfigMaps and Deployments: an Endpoint Picker's configuration (embedded picker).
- apiGroups: [""]
  resources: [services, pods, secrets, configmaps]
  verbs: [get, list, watch]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch]
# The endpoints of Services without a selector.
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch]
# Kinds this controller does not implement: read to say so (Accepted False/Unsupported) in the status of those that
# concern its Gateways. A kind whose CRD is not installed is simply looked for again now and then.
- apiGroups: [gateway.networking.k8s.io]
  resources: [grpcroutes, tlsroutes, tcproutes, udproutes, listenersets]
  verbs: [get, list, watch]
- apiGroups: [gateway.networking.k8s.io]
  resources: [grpcroutes/status, tlsroutes/status, tcproutes/status, udproutes/status, listenersets/status]
  verbs: [update]
- apiGroups: [gateway.networking.x-k8s.io]
  resources: [xlistenersets]
  verbs: [get, list, watch]
- apiGroups: [gateway.networking.x-k8s.io]
  resources: [xlistenersets/status]
  verbs: [update]
- apiGroups: [aigateway.envoyproxy.io]
  resources: [mcproutes, quotapolicies]
  verbs: [get, list, watch]
- apiGroups: [aigateway.envoyproxy.io]
  resources: [mcproutes/status, quotapolicies/status]
  verbs: [update]
- apiGroups: [gateway.envoyproxy.io]
  resources: [securitypolicies, backendtrafficpolicies, clienttrafficpolicies, envoyextensionpolicies, envoypatchpolicies]
  verbs: [get, list, watch]
- apiGroups: [gateway.envoyproxy.io]
  resources:
    - securitypolicies/status
    - backendtrafficpolicies/status
    - clienttrafficpolicies/status
    - envoyextensionpolicies/status
    - envoypatchpolicies/status
  verbs: [update]
{{- end -}}

{{/* Cluster-scoped kinds: needed by every install, namespaced or not. */}}
{{- define "xds-server.clusterRules" -}}
- apiGroups: [gateway.networking.k8s.io]
  resources: [gatewayclasses]
  verbs: [get, list, watch]
- apiGroups: [gateway.networking.k8s.io]
  resources: [gatewayclasses/status]
  verbs: [update]
# Namespaces: their labels select which routes a listener admits.
- apiGroups: [""]
  resources: [namespaces]
  verbs: [get, list, watch]
# Nodes: the addresses of a Gateway whose Envoy Service is a NodePort (listed by the leader, not watched).
- apiGroups: [""]
  resources: [nodes]
  verbs: [list]
{{- end -}}
