package deploy

import (
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// KEDA's API types (keda.sh/v1alpha1), reduced to the fields these manifests
// may use, with KEDA's JSON names. github.com/kedacore/keda/v2's own types
// pull in client-go, controller-runtime and expr, and do not build against
// k8s.io/api v0.37: decoding strictly into these catches a misspelt or
// misplaced field just the same. A field KEDA has and these lack fails the
// test: add it here when a manifest needs it.

// ScaledObject is keda.sh/v1alpha1 ScaledObject.
type ScaledObject struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              ScaledObjectSpec `json:"spec"`
}

// ScaledObjectSpec is the spec of a ScaledObject.
type ScaledObjectSpec struct {
	ScaleTargetRef        *ScaleTarget    `json:"scaleTargetRef"`
	PollingInterval       *int32          `json:"pollingInterval,omitempty"`
	InitialCooldownPeriod *int32          `json:"initialCooldownPeriod,omitempty"`
	CooldownPeriod        *int32          `json:"cooldownPeriod,omitempty"`
	IdleReplicaCount      *int32          `json:"idleReplicaCount,omitempty"`
	MinReplicaCount       *int32          `json:"minReplicaCount,omitempty"`
	MaxReplicaCount       *int32          `json:"maxReplicaCount,omitempty"`
	Advanced              *AdvancedConfig `json:"advanced,omitempty"`
	Triggers              []ScaleTrigger  `json:"triggers"`
	Fallback              *Fallback       `json:"fallback,omitempty"`
}

// ScaleTarget names the workload a ScaledObject scales.
type ScaleTarget struct {
	Name                   string `json:"name"`
	APIVersion             string `json:"apiVersion,omitempty"`
	Kind                   string `json:"kind,omitempty"`
	EnvSourceContainerName string `json:"envSourceContainerName,omitempty"`
}

// AdvancedConfig is a ScaledObject's advanced section.
type AdvancedConfig struct {
	HorizontalPodAutoscalerConfig *HorizontalPodAutoscalerConfig `json:"horizontalPodAutoscalerConfig,omitempty"`
	RestoreToOriginalReplicaCount bool                           `json:"restoreToOriginalReplicaCount,omitempty"`
}

// HorizontalPodAutoscalerConfig configures the HPA KEDA creates; Behavior is
// the HPA's own type.
type HorizontalPodAutoscalerConfig struct {
	Behavior *autoscalingv2.HorizontalPodAutoscalerBehavior `json:"behavior,omitempty"`
	Name     string                                         `json:"name,omitempty"`
}

// Fallback is the replica count KEDA sets when a scaler keeps failing.
type Fallback struct {
	FailureThreshold int32 `json:"failureThreshold"`
	Replicas         int32 `json:"replicas"`
}

// ScaleTrigger is one scaler of a ScaledObject.
type ScaleTrigger struct {
	Type              string                         `json:"type"`
	Name              string                         `json:"name,omitempty"`
	UseCachedMetrics  bool                           `json:"useCachedMetrics,omitempty"`
	Metadata          map[string]string              `json:"metadata"`
	AuthenticationRef *AuthenticationRef             `json:"authenticationRef,omitempty"`
	MetricType        autoscalingv2.MetricTargetType `json:"metricType,omitempty"`
}

// AuthenticationRef points a trigger at a TriggerAuthentication.
type AuthenticationRef struct {
	Name string `json:"name"`
	Kind string `json:"kind,omitempty"`
}

// TriggerAuthentication is keda.sh/v1alpha1 TriggerAuthentication.
type TriggerAuthentication struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              TriggerAuthenticationSpec `json:"spec"`
}

// TriggerAuthenticationSpec is the spec of a TriggerAuthentication.
type TriggerAuthenticationSpec struct {
	PodIdentity     *AuthPodIdentity      `json:"podIdentity,omitempty"`
	SecretTargetRef []AuthSecretTargetRef `json:"secretTargetRef,omitempty"`
	Env             []AuthEnvironment     `json:"env,omitempty"`
}

