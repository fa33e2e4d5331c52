package deploy

import (
	"net"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

const k8sDir = "kubernetes"

// The files of deploy/kubernetes that kustomization.yaml must not apply.
const (
	secretExample  = "secret.example.yaml"
	metricsAPIFile = "scaledobject-metrics-api.yaml"
	azureQueueFile = "scaledobject-azure-queue.yaml"
)

// drainMargin is what terminationGracePeriodSeconds keeps beyond the preStop
// hook and the worker's drain: flushing traces (up to 5 s) and exiting.
const drainMargin = 10

// manifests decodes every manifest of deploy/kubernetes, by file name.
func manifests(t *testing.T) map[string][]object {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(k8sDir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) == 0 {
		t.Fatal("no manifests in deploy/kubernetes")
	}
	out := map[string][]object{}
	for _, p := range paths {
		out[filepath.Base(p)] = decodeFile(t, p)
	}
	return out
}

// cluster is what kustomization.yaml applies, plus the example Secret and
// the alternative ScaledObject.
type cluster struct {
	deploy    *appsv1.Deployment
	container *corev1.Container
	env       map[string]string // plain values
	envRefs   map[string]*corev1.EnvVarSource
	svc       *corev1.Service
	pdb       *policyv1.PodDisruptionBudget
	secret    *corev1.Secret
	all       map[string][]object
}

func load(t *testing.T) *cluster {
	t.Helper()
	all := manifests(t)
	c := &cluster{all: all}
	c.deploy = one[appsv1.Deployment](t, all["deployment.yaml"])
	c.svc = one[corev1.Service](t, all["service.yaml"])
	c.pdb = one[policyv1.PodDisruptionBudget](t, all["poddisruptionbudget.yaml"])
	c.secret = one[corev1.Secret](t, all[secretExample])
	cs := c.deploy.Spec.Template.Spec.Containers
	if len(cs) != 1 {
		t.Fatalf("the Deployment has %d containers, want the worker alone", len(cs))
	}
	c.container = &cs[0]
	c.env, c.envRefs = map[string]string{}, map[string]*corev1.EnvVarSource{}
	for _, e := range c.container.Env {
		if _, dup := c.env[e.Name]; dup {
			t.Errorf("the worker's environment sets %s twice", e.Name)
		}
		if e.ValueFrom != nil {
			c.envRefs[e.Name] = e.ValueFrom
		} else {
			c.env[e.Name] = e.Value
		}
	}
	return c
}

// secretValue returns a key of the example Secret (stringData or data).
func (c *cluster) secretValue(t *testing.T, name, key string) string {
	t.Helper()
	if name != c.secret.Name {
		t.Fatalf("a manifest reads Secret %q; the example Secret is %q", name, c.secret.Name)
	}
	if v, ok := c.secret.StringData[key]; ok {
		return v
	}
	if v, ok := c.secret.Data[key]; ok {
		return string(v)
	}
	t.Fatalf("a manifest reads key %q of Secret %q, which the example Secret (%s) lacks", key, name, secretExample)
	return ""
}

// port returns the container port of a name or number.
func (c *cluster) port(t *testing.T, p intstr.IntOrString) corev1.ContainerPort {
	t.Helper()
	for _, cp := range c.container.Ports {
		if (p.Type == intstr.String && cp.Name == p.StrVal) || (p.Type == intstr.Int && cp.ContainerPort == p.IntVal) {
			return cp
		}
	}
	t.Fatalf("the worker container has no port %s", p.String())
	return corev1.ContainerPort{}
}

// listenPort is the port of DRONEHUB_LISTEN.
func listenPort(t *testing.T, listen string) int32 {
	t.Helper()
	_, p, err := net.SplitHostPort(listen)
	if err != nil {
		t.Fatalf("DRONEHUB_LISTEN %q: %v", listen, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil || n <= 0 {
		t.Fatalf("DRONEHUB_LISTEN %q: want a fixed port", listen)
	}
	return int32(n)
}

func TestManifestsDecodeStrictly(t *testing.T) {
	all := manifests(t)
	for _, want := range []string{"namespace.yaml", "serviceaccount.yaml", "deployment.yaml", "service.yaml",
		"poddisruptionbudget.yaml", secretExample, metricsAPIFile, azureQueueFile, "kustomization.yaml"} {
		if _, ok := all[want]; !ok {
			t.Errorf("deploy/kubernetes/%s is missing", want)
		}
	}
	// Everything namespaced lives in one namespace, the Namespace's.
	ns := one[corev1.Namespace](t, all["namespace.yaml"]).Name
	for file, objs := range all {
		for _, o := range objs {
			switch v := o.obj.(type) {
			case *corev1.Namespace:
			case *Kustomization:
				if v.Namespace != ns {
					t.Errorf("%s: namespace %q, want %q", file, v.Namespace, ns)
				}
			default:
				got := reflect.ValueOf(v).Elem().FieldByName("ObjectMeta").FieldByName("Namespace").String()
				if got != ns {
					t.Errorf("%s: %s in namespace %q, want %q", file, o.kind, got, ns)
				}
			}
		}
	}
}

func TestKustomization(t *testing.T) {
	k := one[Kustomization](t, decodeFile(t, filepath.Join(k8sDir, "kustomization.yaml")))
	listed := map[string]bool{}
	for _, r := range k.Resources {
		if _, err := os.Stat(filepath.Join(k8sDir, r)); err != nil {
			t.Errorf("kustomization.yaml lists %s: %v", r, err)
		}
		listed[r] = true
	}
	if listed[secretExample] {
		t.Errorf("kustomization.yaml applies %s: its keys are placeholders", secretExample)
	}
	if listed[metricsAPIFile] == listed[azureQueueFile] {
		t.Errorf("kustomization.yaml must list exactly one of %s and %s", metricsAPIFile, azureQueueFile)
	}
	// Every other manifest is applied: a new file is not forgotten.
	paths, _ := filepath.Glob(filepath.Join(k8sDir, "*.yaml"))
	for _, p := range paths {
		b := filepath.Base(p)
		if b == "kustomization.yaml" || b == secretExample || b == metricsAPIFile || b == azureQueueFile {
			continue
		}
		if !listed[b] {
			t.Errorf("kustomization.yaml does not list %s", b)
		}
	}
}

func TestDeploymentSelectors(t *testing.T) {
	c := load(t)
	d := c.deploy
	if d.Spec.Replicas != nil {
		t.Errorf("the Deployment sets replicas: %d; KEDA owns the count, and a re-apply would reset it", *d.Spec.Replicas)
	}
	podLabels := labels.Set(d.Spec.Template.Labels)
	sel, err := metav1LabelSelector(d.Spec.Selector)
	if err != nil || !sel.Matches(podLabels) {
		t.Errorf("the Deployment's selector %v does not match its pods' labels %v", d.Spec.Selector, podLabels)
	}
	if !labels.SelectorFromSet(c.svc.Spec.Selector).Matches(podLabels) || len(c.svc.Spec.Selector) == 0 {
		t.Errorf("the Service's selector %v does not match the worker pods' labels %v", c.svc.Spec.Selector, podLabels)
	}
	pdbSel, err := metav1LabelSelector(c.pdb.Spec.Selector)
	if err != nil || !pdbSel.Matches(podLabels) {
		t.Errorf("the PodDisruptionBudget's selector %v does not match the worker pods", c.pdb.Spec.Selector)
	}
	if c.pdb.Spec.MinAvailable != nil {
		t.Error("the PodDisruptionBudget sets minAvailable: with one replica a drain could never evict it; use maxUnavailable")
	}
	sa := one[corev1.ServiceAccount](t, c.all["serviceaccount.yaml"])
	if d.Spec.Template.Spec.ServiceAccountName != sa.Name {
		t.Errorf("the pods run as service account %q, the manifest defines %q", d.Spec.Template.Spec.ServiceAccountName, sa.Name)
	}
}

func TestPortsAndProbes(t *testing.T) {
	c := load(t)
	listen, ok := c.env["DRONEHUB_LISTEN"]
	if !ok {
		t.Fatal("the Deployment does not set DRONEHUB_LISTEN: the worker would listen on 127.0.0.1, unreachable from the Service")
	}
	host, _, _ := net.SplitHostPort(listen)
	if ip := net.ParseIP(host); host != "" && (ip == nil || ip.IsLoopback()) {
		t.Errorf("DRONEHUB_LISTEN %q: want all interfaces (0.0.0.0 or empty host)", listen)
	}
	lp := listenPort(t, listen)
	http := c.port(t, intstr.FromString("http"))
	if http.ContainerPort != lp || http.Protocol != corev1.ProtocolTCP {
		t.Errorf("container port http is %d/%s, the worker listens on %d/TCP", http.ContainerPort, http.Protocol, lp)
	}
	var svcPort *corev1.ServicePort
	for i := range c.svc.Spec.Ports {
		if c.svc.Spec.Ports[i].Name == "http" {
			svcPort = &c.svc.Spec.Ports[i]
		}
	}
	if svcPort == nil {
		t.Fatal("the Service has no port named http")
	}
	if got := c.port(t, svcPort.TargetPort); got.ContainerPort != lp {
		t.Errorf("the Service targets container port %d, the worker listens on %d", got.ContainerPort, lp)
	}

	// Probes hit routes the worker serves without an API key.
	routes := workerRoutes(t)
	probes := map[string]*corev1.Probe{
		"startup":   c.container.StartupProbe,
		"liveness":  c.container.LivenessProbe,
		"readiness": c.container.ReadinessProbe,
	}
	wantPath := map[string]string{"startup": "/healthz", "liveness": "/healthz", "readiness": "/readyz"}
	for name, p := range probes {
		if p == nil || p.HTTPGet == nil {
			t.Errorf("the worker has no HTTP %s probe", name)
			continue
		}
		if p.HTTPGet.Path != wantPath[name] {
			t.Errorf("%s probe on %s, want %s", name, p.HTTPGet.Path, wantPath[name])
		}
		if !routes[p.HTTPGet.Path] {
			t.Errorf("%s probe on %s, which the worker does not serve (httpapi has no \"GET %s\")", name, p.HTTPGet.Path, p.HTTPGet.Path)
		}
		if strings.HasPrefix(p.HTTPGet.Path, "/api/") {
			t.Errorf("%s probe on %s: /api routes need an API key, which probes do not send", name, p.HTTPGet.Path)
		}
		if got := c.port(t, p.HTTPGet.Port); got.ContainerPort != lp {
			t.Errorf("%s probe on port %d, the worker listens on %d", name, got.ContainerPort, lp)
		}
	}

	// Wake-ups: a fixed UDP port, declared.
	if w, ok := c.env["DRONEHUB_WAKE"]; ok && w != "off" {
		_, p, err := net.SplitHostPort(w)
		n, _ := strconv.Atoi(p)
		if err != nil || n == 0 {
			t.Errorf("DRONEHUB_WAKE %q: want a fixed port that a NetworkPolicy can allow", w)
		} else if wp := c.port(t, intstr.FromString("wake")); wp.ContainerPort != int32(n) || wp.Protocol != corev1.ProtocolUDP {
			t.Errorf("container port wake is %d/%s, DRONEHUB_WAKE is %d/UDP", wp.ContainerPort, wp.Protocol, n)
		}
	}
}

func TestEnvironmentAndSecrets(t *testing.T) {
	c := load(t)
	var names []string
	for _, e := range c.container.Env {
		names = append(names, e.Name)
	}
	checkEnvNames(t, "the Deployment", names)

	// The connection string and the keys come from the Secret, never as values.
	for _, n := range []string{"DRONEHUB_STORAGE", "DRONEHUB_API_KEYS"} {
		if _, ok := c.env[n]; ok {
			t.Errorf("the Deployment sets %s as a plain value: take it from the Secret", n)
		}
	}
	ref := c.envRefs["DRONEHUB_STORAGE"]
	if ref == nil || ref.SecretKeyRef == nil {
		t.Fatal("DRONEHUB_STORAGE does not come from a Secret")
	}
	c.secretValue(t, ref.SecretKeyRef.Name, ref.SecretKeyRef.Key)
	for n, r := range c.envRefs {
		if r.SecretKeyRef != nil {
			c.secretValue(t, r.SecretKeyRef.Name, r.SecretKeyRef.Key)
		} else if n != "DRONEHUB_STORAGE" && r.FieldRef == nil && r.ResourceFieldRef == nil {
			t.Errorf("%s comes from an unexpected source", n)
		}
	}

	// API keys: a file from a Secret volume, not the environment or argv.
	if len(c.container.Args) > 0 || len(c.container.Command) > 0 {
		t.Errorf("the worker has command %q args %q: configure it through the environment, keep keys out of argv", c.container.Command, c.container.Args)
	}
	if _, ok := c.envRefs["DRONEHUB_API_KEYS"]; ok {
		t.Error("DRONEHUB_API_KEYS comes from the environment: mount the keys as a file (DRONEHUB_API_KEYS_FILE)")
	}
	keysFile, ok := c.env["DRONEHUB_API_KEYS_FILE"]
	if !ok {
		t.Fatal("the Deployment sets no DRONEHUB_API_KEYS_FILE: a worker listening beyond loopback refuses to start without keys")
	}
	var keysFromSecret string
	for _, m := range c.container.VolumeMounts {
		rel, ok := strings.CutPrefix(keysFile, strings.TrimSuffix(m.MountPath, "/")+"/")
		if !ok {
			continue
		}
		if !m.ReadOnly {
			t.Errorf("volume %s holding the API keys is mounted read-write", m.Name)
		}
		for _, v := range c.deploy.Spec.Template.Spec.Volumes {
			if v.Name != m.Name || v.Secret == nil {
				continue
			}
			if v.Secret.DefaultMode == nil || *v.Secret.DefaultMode&0o004 != 0 {
				t.Errorf("the API keys volume's defaultMode lets every user read the keys (the worker warns); use 0440 or 0400")
			}
			for _, it := range v.Secret.Items {
				if it.Path == rel {
					keysFromSecret = c.secretValue(t, v.Secret.SecretName, it.Key)
				}
			}
		}
	}
	if keysFromSecret == "" {
		t.Fatalf("DRONEHUB_API_KEYS_FILE %s is not a file of a Secret volume", keysFile)
	}

	// The scaler's key is one of the worker's keys.
	ta := one[TriggerAuthentication](t, c.all[metricsAPIFile])
	var scalerKey string
	for _, r := range ta.Spec.SecretTargetRef {
		if r.Parameter == "token" {
			scalerKey = c.secretValue(t, r.Name, r.Key)
		}
	}
	if scalerKey == "" {
		t.Fatal("the scale signal's TriggerAuthentication gives no token parameter")
	}
	checkKeys(t, secretExample, keysFromSecret, scalerKey)
}

func TestSecurityAndResources(t *testing.T) {
	c := load(t)
	pod := c.deploy.Spec.Template.Spec
	psc := pod.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
		t.Error("the pod does not set runAsNonRoot: true")
	}
	if psc == nil || psc.RunAsUser == nil || *psc.RunAsUser == 0 {
		t.Error("the pod does not set a non-zero runAsUser")
	} else if uid, _ := dockerfileUser(t); *psc.RunAsUser != uid {
		t.Errorf("the pod runs as user %d, the image's USER is %d", *psc.RunAsUser, uid)
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Error("the pod mounts a service account token it never uses")
	}
	sc := c.container.SecurityContext
	switch {
	case sc == nil:
		t.Fatal("the worker container has no securityContext")
	case sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
		t.Error("the worker's root filesystem is writable: set readOnlyRootFilesystem: true")
	case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
		t.Error("the worker may escalate privileges: set allowPrivilegeEscalation: false")
	case sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) > 0:
		t.Error("the worker keeps capabilities: drop ALL, add none")
	case sc.Privileged != nil && *sc.Privileged:
		t.Error("the worker is privileged")
	}

	res := c.container.Resources
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		if _, ok := res.Requests[r]; !ok {
			t.Errorf("the worker requests no %s", r)
		}
	}
	limit, ok := res.Limits[corev1.ResourceMemory]
	if !ok {
		t.Fatal("the worker has no memory limit")
	}
	if gml, ok := c.env["GOMEMLIMIT"]; ok {
		if memBytes(t, gml) >= limit.Value() {
			t.Errorf("GOMEMLIMIT %s is not below the memory limit %s", gml, limit.String())
		}
	}
}

