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
{{- $model := include "kdgate.model" . | fromJson -}}
{{- if has "--enable-lora" (concat $launch.command (default list $model.extraArgs)) -}}true{{- end -}}
{{- end -}}

{{/* A model server's spec: (dict "root" $ "role" "student") the first pair's, models.student; with "pair" (an entry
of kdgate.pairs) that pair's. As JSON. */}}
{{- define "kdgate.model" -}}
{{- if .pair -}}{{- index .pair.models .role | toJson -}}{{- else -}}{{- index .root.Values.models .role | toJson -}}{{- end -}}
{{- end -}}

{{/* The prefix of a model server's objects: the release's, or its pair's. */}}
{{- define "kdgate.serverPrefix" -}}
{{- if .pair -}}{{- .pair.fullname -}}{{- else -}}{{- include "kdgate.fullname" .root -}}{{- end -}}
{{- end -}}

{{/* The OpenAI base URL of a model server's Service. */}}
{{- define "kdgate.modelURL" -}}
{{- printf "http://%s-%s:%d/v1" (include "kdgate.serverPrefix" .) .role (int .root.Values.models.port) -}}
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

{{/* A pair's trainer pod's volumes, and its TrainJobs' (runner kubernetes: the same, patched into their runtime):
(dict "root" $ "pair" pair) with an entry of kdgate.pairs. */}}
{{- define "kdgate.trainerVolumes" -}}
{{- $root := .root -}}
{{- $volumes := list -}}
{{- if $root.Values.sharedStorage.existingClaim -}}
{{- $volumes = append $volumes (dict "name" "work" "persistentVolumeClaim" (dict "claimName" $root.Values.sharedStorage.existingClaim)) -}}
{{- else -}}
{{- $volumes = append $volumes (dict "name" "work" "emptyDir" dict) -}}
{{- end -}}
{{- with include "kdgate.weightsClaim" (dict "root" $root "role" "student" "pair" .pair) -}}
{{- $volumes = append $volumes (dict "name" "student-weights" "persistentVolumeClaim" (dict "claimName" . "readOnly" true)) -}}
{{- end -}}
{{- toJson $volumes -}}
{{- end -}}

{{- define "kdgate.trainerMounts" -}}
{{- $mounts := list (dict "name" "work" "mountPath" .root.Values.sharedStorage.mountPath) -}}
{{- if include "kdgate.weightsClaim" (dict "root" .root "role" "student" "pair" .pair) -}}
{{- $mounts = append $mounts (dict "name" "student-weights" "mountPath" .pair.models.student.storage.mountPath "readOnly" true) -}}
{{- end -}}
{{- toJson $mounts -}}
{{- end -}}

{{/* The claim holding a model server's weights: the chart's own when it downloads them, else storage.existingClaim. */}}
{{- define "kdgate.weightsClaim" -}}
{{- $model := include "kdgate.model" . | fromJson -}}
{{- if ($model.storage.download | default dict).enabled -}}
{{- printf "%s-%s-weights" (include "kdgate.serverPrefix" .) .role -}}
{{- else -}}
{{- $model.storage.existingClaim -}}
{{- end -}}
{{- end -}}

{{/* What vLLM loads: modelURL, or where the download put it (<mountPath>/<modelURL>). */}}
{{- define "kdgate.modelPath" -}}
{{- $model := include "kdgate.model" . | fromJson -}}
{{- if ($model.storage.download | default dict).enabled -}}
{{- if hasPrefix "/" $model.modelURL -}}
{{- $where := "models" -}}{{- with .pair -}}{{- $where = .where -}}{{- end -}}
{{- fail (printf "%s.%s.storage.download needs a Hugging Face id as modelURL, not the path %s" $where .role $model.modelURL) -}}
{{- end -}}
{{- printf "%s/%s" (trimSuffix "/" $model.storage.mountPath) $model.modelURL -}}
{{- else -}}
{{- $model.modelURL -}}
{{- end -}}
{{- end -}}

