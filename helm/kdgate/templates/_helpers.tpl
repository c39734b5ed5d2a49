{{/* Names: <release>-<component> ("kdgate-gateway"); <release>-kdgate-<component> when the release lacks "kdgate".
Cut to 44 characters: the longest name, <fullname>-student-headless (a Service: a DNS label), stays within 63, and the
student StatefulSet's within 52 (its pods' controller-revision-hash label adds 11 and must stay within 63). */}}
{{- define "kdgate.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 44 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 44 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Selector labels of one component. Call with (dict "root" $ "component" "gateway"). */}}
{{- define "kdgate.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "kdgate.labels" -}}
{{ include "kdgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{/* A kdgate image: (dict "root" $ "image" .Values.images.gateway); an empty tag is the chart's appVersion. */}}
{{- define "kdgate.image" -}}
{{- printf "%s:%s" .image.repository (.image.tag | default .root.Chart.AppVersion) -}}
{{- end -}}

{{/*
One service of files/vllm-launch.yaml (a link to deploy/vllm/launch.yaml, the one source of vLLM's flags), as YAML:
(dict "root" $ "role" "student") gives services.vllm-student. Flags the chart sets itself are refused there.
*/}}
{{- define "kdgate.launch" -}}
{{- $file := .root.Files.Get "files/vllm-launch.yaml" | fromYaml -}}
{{- $service := index ($file.services | default dict) (printf "vllm-%s" .role) -}}
{{- if not $service -}}
{{- fail (printf "files/vllm-launch.yaml (deploy/vllm/launch.yaml) has no services.vllm-%s; the %s server's flags come from there" .role .role) -}}
{{- end -}}
{{- range $flag := $service.command -}}
{{- if or (hasPrefix "--tensor-parallel-size" $flag) (hasPrefix "--port" $flag) -}}
{{- fail (printf "deploy/vllm/launch.yaml sets %s for vllm-%s; the chart sets it (the port, and TP = models.%s.requestGPU): remove it there" $flag $.role $.role) -}}
{{- end -}}
{{- end -}}
{{- toYaml $service -}}
{{- end -}}

{{/* The model id a server answers to: its --served-model-name in the launch file. */}}
{{- define "kdgate.servedName" -}}
{{- $launch := include "kdgate.launch" . | fromYaml -}}
{{- $name := "" -}}
{{- range $flag := $launch.command -}}
{{- if hasPrefix "--served-model-name=" $flag -}}{{- $name = trimPrefix "--served-model-name=" $flag -}}{{- end -}}
{{- end -}}
{{- required (printf "deploy/vllm/launch.yaml: vllm-%s needs --served-model-name=NAME (the gateway sends that id)" .role) $name -}}
{{- end -}}

{{/* "true" when the server loads LoRA adapters at runtime (--enable-lora): each replica then needs its own address. */}}
{{- define "kdgate.lora" -}}
{{- $launch := include "kdgate.launch" . | fromYaml -}}
{{- $model := index .root.Values.models .role -}}
{{- if has "--enable-lora" (concat $launch.command (default list $model.extraArgs)) -}}true{{- end -}}
{{- end -}}

{{/* The OpenAI base URL of a model server's Service. */}}
{{- define "kdgate.modelURL" -}}
{{- printf "http://%s-%s:%d/v1" (include "kdgate.fullname" .root) .role (int .root.Values.models.port) -}}
{{- end -}}

{{/* Compose's shm_size ("16gb", "512m") as a Kubernetes quantity ("16Gi", "512Mi"). */}}
{{- define "kdgate.composeSize" -}}
{{- $size := lower (toString .) -}}
{{- if regexMatch "^[0-9]+[kmg]b?$" $size -}}
{{- printf "%s%si" (regexFind "^[0-9]+" $size) (upper (regexFind "[kmg]" $size)) -}}
{{- else -}}
{{- $size -}}
{{- end -}}
{{- end -}}

{{/* One ConfigMap value from a values map entry: strings as they are, numbers and booleans as JSON (no 1e+06). */}}
{{- define "kdgate.envValue" -}}
{{- if kindIs "string" . -}}{{- . -}}{{- else -}}{{- toJson . -}}{{- end -}}
{{- end -}}

{{/* "true" when the chart runs the rate limits' Redis: `always`, or `auto` with more than one gateway replica possible. */}}
{{- define "kdgate.redis" -}}
{{- $redis := .Values.redis -}}
{{- $gateway := .Values.gateway -}}
{{- if or (eq $redis.deploy "always") (and (eq $redis.deploy "auto") (or $gateway.autoscaling.enabled (gt (int $gateway.replicaCount) 1))) -}}true{{- end -}}
{{- end -}}

{{/* The trainer pod's volumes, and a TrainJob's (runner kubernetes: the same, patched into its runtime). */}}
{{- define "kdgate.trainerVolumes" -}}
{{- $volumes := list -}}
{{- if .Values.sharedStorage.existingClaim -}}
{{- $volumes = append $volumes (dict "name" "work" "persistentVolumeClaim" (dict "claimName" .Values.sharedStorage.existingClaim)) -}}
{{- else -}}
{{- $volumes = append $volumes (dict "name" "work" "emptyDir" dict) -}}
{{- end -}}
{{- with include "kdgate.weightsClaim" (dict "root" . "role" "student") -}}
{{- $volumes = append $volumes (dict "name" "student-weights" "persistentVolumeClaim" (dict "claimName" . "readOnly" true)) -}}
{{- end -}}
{{- toJson $volumes -}}
{{- end -}}

{{- define "kdgate.trainerMounts" -}}
{{- $mounts := list (dict "name" "work" "mountPath" .Values.sharedStorage.mountPath) -}}
{{- if include "kdgate.weightsClaim" (dict "root" . "role" "student") -}}
{{- $mounts = append $mounts (dict "name" "student-weights" "mountPath" .Values.models.student.storage.mountPath "readOnly" true) -}}
{{- end -}}
{{- toJson $mounts -}}
{{- end -}}

{{/* The claim holding a model server's weights: the chart's own when it downloads them, else storage.existingClaim. */}}
{{- define "kdgate.weightsClaim" -}}
{{- $model := index .root.Values.models .role -}}
{{- if ($model.storage.download | default dict).enabled -}}
{{- printf "%s-%s-weights" (include "kdgate.fullname" .root) .role -}}
{{- else -}}
{{- $model.storage.existingClaim -}}
{{- end -}}
{{- end -}}

{{/* What vLLM loads: modelURL, or where the download put it (<mountPath>/<modelURL>). */}}
{{- define "kdgate.modelPath" -}}
{{- $model := index .root.Values.models .role -}}
{{- if ($model.storage.download | default dict).enabled -}}
{{- if hasPrefix "/" $model.modelURL -}}
{{- fail (printf "models.%s.storage.download needs a Hugging Face id as modelURL, not the path %s" .role $model.modelURL) -}}
{{- end -}}
{{- printf "%s/%s" (trimSuffix "/" $model.storage.mountPath) $model.modelURL -}}
{{- else -}}
{{- $model.modelURL -}}
{{- end -}}
{{- end -}}