func TestTerminationCoversDrain(t *testing.T) {
	c := load(t)
	pod := c.deploy.Spec.Template.Spec
	if pod.TerminationGracePeriodSeconds == nil {
		t.Fatal("the pod has no terminationGracePeriodSeconds (the default 30 s does not cover the drain)")
	}
	var preStop int64
	if l := c.container.Lifecycle; l != nil && l.PreStop != nil {
		if l.PreStop.Sleep == nil {
			t.Error("the preStop hook is not a sleep action: the image has no shell to exec one")
		} else {
			preStop = l.PreStop.Sleep.Seconds
		}
	}
	drain := int64(drainBound(t, c.env).Seconds())
	want := preStop + drain + drainMargin
	if got := *pod.TerminationGracePeriodSeconds; got < want {
		t.Errorf("terminationGracePeriodSeconds %d < preStop %d s + drain %d s + margin %d s = %d: the kubelet would kill a draining worker",
			got, preStop, drain, drainMargin, want)
	}
}

// metricsAPI returns the scale-signal ScaledObject and its one trigger.
func metricsAPI(t *testing.T, c *cluster) (*ScaledObject, ScaleTrigger, *TriggerAuthentication) {
	t.Helper()
	so := one[ScaledObject](t, c.all[metricsAPIFile])
	ta := one[TriggerAuthentication](t, c.all[metricsAPIFile])
	if len(so.Spec.Triggers) != 1 {
		t.Fatalf("%s has %d triggers, want the metrics-api one", metricsAPIFile, len(so.Spec.Triggers))
	}
	return so, so.Spec.Triggers[0], ta
}