{{/* `base` with `over` laid on it key by key, into nested maps, as JSON. Unlike mergeOverwrite, a false, 0 or ""
that `over` gives wins too (a pair turning off what the first pair has on). */}}
{{- define "kdgate.overlay" -}}
{{- $out := deepCopy (.base | default dict) -}}
{{- range $key, $value := .over -}}
{{- $current := index $out $key -}}
{{- if and (kindIs "map" $value) (kindIs "map" $current) -}}
{{- $_ := set $out $key (include "kdgate.overlay" (dict "base" $current "over" $value) | fromJson) -}}
{{- else -}}
{{- $_ := set $out $key $value -}}
{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* An extra pair's prefix, <fullname>-<pair>, held to 44 characters as kdgate.fullname is (so every suffix the chart
adds fits); a cut name ends in a hash of the whole, so two long pair names stay apart. */}}
{{- define "kdgate.pairFullname" -}}
{{- $name := printf "%s-%s" (include "kdgate.fullname" .root) .name -}}
{{- if gt (len $name) 44 -}}
{{- printf "%s-%s" ($name | trunc 35 | trimSuffix "-") ($name | sha256sum | trunc 8) -}}
{{- else -}}
{{- $name -}}
{{- end -}}
{{- end -}}

{{/*
Every distilled pair of the release as a JSON list, the one `models` declares first (unchanged names), then each
entry of `pairs` with its student and teacher laid over models.student/teacher, its settings over
gateway.settings and its trainer over trainer. Each:
  name         "" for the first pair, else the entry's name (its settings file: primary.yaml, <name>.yaml)
  fullname     its objects' prefix: kdgate (kdgate-student), kdgate-billing (kdgate-billing-student)
  component    its components' prefix: "" or "billing-" (app.kubernetes.io/component billing-student)
  where        where it is declared, for messages: models, pairs[billing]
  servedModel, models {student, teacher}, store (the Secret with its url), settings, trainer, workDir
*/}}
{{- define "kdgate.pairs" -}}
{{- $fullname := include "kdgate.fullname" . -}}
{{- $pairs := list (dict "name" "" "fullname" $fullname "component" "" "where" "models"
  "servedModel" (.Values.gateway.settings.KDGATE_SERVED_MODEL | default "")
  "models" (dict "student" .Values.models.student "teacher" .Values.models.teacher)
  "store" .Values.postgresql.existingSecret "settings" .Values.gateway.settings "trainer" .Values.trainer
  "workDir" .Values.sharedStorage.mountPath) -}}
{{- range $pair := .Values.pairs | default list -}}
{{- if eq $pair.name "primary" -}}
{{- fail "pairs: `primary` is the name of the pair `models` declares (its settings file); name this pair otherwise" -}}
{{- end -}}
{{- $models := dict -}}
{{- range $role := list "student" "teacher" -}}
{{- $_ := set $models $role (include "kdgate.overlay" (dict "base" (index $.Values.models $role) "over" (index $pair $role | default dict)) | fromJson) -}}
{{- end -}}
{{- $settings := include "kdgate.overlay" (dict "base" $.Values.gateway.settings "over" ($pair.settings | default dict)) | fromJson -}}
{{- $_ := set $settings "KDGATE_SERVED_MODEL" $pair.servedModel -}}
{{- $pairs = append $pairs (dict "name" $pair.name "fullname" (include "kdgate.pairFullname" (dict "root" $ "name" $pair.name))
  "component" (printf "%s-" $pair.name) "where" (printf "pairs[%s]" $pair.name) "servedModel" $pair.servedModel
  "models" $models "store" $pair.postgresql.existingSecret "settings" $settings
  "trainer" (include "kdgate.overlay" (dict "base" $.Values.trainer "over" ($pair.trainer | default dict)) | fromJson)
  "workDir" (printf "%s/%s" (trimSuffix "/" $.Values.sharedStorage.mountPath) $pair.name)) -}}
{{- end -}}
{{- if gt (len $pairs) 1 -}}
{{- range $key := list "name" "servedModel" "store" -}}
{{- $seen := list -}}
{{- range $pair := $pairs -}}
{{- $value := index $pair $key -}}
{{- if has $value $seen -}}
{{- fail (printf "%s and an earlier pair share the %s %q: each pair needs its own (%s)" $pair.where $key $value (get (dict "name" "its objects' names" "servedModel" "the model id clients send" "store" "a store holds one pair's student versions and jobs") $key)) -}}
{{- end -}}
{{- $seen = append $seen $value -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson $pairs -}}
{{- end -}}