// AuthPodIdentity selects a workload identity provider.
type AuthPodIdentity struct {
	Provider   string  `json:"provider"`
	IdentityID *string `json:"identityId,omitempty"`
}

// AuthSecretTargetRef fills a trigger parameter from a Secret's key.
type AuthSecretTargetRef struct {
	Parameter string `json:"parameter"`
	Name      string `json:"name"`
	Key       string `json:"key"`
}

// AuthEnvironment fills a trigger parameter from the target's environment.
type AuthEnvironment struct {
	Parameter     string `json:"parameter"`
	Name          string `json:"name"`
	ContainerName string `json:"containerName,omitempty"`
}

// scalerMetadata lists the metadata keys each scaler used here accepts
// (KEDA's scaler documentation), so a misspelt key fails instead of being
// ignored by KEDA.
var scalerMetadata = map[string][]string{
	"metrics-api": {"url", "format", "valueLocation", "targetValue", "activationTargetValue",
		"authMode", "method", "keyParamName", "unsafeSsl",
		"aggregateFromKubeServiceEndpoints", "aggregationType"},
	"azure-queue": {"queueName", "queueLength", "queueLengthStrategy", "activationQueueLength",
		"connectionFromEnv", "accountName", "cloud", "endpointSuffix"},
}

// Kustomization is kustomize.config.k8s.io/v1beta1 Kustomization, reduced to
// the fields used.
type Kustomization struct {
	metav1.TypeMeta `json:",inline"`
	Namespace       string           `json:"namespace,omitempty"`
	Resources       []string         `json:"resources"`
	Images          []KustomizeImage `json:"images,omitempty"`
}

// KustomizeImage overrides an image's name or tag.
type KustomizeImage struct {
	Name    string `json:"name"`
	NewName string `json:"newName,omitempty"`
	NewTag  string `json:"newTag,omitempty"`
	Digest  string `json:"digest,omitempty"`
}

// Azure Container Apps (Microsoft.App/containerApps), the YAML that
// "az containerapp create --yaml" takes, reduced to the fields used, with the
// ARM API's JSON names.

// ContainerApp is a container app.
type ContainerApp struct {
	Location   string                 `json:"location"`
	Name       string                 `json:"name"`
	Type       string                 `json:"type"`
	Tags       map[string]string      `json:"tags,omitempty"`
	Identity   *ContainerAppIdentity  `json:"identity,omitempty"`
	Properties ContainerAppProperties `json:"properties"`
}

// ContainerAppIdentity is the app's managed identity.
type ContainerAppIdentity struct {
	Type                   string                    `json:"type"`
	UserAssignedIdentities map[string]map[string]any `json:"userAssignedIdentities,omitempty"`
}

// ContainerAppProperties holds the app's configuration and template.
type ContainerAppProperties struct {
	ManagedEnvironmentID string     `json:"managedEnvironmentId"`
	WorkloadProfileName  string     `json:"workloadProfileName,omitempty"`
	Configuration        CAConfig   `json:"configuration"`
	Template             CATemplate `json:"template"`
}

// CAConfig is properties.configuration.
type CAConfig struct {
	ActiveRevisionsMode string       `json:"activeRevisionsMode,omitempty"`
	Ingress             *CAIngress   `json:"ingress,omitempty"`
	Secrets             []CASecret   `json:"secrets,omitempty"`
	Registries          []CARegistry `json:"registries,omitempty"`
}

// CAIngress is the app's HTTP ingress.
type CAIngress struct {
	External      bool   `json:"external"`
	TargetPort    int32  `json:"targetPort"`
	Transport     string `json:"transport,omitempty"`
	AllowInsecure bool   `json:"allowInsecure,omitempty"`
}

// CASecret is an app secret, inline or from Key Vault.
type CASecret struct {
	Name        string `json:"name"`
	Value       string `json:"value,omitempty"`
	KeyVaultURL string `json:"keyVaultUrl,omitempty"`
	Identity    string `json:"identity,omitempty"`
}

// CARegistry is a private container registry.
type CARegistry struct {
	Server            string `json:"server"`
	Identity          string `json:"identity,omitempty"`
	Username          string `json:"username,omitempty"`
	PasswordSecretRef string `json:"passwordSecretRef,omitempty"`
}