func checkScaledObject(t *testing.T, c *cluster, file string, so *ScaledObject, auths []*TriggerAuthentication) {
	t.Helper()
	ref := so.Spec.ScaleTargetRef
	if ref == nil || ref.Name != c.deploy.Name || (ref.Kind != "" && ref.Kind != "Deployment") || (ref.APIVersion != "" && ref.APIVersion != "apps/v1") {
		t.Errorf("%s: scaleTargetRef %+v, want the Deployment %q", file, ref, c.deploy.Name)
	}
	if so.Namespace != c.deploy.Namespace {
		t.Errorf("%s: namespace %q, the Deployment's is %q", file, so.Namespace, c.deploy.Namespace)
	}
	minR, maxR := so.Spec.MinReplicaCount, so.Spec.MaxReplicaCount
	if minR == nil || *minR < 1 {
		t.Errorf("%s: minReplicaCount must be at least 1: a worker serves the HTTP API and runs the watchdog", file)
	}
	if maxR == nil || minR == nil || *maxR < *minR {
		t.Errorf("%s: maxReplicaCount must be set and at least minReplicaCount", file)
	}
	byName := map[string]*TriggerAuthentication{}
	for _, a := range auths {
		byName[a.Name] = a
		for _, r := range a.Spec.SecretTargetRef {
			c.secretValue(t, r.Name, r.Key)
		}
	}
	for i, tr := range so.Spec.Triggers {
		allowed, ok := scalerMetadata[tr.Type]
		if !ok {
			t.Errorf("%s: trigger %d has type %q, which the tests do not know", file, i, tr.Type)
			continue
		}
		for k := range tr.Metadata {
			if !slices.Contains(allowed, k) {
				t.Errorf("%s: trigger %d (%s) has metadata %q, which that scaler does not read", file, i, tr.Type, k)
			}
		}
		if tr.AuthenticationRef == nil || byName[tr.AuthenticationRef.Name] == nil {
			t.Errorf("%s: trigger %d does not refer to a TriggerAuthentication of the same file", file, i)
		}
	}
}

