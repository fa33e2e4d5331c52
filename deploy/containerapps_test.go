package deploy

import (
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const caDir = "containerapps"

func loadContainerApp(t *testing.T) (*ContainerApp, *CAContainer) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(caDir, "dronehub.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var app ContainerApp
	if err := strict(b, &app); err != nil {
		t.Fatalf("containerapps/dronehub.yaml: %v", err)
	}
	if app.Type != "Microsoft.App/containerApps" {
		t.Errorf("type %q, want Microsoft.App/containerApps", app.Type)
	}
	cs := app.Properties.Template.Containers
	if len(cs) != 1 {
		t.Fatalf("the container app has %d containers, want the worker alone", len(cs))
	}
	return &app, &cs[0]
}

func caSecrets(app *ContainerApp) map[string]string {
	m := map[string]string{}
	for _, s := range app.Properties.Configuration.Secrets {
		m[s.Name] = s.Value
	}
	return m
}

func TestContainerApp(t *testing.T) {
	app, c := loadContainerApp(t)
	secrets := caSecrets(app)
	env := map[string]string{}
	var names []string
	for _, e := range c.Env {
		names = append(names, e.Name)
		if e.SecretRef != "" {
			if _, ok := secrets[e.SecretRef]; !ok {
				t.Errorf("%s reads secret %q, which the app does not define", e.Name, e.SecretRef)
			}
			env[e.Name] = "secret:" + e.SecretRef
		} else {
			env[e.Name] = e.Value
		}
	}
	checkEnvNames(t, "containerapps/dronehub.yaml", names)
	if !strings.HasPrefix(env["DRONEHUB_STORAGE"], "secret:") {
		t.Error("DRONEHUB_STORAGE is not taken from a secret")
	}
	if _, ok := env["DRONEHUB_API_KEYS"]; ok {
		t.Error("the app sets DRONEHUB_API_KEYS: mount the keys as a file (DRONEHUB_API_KEYS_FILE)")
	}

	// The same worker as on Kubernetes: image, hub, partitions, drain.
	k := load(t)
	if c.Image != k.container.Image {
		t.Errorf("image %q, the Kubernetes Deployment runs %q", c.Image, k.container.Image)
	}
	for _, n := range []string{"DRONEHUB_LISTEN", "DRONEHUB_HUB", "DRONEHUB_PARTITIONS", "DRONEHUB_API_KEYS_FILE", "DRONEHUB_SHUTDOWN_GRACE"} {
		if env[n] != k.env[n] {
			t.Errorf("%s=%q, on Kubernetes %q", n, env[n], k.env[n])
		}
	}

	// Ingress, probes and the listen port agree; probes need no key.
	lp := listenPort(t, env["DRONEHUB_LISTEN"])
	ing := app.Properties.Configuration.Ingress
	if ing == nil || ing.TargetPort != lp {
		t.Errorf("ingress %+v does not target the worker's port %d", ing, lp)
	}
	routes := workerRoutes(t)
	want := map[string]string{"Startup": "/healthz", "Liveness": "/healthz", "Readiness": "/readyz"}
	seen := map[string]bool{}
	for _, p := range c.Probes {
		seen[p.Type] = true
		if p.HTTPGet == nil {
			t.Errorf("%s probe is not an HTTP probe", p.Type)
			continue
		}
		if p.HTTPGet.Path != want[p.Type] || !routes[p.HTTPGet.Path] {
			t.Errorf("%s probe on %s, want %s (served: %v)", p.Type, p.HTTPGet.Path, want[p.Type], routes[p.HTTPGet.Path])
		}
		if p.HTTPGet.Port != lp {
			t.Errorf("%s probe on port %d, the worker listens on %d", p.Type, p.HTTPGet.Port, lp)
		}
		// Container Apps' limits for probes.
		if p.FailureThreshold > 10 || p.PeriodSeconds > 240 || p.TimeoutSeconds > 240 || p.InitialDelaySeconds > 60 {
			t.Errorf("%s probe exceeds Container Apps' limits (failureThreshold ≤ 10, period and timeout ≤ 240 s, initial delay ≤ 60 s)", p.Type)
		}
	}
	for typ := range want {
		if !seen[typ] {
			t.Errorf("no %s probe", typ)
		}
	}

	// The API keys file is a mounted secret.
	keysFile := env["DRONEHUB_API_KEYS_FILE"]
	var keys string
	for _, m := range c.VolumeMounts {
		rel, ok := strings.CutPrefix(keysFile, strings.TrimSuffix(m.MountPath, "/")+"/")
		if !ok {
			continue
		}
		for _, v := range app.Properties.Template.Volumes {
			if v.Name != m.VolumeName || v.StorageType != "Secret" {
				continue
			}
			for _, s := range v.Secrets {
				if s.Path == rel {
					var ok bool
					if keys, ok = secrets[s.SecretRef]; !ok {
						t.Errorf("volume %s mounts secret %q, which the app does not define", v.Name, s.SecretRef)
					}
				}
			}
		}
	}
	if keys == "" {
		t.Fatalf("DRONEHUB_API_KEYS_FILE %s is not a file of a Secret volume", keysFile)
	}

	// Resources and the drain.
	if c.Resources.CPU <= 0 || c.Resources.Memory == "" {
		t.Error("the worker has no CPU or memory")
	} else if gml, ok := env["GOMEMLIMIT"]; ok && memBytes(t, gml) >= memBytes(t, c.Resources.Memory) {
		t.Errorf("GOMEMLIMIT %s is not below the memory %s", gml, c.Resources.Memory)
	}
	tg := app.Properties.Template.TerminationGracePeriodSeconds
	drain := int64(drainBound(t, env).Seconds())
	if tg == nil || *tg < drain+drainMargin || *tg > 600 {
		t.Errorf("terminationGracePeriodSeconds %v: want the drain %d s + margin %d s, at most 600", tg, drain, drainMargin)
	}

	// Scaling: the scale-signal rule, as on Kubernetes.
	scale := app.Properties.Template.Scale
	if scale == nil || len(scale.Rules) != 1 || scale.Rules[0].Custom == nil {
		t.Fatal("want one custom scale rule, the scale signal")
	}
	if scale.MinReplicas == nil || *scale.MinReplicas < 1 {
		t.Error("minReplicas must be at least 1: a worker serves the scale signal, the HTTP API and the watchdog")
	}
	rule := scale.Rules[0].Custom
	_, tr, _ := metricsAPI(t, k)
	if rule.Type != tr.Type {
		t.Fatalf("rule type %q, on Kubernetes %q", rule.Type, tr.Type)
	}
	u, err := url.Parse(rule.Metadata["url"])
	if err != nil || u.Path != "/api/hub/scale" {
		t.Errorf("the rule reads %q, want the scale signal /api/hub/scale", rule.Metadata["url"])
	}
	if !maps.EqualFunc(withoutURL(rule.Metadata), withoutURL(tr.Metadata), func(a, b string) bool { return a == b }) {
		t.Errorf("the rule's metadata %v differs from the Kubernetes trigger's %v", rule.Metadata, tr.Metadata)
	}
	var scalerKey string
	for _, a := range rule.Auth {
		if a.TriggerParameter == "token" {
			scalerKey = secrets[a.SecretRef]
		}
	}
	checkKeys(t, "containerapps/dronehub.yaml", keys, scalerKey)
}

func withoutURL(m map[string]string) map[string]string {
	c := maps.Clone(m)
	delete(c, "url")
	return c
}

func TestContainerAppQueueRules(t *testing.T) {
	app, _ := loadContainerApp(t)
	secrets := caSecrets(app)
	b, err := os.ReadFile(filepath.Join(caDir, "scale-azure-queue.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var scale CAScale
	if err := strict(b, &scale); err != nil {
		t.Fatalf("containerapps/scale-azure-queue.yaml: %v", err)
	}
	k := load(t)
	so := one[ScaledObject](t, k.all[azureQueueFile])
	if len(scale.Rules) != len(so.Spec.Triggers) {
		t.Fatalf("%d rules, the Kubernetes ScaledObject has %d triggers", len(scale.Rules), len(so.Spec.Triggers))
	}
	for i, r := range scale.Rules {
		tr := so.Spec.Triggers[i]
		if r.Custom == nil || r.Custom.Type != tr.Type || !maps.Equal(r.Custom.Metadata, tr.Metadata) {
			t.Errorf("rule %q differs from the Kubernetes trigger %q", r.Name, tr.Name)
			continue
		}
		ok := false
		for _, a := range r.Custom.Auth {
			_, defined := secrets[a.SecretRef]
			ok = ok || (a.TriggerParameter == "connection" && defined)
		}
		if !ok {
			t.Errorf("rule %q passes no connection from a secret of dronehub.yaml", r.Name)
		}
	}
	if scale.MinReplicas == nil || *scale.MinReplicas < 1 {
		t.Error("minReplicas must be at least 1")
	}
}
