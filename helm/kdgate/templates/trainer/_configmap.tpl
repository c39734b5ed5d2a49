{{/* One pair's trainer's ConfigMap (templates/trainer/configmap.yaml), by itself so that the trainer's Deployment
hashes its own pair's: (dict "root" $ "pair" pair). The chart's own keys win over trainer.settings. */}}
{{- define "kdgate.trainerConfigMap" -}}
{{- $root := .root -}}
{{- $pair := .pair -}}
{{- $trainer := $pair.trainer -}}
{{- $release := include "kdgate.fullname" $root -}}
{{- $fullname := $pair.fullname -}}
{{- $chart := dict
  "KDGATE_TRAINER_HOST" "0.0.0.0"
  "KDGATE_TRAINER_PORT" 8010
  "KDGATE_TRAINER_WORK_DIR" $pair.workDir
  "KDGATE_TRAINER_GATEWAY__URL" (printf "http://%s-gateway:%d" $release (int $root.Values.gateway.service.port))
  "KDGATE_TRAINER_RUNNER" $trainer.runner -}}
{{- if $root.Values.pairs -}}
{{- /* the gateway serves several pairs: the trainer's admin calls name its own (the x-kdgate-model header) */ -}}
{{- $_ := set $chart "KDGATE_TRAINER_GATEWAY__MODEL" $pair.servedModel -}}
{{- end -}}
{{- $studentScope := dict "root" $root "role" "student" "pair" $pair -}}
{{- $studentPath := include "kdgate.modelPath" $studentScope -}}
{{- if and (include "kdgate.weightsClaim" $studentScope) (hasPrefix "/" $studentPath) -}}
{{- /* Jobs train from the served student's own weights (the claim is mounted read-only at the same path). */ -}}
{{- $_ := set $chart "KDGATE_TRAINER_STUDENT_BASE_DIR" $studentPath -}}
{{- end -}}
{{- if $root.Values.monitoring.serviceMonitors.enabled -}}
{{- /* Only this release's drift alerts start jobs: the ServiceMonitors label every series with its namespace and
release, the rules keep both labels on each alert, and one Alertmanager may deliver several releases' alerts. */ -}}
{{- $selector := dict "action" "redistill" "namespace" $root.Release.Namespace "kdgate_release" $root.Release.Name -}}
{{- if $root.Values.pairs -}}
{{- /* a gateway of several pairs labels each pair's series served_model, and the rules keep it: this pair's only */ -}}
{{- $_ := set $selector "served_model" $pair.servedModel -}}
{{- end -}}
{{- $_ := set $chart "KDGATE_TRAINER_SELECTOR" $selector -}}
{{- end -}}
{{- if eq $trainer.runner "kubernetes" -}}
{{- $_ := set $chart "KDGATE_TRAINER_KUBERNETES__NAMESPACE" $root.Release.Namespace -}}
{{- $_ := set $chart "KDGATE_TRAINER_KUBERNETES__IMAGE" (include "kdgate.image" (dict "root" $root "image" $root.Values.images.trainer)) -}}
{{- $_ := set $chart "KDGATE_TRAINER_KUBERNETES__STORE_SECRET" $pair.store -}}
{{- if not $root.Values.sharedStorage.existingClaim -}}
{{- fail "trainer.runner kubernetes needs sharedStorage.existingClaim: a TrainJob's pods write the new student there, for the trainer and the student servers to read" -}}
{{- end -}}
{{- /* The job's pods get the trainer pod's volumes at the same paths (the stock runtimes mount none). */ -}}
{{- $_ := set $chart "KDGATE_TRAINER_KUBERNETES__VOLUMES" (include "kdgate.trainerVolumes" (dict "root" $root "pair" $pair) | fromJsonArray) -}}
{{- $_ := set $chart "KDGATE_TRAINER_KUBERNETES__VOLUME_MOUNTS" (include "kdgate.trainerMounts" (dict "root" $root "pair" $pair) | fromJsonArray) -}}
{{- end }}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ $fullname }}-trainer
  labels:
    {{- include "kdgate.labels" (dict "root" $root "component" (printf "%strainer" $pair.component)) | nindent 4 }}
data:
  {{- range $key, $value := merge $chart $trainer.settings }}
  {{ $key }}: {{ include "kdgate.envValue" $value | quote }}
  {{- end }}
{{ end -}}