func TestScaledObjectMetricsAPI(t *testing.T) {
	c := load(t)
	so, tr, ta := metricsAPI(t, c)
	checkScaledObject(t, c, metricsAPIFile, so, []*TriggerAuthentication{ta})
	if tr.Type != "metrics-api" {
		t.Fatalf("trigger type %q, want metrics-api", tr.Type)
	}
	md := tr.Metadata
	u, err := url.Parse(md["url"])
	if err != nil {
		t.Fatalf("url %q: %v", md["url"], err)
	}
	if u.Path != "/api/hub/scale" {
		t.Errorf("the scaler reads %s, want the scale signal /api/hub/scale", u.Path)
	}
	if want := c.svc.Name + "." + c.svc.Namespace + ".svc.cluster.local"; u.Hostname() != want {
		t.Errorf("the scaler asks host %q, want the Service %q", u.Hostname(), want)
	}
	if p, _ := strconv.Atoi(u.Port()); !slices.ContainsFunc(c.svc.Spec.Ports, func(sp corev1.ServicePort) bool { return sp.Port == int32(p) }) {
		t.Errorf("the scaler asks port %q, which the Service does not expose", u.Port())
	}
	if md["valueLocation"] != "recommendedWorkers" {
		t.Errorf("valueLocation %q, want recommendedWorkers", md["valueLocation"])
	}
	if f := md["format"]; f != "" && f != "json" {
		t.Errorf("format %q, want json", f)
	}
	// ceil(recommendedWorkers / targetValue) replicas: the signal is a count.
	if md["targetValue"] != "1" || tr.MetricType != "AverageValue" {
		t.Errorf("targetValue %q metricType %q: want 1 and AverageValue, so that the replicas are recommendedWorkers", md["targetValue"], tr.MetricType)
	}
	// /api/hub/scale is under /api: it needs a key, as a bearer token.
	if md["authMode"] != "bearer" {
		t.Errorf("authMode %q: the worker wants \"Authorization: Bearer KEY\"", md["authMode"])
	}
	if !slices.ContainsFunc(ta.Spec.SecretTargetRef, func(r AuthSecretTargetRef) bool { return r.Parameter == "token" }) {
		t.Error("the TriggerAuthentication gives no token")
	}
}

