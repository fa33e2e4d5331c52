package deploy

import (
	"encoding/json"
	"go/parser"
	"go/token"
	"io/fs"
	"net"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	cmd  string // upper case: FROM, RUN, …
	args string
	line int
}

// stage is a build stage: its FROM and what follows it.
type stage struct {
	from, name string
	ins        []instruction
}

func parseDockerfile(t *testing.T) (args map[string]string, stages []*stage) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var ins []instruction
	var cur strings.Builder
	start := 0
	for i, line := range strings.Split(string(b), "\n") {
		trimmed := strings.TrimSpace(line)
		if cur.Len() == 0 && (trimmed == "" || strings.HasPrefix(trimmed, "#")) {
			continue
		}
		if cur.Len() > 0 && strings.HasPrefix(trimmed, "#") {
			continue // a comment inside a continued instruction
		}
		if cur.Len() == 0 {
			start = i + 1
		}
		if s, ok := strings.CutSuffix(trimmed, `\`); ok {
			cur.WriteString(s + " ")
			continue
		}
		cur.WriteString(trimmed)
		cmd, rest, _ := strings.Cut(cur.String(), " ")
		ins = append(ins, instruction{cmd: strings.ToUpper(cmd), args: strings.TrimSpace(rest), line: start})
		cur.Reset()
	}
	args = map[string]string{}
	for _, in := range ins {
		switch {
		case in.cmd == "FROM":
			f := strings.Fields(in.args)
			st := &stage{}
			for i := 0; i < len(f); i++ {
				switch {
				case strings.HasPrefix(f[i], "--"):
				case strings.EqualFold(f[i], "AS") && i+1 < len(f):
					st.name = f[i+1]
					i++
				default:
					st.from = f[i]
				}
			}
			stages = append(stages, st)
		case len(stages) == 0:
			if in.cmd == "ARG" {
				k, v, _ := strings.Cut(in.args, "=")
				args[k] = v
			}
		default:
			st := stages[len(stages)-1]
			st.ins = append(st.ins, in)
		}
	}
	return args, stages
}

// final returns the last stage's instructions of a kind.
func (s *stage) all(cmd string) []instruction {
	var out []instruction
	for _, in := range s.ins {
		if in.cmd == cmd {
			out = append(out, in)
		}
	}
	return out
}

// dockerfileUser returns the numeric user and group the image runs as.
func dockerfileUser(t *testing.T) (uid, gid int64) {
	t.Helper()
	_, stages := parseDockerfile(t)
	users := stages[len(stages)-1].all("USER")
	if len(users) == 0 {
		t.Fatal("the final stage sets no USER: the worker would run as root")
	}
	u, g, _ := strings.Cut(users[len(users)-1].args, ":")
	uid, err := strconv.ParseInt(u, 10, 64)
	if err != nil {
		t.Fatalf("USER %q is not numeric: Kubernetes' runAsNonRoot cannot verify a name", users[len(users)-1].args)
	}
	gid = uid
	if g != "" {
		if gid, err = strconv.ParseInt(g, 10, 64); err != nil {
			t.Fatalf("USER %q: the group is not numeric", users[len(users)-1].args)
		}
	}
	return uid, gid
}

func TestDockerfile(t *testing.T) {
	args, stages := parseDockerfile(t)
	if len(stages) < 2 {
		t.Fatalf("the Dockerfile has %d stage(s): want a build stage and a runtime stage", len(stages))
	}
	build, final := stages[0], stages[len(stages)-1]
	if build.name == "" {
		t.Error("the build stage has no name (FROM … AS build)")
	}
	if !strings.HasPrefix(final.from, "gcr.io/distroless/static") && final.from != "scratch" {
		t.Errorf("the runtime stage is FROM %s: want distroless/static or scratch, with no shell or package manager", final.from)
	}

	// Go: the version of go.mod, a static, trimmed build of cmd/dronehub.
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	goVer := regexp.MustCompile(`(?m)^go (\S+)$`).FindSubmatch(gomod)
	if goVer == nil {
		t.Fatal("go.mod has no go directive")
	}
	if args["GO_VERSION"] != string(goVer[1]) {
		t.Errorf("ARG GO_VERSION=%s, go.mod says go %s", args["GO_VERSION"], goVer[1])
	}
	if !strings.Contains(build.from, "golang:${GO_VERSION}") {
		t.Errorf("the build stage is FROM %s, want golang:${GO_VERSION}", build.from)
	}
	var out string
	for _, in := range build.all("RUN") {
		if !strings.Contains(in.args, "go build") {
			continue
		}
		for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "-ldflags='-s -w'", "./cmd/dronehub"} {
			if !strings.Contains(in.args, want) {
				t.Errorf("Dockerfile line %d: the go build lacks %s", in.line, want)
			}
		}
		if m := regexp.MustCompile(`-o (\S+)`).FindStringSubmatch(in.args); m != nil {
			out = m[1]
		}
	}
	if out == "" {
		t.Fatal("no RUN go build -o … in the build stage")
	}

	// Runtime: the binary from the build stage, as entrypoint, non-root.
	var binary string
	for _, in := range final.all("COPY") {
		f := strings.Fields(in.args)
		if len(f) >= 3 && slicesContains(f, "--from="+build.name) && f[len(f)-2] == out {
			binary = f[len(f)-1]
		}
	}
	if binary == "" {
		t.Fatalf("the runtime stage does not COPY --from=%s %s", build.name, out)
	}
	eps := final.all("ENTRYPOINT")
	if len(eps) != 1 {
		t.Fatalf("want one ENTRYPOINT in the runtime stage, found %d", len(eps))
	}
	var ep []string
	if err := json.Unmarshal([]byte(eps[0].args), &ep); err != nil {
		t.Fatalf("ENTRYPOINT %s is not in exec form (a JSON array): there is no shell to run it", eps[0].args)
	}
	if len(ep) != 2 || ep[0] != binary || ep[1] != "worker" {
		t.Errorf("ENTRYPOINT %q, want [%q \"worker\"]", ep, binary)
	}
	if uid, gid := dockerfileUser(t); uid == 0 || gid == 0 {
		t.Errorf("USER %d:%d: the worker must not run as root", uid, gid)
	}
	if len(final.all("CMD")) > 0 {
		t.Error("the runtime stage has a CMD: configure the worker through DRONEHUB_* variables, not arguments")
	}

	// No configuration that belongs in a secret; the listen port is exposed.
	var listen string
	for _, in := range final.all("ENV") {
		k, v, _ := strings.Cut(in.args, "=")
		switch k {
		case "DRONEHUB_STORAGE", "DRONEHUB_API_KEYS", "DRONEHUB_API_KEYS_FILE":
			t.Errorf("the image sets %s: secrets come from the environment or a mounted file at run time", k)
		case "DRONEHUB_LISTEN":
			listen = v
		}
	}
	if listen != "" {
		_, p, err := net.SplitHostPort(listen)
		if err != nil {
			t.Fatalf("ENV DRONEHUB_LISTEN=%s: %v", listen, err)
		}
		exposed := false
		for _, in := range final.all("EXPOSE") {
			exposed = exposed || slicesContains(strings.Fields(in.args), p) || slicesContains(strings.Fields(in.args), p+"/tcp")
		}
		if !exposed {
			t.Errorf("the worker listens on port %s, which the image does not EXPOSE", p)
		}
	}
}

func slicesContains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// ignorePatterns reads .dockerignore.
func ignorePatterns(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	var pats []string
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(line, "!") {
			t.Fatalf(".dockerignore: exceptions (%s) are not handled by this test", line)
		}
		pats = append(pats, strings.TrimPrefix(path.Clean(line), "/"))
	}
	return pats
}

// ignored reports whether .dockerignore keeps a path (slash-separated,
// relative to the repository) out of the build context: a pattern matches
// the path or one of its parent directories; **/ matches at any depth.
func ignored(pats []string, p string) bool {
	parts := strings.Split(p, "/")
	for _, pat := range pats {
		if rest, ok := strings.CutPrefix(pat, "**/"); ok {
			for i := range parts {
				if m, _ := path.Match(rest, strings.Join(parts[i:], "/")); m {
					return true
				}
				if m, _ := path.Match(rest, parts[i]); m {
					return true
				}
			}
			continue
		}
		for i := 1; i <= len(parts); i++ {
			if m, _ := path.Match(pat, strings.Join(parts[:i], "/")); m {
				return true
			}
		}
	}
	return false
}

// TestDockerignore checks that the build context leaves out what is large or
// private and keeps everything the binary is built from: every package a
// kept Go file imports, and every file it embeds.
func TestDockerignore(t *testing.T) {
	pats := ignorePatterns(t)
	for _, p := range []string{".git/config", "node_modules/azurite/package.json", "dronehub.db", "deploy/go.mod", "dronehub"} {
		if !ignored(pats, p) {
			t.Errorf(".dockerignore lets %s into the build context", p)
		}
	}
	for _, p := range []string{"go.mod", "go.sum", "cmd/dronehub/main.go", "dashboard/static/index.html"} {
		if ignored(pats, p) {
			t.Errorf(".dockerignore leaves out %s, which the build needs", p)
		}
	}
	const module = "github.com/dronehub/dronehub/"
	fset := token.NewFileSet()
	embedRe := regexp.MustCompile(`(?m)^//go:embed (.+)$`)
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		rel = filepath.ToSlash(rel)
		if rel != "." && ignored(pats, rel) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() && rel != "." {
			if _, err := os.Stat(filepath.Join(p, "go.mod")); err == nil {
				return filepath.SkipDir // another module
			}
		}
		if d.IsDir() || !strings.HasSuffix(p, ".go") {
			return nil
		}
		src, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		f, err := parser.ParseFile(fset, p, src, parser.ImportsOnly)
		if err != nil {
			return err
		}
		for _, imp := range f.Imports {
			ip, _ := strconv.Unquote(imp.Path.Value)
			if pkg, ok := strings.CutPrefix(ip, module); ok && ignored(pats, pkg+"/x.go") {
				t.Errorf("%s imports %s, which .dockerignore leaves out", rel, ip)
			}
		}
		for _, m := range embedRe.FindAllStringSubmatch(string(src), -1) {
			for _, e := range strings.Fields(m[1]) {
				if ignored(pats, path.Join(path.Dir(rel), e)) {
					t.Errorf("%s embeds %s, which .dockerignore leaves out", rel, e)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