// CATemplate is properties.template.
type CATemplate struct {
	TerminationGracePeriodSeconds *int64        `json:"terminationGracePeriodSeconds,omitempty"`
	Containers                    []CAContainer `json:"containers"`
	Scale                         *CAScale      `json:"scale,omitempty"`
	Volumes                       []CAVolume    `json:"volumes,omitempty"`
}

// CAContainer is one container of the template.
type CAContainer struct {
	Name         string          `json:"name"`
	Image        string          `json:"image"`
	Command      []string        `json:"command,omitempty"`
	Args         []string        `json:"args,omitempty"`
	Env          []CAEnv         `json:"env,omitempty"`
	Resources    CAResources     `json:"resources"`
	Probes       []CAProbe       `json:"probes,omitempty"`
	VolumeMounts []CAVolumeMount `json:"volumeMounts,omitempty"`
}

// CAEnv is an environment variable, a value or a secret's.
type CAEnv struct {
	Name      string `json:"name"`
	Value     string `json:"value,omitempty"`
	SecretRef string `json:"secretRef,omitempty"`
}

// CAResources is a container's CPU (cores) and memory ("1Gi").
type CAResources struct {
	CPU    float64 `json:"cpu"`
	Memory string  `json:"memory"`
}

// CAProbe is a Startup, Liveness or Readiness probe.
type CAProbe struct {
	Type                string     `json:"type"`
	HTTPGet             *CAHTTPGet `json:"httpGet,omitempty"`
	InitialDelaySeconds int32      `json:"initialDelaySeconds,omitempty"`
	PeriodSeconds       int32      `json:"periodSeconds,omitempty"`
	TimeoutSeconds      int32      `json:"timeoutSeconds,omitempty"`
	FailureThreshold    int32      `json:"failureThreshold,omitempty"`
	SuccessThreshold    int32      `json:"successThreshold,omitempty"`
}

// CAHTTPGet is an HTTP probe.
type CAHTTPGet struct {
	Path   string `json:"path"`
	Port   int32  `json:"port"`
	Scheme string `json:"scheme,omitempty"`
}

// CAVolume is a template volume.
type CAVolume struct {
	Name        string           `json:"name"`
	StorageType string           `json:"storageType"`
	StorageName string           `json:"storageName,omitempty"`
	Secrets     []CAVolumeSecret `json:"secrets,omitempty"`
}

// CAVolumeSecret puts a secret in a Secret volume as a file.
type CAVolumeSecret struct {
	SecretRef string `json:"secretRef"`
	Path      string `json:"path"`
}

// CAVolumeMount mounts a volume in a container.
type CAVolumeMount struct {
	VolumeName string `json:"volumeName"`
	MountPath  string `json:"mountPath"`
	SubPath    string `json:"subPath,omitempty"`
}

// CAScale is the template's scale section: KEDA rules.
type CAScale struct {
	MinReplicas     *int32        `json:"minReplicas,omitempty"`
	MaxReplicas     *int32        `json:"maxReplicas,omitempty"`
	PollingInterval *int32        `json:"pollingInterval,omitempty"`
	CooldownPeriod  *int32        `json:"cooldownPeriod,omitempty"`
	Rules           []CAScaleRule `json:"rules"`
}

// CAScaleRule is one scale rule; only custom (KEDA) rules are used here.
type CAScaleRule struct {
	Name   string        `json:"name"`
	Custom *CACustomRule `json:"custom,omitempty"`
}

// CACustomRule is a KEDA scaler as a Container Apps rule.
type CACustomRule struct {
	Type     string            `json:"type"`
	Metadata map[string]string `json:"metadata"`
	Auth     []CAScaleAuth     `json:"auth,omitempty"`
	Identity string            `json:"identity,omitempty"`
}

// CAScaleAuth fills a trigger parameter from an app secret.
type CAScaleAuth struct {
	SecretRef        string `json:"secretRef"`
	TriggerParameter string `json:"triggerParameter"`
}