// TestScaleSignalServed checks the scale signal's route once the worker has
// it (it is being built alongside these manifests, issue #11).
func TestScaleSignalServed(t *testing.T) {
	if !workerRoutes(t)["/api/hub/scale"] {
		t.Skip("httpapi does not serve GET /api/hub/scale yet")
	}
	for _, dir := range []string{"httpapi", "worker", "taskhub", "metrics"} {
		if _, err := os.Stat(filepath.Join(root, dir)); err != nil {
			continue
		}
		for lit := range stringLits(t, dir) { // struct tags included
			if strings.Contains(lit, "recommendedWorkers") {
				return
			}
		}
	}
	t.Error("the worker serves /api/hub/scale but names no field recommendedWorkers, which the scaler reads")
}

func TestScaledObjectAzureQueue(t *testing.T) {
	c := load(t)
	objs := c.all[azureQueueFile]
	so := one[ScaledObject](t, objs)
	ta := one[TriggerAuthentication](t, objs)
	checkScaledObject(t, c, azureQueueFile, so, []*TriggerAuthentication{ta})

	hub := c.env["DRONEHUB_HUB"]
	if hub == "" {
		hub = "dronehub"
	}
	partitions, err := strconv.Atoi(c.env["DRONEHUB_PARTITIONS"])
	if err != nil {
		t.Fatal("the Deployment must set DRONEHUB_PARTITIONS: the azure-queue triggers list one control queue per partition")
	}
	control, workItems := queueNames(t, hub, partitions)
	want := append(slices.Clone(control), workItems)
	var got []string
	for _, tr := range so.Spec.Triggers {
		if tr.Type != "azure-queue" {
			t.Errorf("trigger %q has type %q, want azure-queue", tr.Name, tr.Type)
			continue
		}
		got = append(got, tr.Metadata["queueName"])
		if n, err := strconv.Atoi(tr.Metadata["queueLength"]); err != nil || n < 1 {
			t.Errorf("trigger %q: queueLength %q", tr.Name, tr.Metadata["queueLength"])
		}
		if tr.Metadata["queueLengthStrategy"] != "visibleonly" {
			t.Errorf("trigger %q counts invisible messages too: timers and work in progress are not backlog", tr.Name)
		}
	}
	sort.Strings(got)
	sort.Strings(want)
	if !slices.Equal(got, want) {
		t.Errorf("the azure-queue triggers watch %q, the hub %q with %d partitions has %q", got, hub, partitions, want)
	}
	if !slices.ContainsFunc(ta.Spec.SecretTargetRef, func(r AuthSecretTargetRef) bool {
		return r.Parameter == "connection" && r.Key == c.envRefs["DRONEHUB_STORAGE"].SecretKeyRef.Key
	}) {
		t.Error("the azure-queue TriggerAuthentication does not pass the worker's connection string as connection")
	}

	// Same bounds and pace as the scale-signal ScaledObject: only the signal differs.
	ms, _, _ := metricsAPI(t, c)
	if !reflect.DeepEqual(ms.Spec.MinReplicaCount, so.Spec.MinReplicaCount) ||
		!reflect.DeepEqual(ms.Spec.MaxReplicaCount, so.Spec.MaxReplicaCount) ||
		!reflect.DeepEqual(ms.Spec.Advanced, so.Spec.Advanced) ||
		!reflect.DeepEqual(ms.Spec.PollingInterval, so.Spec.PollingInterval) {
		t.Errorf("%s and %s differ in replicas, polling or behavior", metricsAPIFile, azureQueueFile)
	}
}

// metav1LabelSelector converts a LabelSelector, nil meaning none.
func metav1LabelSelector(s *metav1.LabelSelector) (labels.Selector, error) {
	if s == nil {
		return labels.Nothing(), nil
	}
	return metav1.LabelSelectorAsSelector(s)
}
