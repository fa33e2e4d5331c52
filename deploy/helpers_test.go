package deploy

import (
	"bytes"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// root is the dronehub repository, seen from this module.
const root = ".."

// object is one decoded manifest document.
type object struct {
	file string // path relative to deploy/
	kind string
	obj  any // a pointer to the typed object
}

// kinds maps apiVersion/kind to a new typed object. Anything else is an error:
// a manifest the tests cannot check has no place here.
var kinds = map[string]func() any{
	"v1/Namespace":                                  func() any { return new(corev1.Namespace) },
	"v1/ServiceAccount":                             func() any { return new(corev1.ServiceAccount) },
	"v1/Secret":                                     func() any { return new(corev1.Secret) },
	"v1/Service":                                    func() any { return new(corev1.Service) },
	"apps/v1/Deployment":                            func() any { return new(appsv1.Deployment) },
	"policy/v1/PodDisruptionBudget":                 func() any { return new(policyv1.PodDisruptionBudget) },
	"keda.sh/v1alpha1/ScaledObject":                 func() any { return new(ScaledObject) },
	"keda.sh/v1alpha1/TriggerAuthentication":        func() any { return new(TriggerAuthentication) },
	"kustomize.config.k8s.io/v1beta1/Kustomization": func() any { return new(Kustomization) },
}

// splitDocs splits a YAML stream on its "---" lines and drops documents
// holding nothing but comments.
func splitDocs(b []byte) [][]byte {
	var docs [][]byte
	var cur bytes.Buffer
	flush := func() {
		var m any
		if err := yaml.Unmarshal(cur.Bytes(), &m); err != nil || m != nil {
			docs = append(docs, append([]byte(nil), cur.Bytes()...))
		}
		cur.Reset()
	}
	for _, line := range strings.SplitAfter(string(b), "\n") {
		if strings.TrimRight(line, " \t\r\n") == "---" {
			flush()
			continue
		}
		cur.WriteString(line)
	}
	flush()
	return docs
}

// strict decodes YAML into v, failing on unknown fields and duplicate keys
// (YAML to JSON, then encoding/json with DisallowUnknownFields).
func strict(doc []byte, v any) error {
	return yaml.UnmarshalStrict(doc, v)
}

// decodeFile decodes every document of a manifest file strictly into its
// Kubernetes (or KEDA, or kustomize) type.
func decodeFile(t *testing.T, rel string) []object {
	t.Helper()
	b, err := os.ReadFile(rel)
	if err != nil {
		t.Fatal(err)
	}
	var out []object
	for i, doc := range splitDocs(b) {
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			t.Fatalf("%s, document %d: %v", rel, i+1, err)
		}
		key := tm.APIVersion + "/" + tm.Kind
		mk, ok := kinds[key]
		if !ok {
			t.Fatalf("%s, document %d: apiVersion %q kind %q is not one the tests know", rel, i+1, tm.APIVersion, tm.Kind)
		}
		obj := mk()
		if err := strict(doc, obj); err != nil {
			t.Fatalf("%s, document %d (%s): %v", rel, i+1, tm.Kind, err)
		}
		out = append(out, object{file: rel, kind: tm.Kind, obj: obj})
	}
	if len(out) == 0 {
		t.Fatalf("%s holds no manifest", rel)
	}
	return out
}

// one returns the single object of type T among objs.
func one[T any](t *testing.T, objs []object) *T {
	t.Helper()
	var found []*T
	for _, o := range objs {
		if v, ok := o.obj.(*T); ok {
			found = append(found, v)
		}
	}
	if len(found) != 1 {
		var zero T
		t.Fatalf("want exactly one %T, found %d", zero, len(found))
	}
	return found[0]
}