{{/* A pair's settings file name: primary.yaml for the pair `models` declares, else <name>.yaml. */}}
{{- define "kdgate.pairFile" -}}
{{- printf "%s.yaml" (.name | default "primary") -}}
{{- end -}}

{{/* The gateway settings that point a pair at its model servers (their Services; every replica of a LoRA student),
by environment variable name, as JSON: (dict "root" $ "pair" pair). */}}
{{- define "kdgate.gatewayBackends" -}}
{{- $root := .root -}}
{{- $pair := .pair -}}
{{- $settings := dict -}}
{{- range $role := list "student" "teacher" -}}
{{- $upper := upper $role -}}
{{- $scope := dict "root" $root "role" $role "pair" $pair -}}
{{- $model := index $pair.models $role -}}
{{- $_ := set $settings (printf "KDGATE_%s__KIND" $upper) "http" -}}
{{- $_ := set $settings (printf "KDGATE_%s__BASE_URL" $upper) (include "kdgate.modelURL" $scope) -}}
{{- $_ := set $settings (printf "KDGATE_%s__MODEL" $upper) (include "kdgate.servedName" $scope) -}}
{{- $cost := $model.cost | default dict -}}
{{- if $cost.gpuHour -}}
{{- /* Priced by its GPU class: the gateway's cost-of-time form, GPUs per replica = what the chart requests. */ -}}
{{- $_ := set $settings (printf "KDGATE_%s__COST__GPU_HOUR" $upper) $cost.gpuHour -}}
{{- $_ := set $settings (printf "KDGATE_%s__COST__GPUS" $upper) $model.requestGPU -}}
{{- $_ := set $settings (printf "KDGATE_%s__COST__COMPLETION_TOKENS_PER_S" $upper) (required (printf "%s.%s.cost.completionTokensPerS is needed with gpuHour" $pair.where $role) $cost.completionTokensPerS) -}}
{{- if $cost.promptTokensPerS -}}
{{- $_ := set $settings (printf "KDGATE_%s__COST__PROMPT_TOKENS_PER_S" $upper) $cost.promptTokensPerS -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if include "kdgate.lora" (dict "root" $root "role" "student" "pair" $pair) -}}
{{- /* vLLM keeps LoRA adapters per replica: the gateway loads each serving version on every pod the headless Service
resolves to, looked up again at each reconciliation, so pods that restart or join by scaling get them too. */ -}}
{{- $_ := set $settings "KDGATE_STUDENT__REPLICA_URLS" (list (printf "http://%s-student-headless.%s.svc:%d/v1" $pair.fullname $root.Release.Namespace (int $root.Values.models.port))) -}}
{{- $_ := set $settings "KDGATE_STUDENT__REPLICAS_FROM_DNS" true -}}
{{- end -}}
{{- toJson $settings -}}
{{- end -}}

{{/* Settings by environment variable name ({"KDGATE_ROUTING__POLICY": x}) as a settings file's tree
({"routing": {"policy": x}}), as JSON. */}}
{{- define "kdgate.settingsTree" -}}
{{- $tree := dict -}}
{{- range $key, $value := . -}}
{{- $over := $value -}}
{{- range $name := reverse (splitList "__" (lower (trimPrefix "KDGATE_" $key))) -}}
{{- $over = dict $name $over -}}
{{- end -}}
{{- $tree = include "kdgate.overlay" (dict "base" $tree "over" $over) | fromJson -}}
{{- end -}}
{{- toJson $tree -}}
{{- end -}}