// goFiles parses the non-test Go files of a directory of the repository.
func goFiles(t *testing.T, dir string) (*token.FileSet, []*ast.File) {
	t.Helper()
	fset := token.NewFileSet()
	paths, err := filepath.Glob(filepath.Join(root, dir, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	var files []*ast.File
	for _, p := range paths {
		if strings.HasSuffix(p, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, p, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatalf("parsing %s: %v", p, err)
		}
		files = append(files, f)
	}
	if len(files) == 0 {
		t.Fatalf("no Go files in %s", dir)
	}
	return fset, files
}

// stringLits returns every string literal in the non-test Go files of dir.
func stringLits(t *testing.T, dir string) map[string]bool {
	t.Helper()
	_, files := goFiles(t, dir)
	lits := map[string]bool{}
	for _, f := range files {
		ast.Inspect(f, func(n ast.Node) bool {
			if bl, ok := n.(*ast.BasicLit); ok && bl.Kind == token.STRING {
				if s, err := strconv.Unquote(bl.Value); err == nil {
					lits[s] = true
				}
			}
			return true
		})
	}
	return lits
}

// workerRoutes returns the paths the worker's HTTP API serves to GET, from
// the route patterns ("GET /readyz") written as literals in httpapi.
func workerRoutes(t *testing.T) map[string]bool {
	t.Helper()
	routes := map[string]bool{}
	for s := range stringLits(t, "httpapi") {
		if p, ok := strings.CutPrefix(s, "GET /"); ok && !strings.ContainsAny(p, " \n") {
			routes["/"+p] = true
		}
	}
	return routes
}

// flagDef is one flag of `dronehub worker`, from internal/cli.
type flagDef struct {
	name   string
	method string   // StringVar, DurationVar, Var, …
	def    ast.Expr // the default value's expression (nil for Var)
}

// env is the flag's environment twin (internal/cli envName).
func (f flagDef) env() string {
	return "DRONEHUB_" + strings.ToUpper(strings.ReplaceAll(f.name, "-", "_"))
}

// workerFlags reads the flags the worker command defines: the calls
// fs.XxxVar(&f.field, "name", default, usage) in (*App).worker.
func workerFlags(t *testing.T) map[string]flagDef {
	t.Helper()
	_, files := goFiles(t, "internal/cli")
	flags := map[string]flagDef{}
	for _, f := range files {
		for _, d := range f.Decls {
			fn, ok := d.(*ast.FuncDecl)
			if !ok || fn.Name.Name != "worker" || fn.Recv == nil || fn.Body == nil {
				continue
			}
			ast.Inspect(fn.Body, func(n ast.Node) bool {
				call, ok := n.(*ast.CallExpr)
				if !ok {
					return true
				}
				sel, ok := call.Fun.(*ast.SelectorExpr)
				if !ok || !strings.HasSuffix(sel.Sel.Name, "Var") || len(call.Args) < 3 {
					return true
				}
				if x, ok := sel.X.(*ast.Ident); !ok || x.Name != "fs" {
					return true
				}
				lit, ok := call.Args[1].(*ast.BasicLit)
				if !ok || lit.Kind != token.STRING {
					return true
				}
				name, _ := strconv.Unquote(lit.Value)
				fd := flagDef{name: name, method: sel.Sel.Name}
				if sel.Sel.Name != "Var" {
					fd.def = call.Args[2]
				}
				flags[name] = fd
				return true
			})
		}
	}
	if len(flags) < 10 {
		t.Fatalf("found only %d worker flags in internal/cli: has (*App).worker moved?", len(flags))
	}
	return flags
}

// durationExpr evaluates a flag default such as 30*time.Second or
// time.Minute.
func durationExpr(e ast.Expr) (time.Duration, error) {
	switch e := e.(type) {
	case *ast.ParenExpr:
		return durationExpr(e.X)
	case *ast.BasicLit:
		if e.Kind == token.INT {
			n, err := strconv.ParseInt(e.Value, 0, 64)
			return time.Duration(n), err
		}
	case *ast.SelectorExpr:
		if x, ok := e.X.(*ast.Ident); ok && x.Name == "time" {
			switch e.Sel.Name {
			case "Nanosecond":
				return time.Nanosecond, nil
			case "Microsecond":
				return time.Microsecond, nil
			case "Millisecond":
				return time.Millisecond, nil
			case "Second":
				return time.Second, nil
			case "Minute":
				return time.Minute, nil
			case "Hour":
				return time.Hour, nil
			}
		}
	case *ast.BinaryExpr:
		if e.Op == token.MUL {
			a, err := durationExpr(e.X)
			if err != nil {
				return 0, err
			}
			b, err := durationExpr(e.Y)
			if err != nil {
				return 0, err
			}
			return a * b, nil
		}
	}
	return 0, fmt.Errorf("cannot evaluate %T as a duration", e)
}

// drainBound is how long a worker may take to stop after SIGTERM, given its
// environment: the largest of its duration flags named shutdown-* or drain-*
// (today --shutdown-grace), each from the environment or its default.
func drainBound(t *testing.T, env map[string]string) time.Duration {
	t.Helper()
	var bound time.Duration
	var seen []string
	for _, f := range workerFlags(t) {
		if f.method != "DurationVar" || !(strings.HasPrefix(f.name, "shutdown") || strings.HasPrefix(f.name, "drain")) {
			continue
		}
		seen = append(seen, f.name)
		var d time.Duration
		if v, ok := env[f.env()]; ok {
			var err error
			if d, err = time.ParseDuration(v); err != nil {
				t.Fatalf("%s=%q: %v", f.env(), v, err)
			}
		} else {
			var err error
			if d, err = durationExpr(f.def); err != nil {
				t.Fatalf("--%s's default: %v; set %s explicitly in the manifest", f.name, err, f.env())
			}
		}
		bound = max(bound, d)
	}
	if len(seen) == 0 {
		t.Fatal("the worker has no --shutdown-grace (or drain) flag any more: which flag bounds its drain now?")
	}
	sort.Strings(seen)
	t.Logf("drain bound %v from --%s", bound, strings.Join(seen, ", --"))
	return bound
}

// checkEnvNames fails on a DRONEHUB_* variable that is no worker flag's twin.
func checkEnvNames(t *testing.T, where string, names []string) {
	t.Helper()
	known := map[string]bool{}
	for _, f := range workerFlags(t) {
		known[f.env()] = true
	}
	for _, n := range names {
		if strings.HasPrefix(n, "DRONEHUB_") && !known[n] {
			t.Errorf("%s sets %s, which no flag of dronehub worker reads", where, n)
		}
	}
}

// keysFromFile parses an API keys file as the worker does
// (internal/cli readKeysFile): one per line or comma-separated, '#' comments.
func keysFromFile(s string) []string {
	var keys []string
	for _, line := range strings.Split(s, "\n") {
		line, _, _ = strings.Cut(line, "#")
		for _, k := range strings.Split(line, ",") {
			if k = strings.TrimSpace(k); k != "" {
				keys = append(keys, k)
			}
		}
	}
	return keys
}

// checkKeys checks an example keys file and the scaler's key against it.
func checkKeys(t *testing.T, where, file, scalerKey string) {
	t.Helper()
	keys := keysFromFile(file)
	if len(keys) == 0 {
		t.Errorf("%s: the API keys file holds no key", where)
	}
	found := false
	for _, k := range keys {
		if len(k) < 16 {
			t.Errorf("%s: API key %q is shorter than the 16 characters the worker requires", where, k)
		}
		found = found || k == scalerKey
	}
	if !found {
		t.Errorf("%s: the scaler's key %q is not one of the worker's API keys: KEDA would get 401", where, scalerKey)
	}
}

// queueNames returns the queues of a hub as backend/azurestorage/names.go
// names them, after checking that file still uses these rules.
func queueNames(t *testing.T, hub string, partitions int) (control []string, workItems string) {
	t.Helper()
	lits := stringLits(t, "backend/azurestorage")
	for _, want := range []string{"%s-control-%02d", "-workitems"} {
		if !lits[want] {
			t.Fatalf("backend/azurestorage no longer names its queues with %q: update queueNames and the azure-queue triggers", want)
		}
	}
	lower := strings.ToLower(hub)
	for p := 0; p < partitions; p++ {
		control = append(control, fmt.Sprintf("%s-control-%02d", lower, p))
	}
	return control, lower + "-workitems"
}

// memBytes parses a memory size: a Kubernetes quantity's binary suffixes or
// GOMEMLIMIT's (B, KiB, MiB, GiB).
func memBytes(t *testing.T, s string) int64 {
	t.Helper()
	m := regexp.MustCompile(`^(\d+)(B|Ki|KiB|Mi|MiB|Gi|GiB)?$`).FindStringSubmatch(s)
	if m == nil {
		t.Fatalf("cannot read the memory size %q", s)
	}
	n, _ := strconv.ParseInt(m[1], 10, 64)
	switch strings.TrimSuffix(m[2], "B") {
	case "Ki":
		n <<= 10
	case "Mi":
		n <<= 20
	case "Gi":
		n <<= 30
	}
	return n
}
