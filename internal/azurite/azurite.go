// Package azurite runs Azurite, the Azure Storage emulator, for tests.
//
// Azurite is a Node.js program installed by `npm ci` at the module root (see
// package.json). Start launches one for a test; a Shared value lets every
// test of a binary use one server, which saves seconds per test on a small
// machine. When Azurite is not installed the test is skipped, or failed
// when the environment variable CI is "true"; when it is installed but does
// not start, the test always fails.
package azurite

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

// Well-known development storage credentials (public, documented by Microsoft).
const (
	AccountName = "devstoreaccount1"
	AccountKey  = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

// Options configures a server. The zero value runs an in-memory server.
type Options struct {
	// Location is a directory for on-disk persistence; "" keeps all data in
	// memory (lost on Stop).
	Location string
	// StartTimeout bounds the wait for the ports to open; default 30s.
	StartTimeout time.Duration
}

// Server is a running (or stopped) Azurite process.
type Server struct {
	opts Options
	bin  string
	dir  string // module root, the working directory

	mu                             sync.Mutex
	cmd                            *exec.Cmd
	exited                         chan struct{}
	blobPort, queuePort, tablePort int
}

// Start launches Azurite for the test and stops it when the test ends.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	s, err := start(opts)
	if err != nil {
		unavailable(t, err)
	}
	t.Cleanup(s.Stop)
	return s
}

// errNotInstalled marks the one failure that skips a test outside CI:
// node_modules/.bin/azurite is missing.
var errNotInstalled = errors.New("azurite is not installed")

func unavailable(t testing.TB, err error) {
	t.Helper()
	if os.Getenv("CI") == "true" || !errors.Is(err, errNotInstalled) {
		t.Fatalf("azurite: %v", err)
		return
	}
	t.Skipf("azurite is not available (run `npm ci` at the module root to install it): %v", err)
}

func start(opts Options) (*Server, error) {
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 30 * time.Second
	}
	root, err := moduleRoot()
	if err != nil {
		return nil, err
	}
	bin := filepath.Join(root, "node_modules", ".bin", "azurite")
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("%w: %s not found: %v", errNotInstalled, bin, err)
	}
	s := &Server{opts: opts, bin: bin, dir: root}
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		ports, err := freePorts(3)
		if err != nil {
			return nil, err
		}
		s.blobPort, s.queuePort, s.tablePort = ports[0], ports[1], ports[2]
		if lastErr = s.launch(); lastErr == nil {
			return s, nil
		}
	}
	return nil, lastErr
}

// moduleRoot walks up from the working directory to the directory holding go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find module root: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("find module root: no go.mod above the working directory")
		}
		dir = parent
	}
}

func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("pick a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// launch starts the process on the chosen ports and waits until they accept.
func (s *Server) launch() error {
	args := []string{
		"--blobHost", "127.0.0.1", "--blobPort", strconv.Itoa(s.blobPort),
		"--queueHost", "127.0.0.1", "--queuePort", strconv.Itoa(s.queuePort),
		"--tableHost", "127.0.0.1", "--tablePort", strconv.Itoa(s.tablePort),
		"--skipApiVersionCheck", "--loose", "--silent", "--disableTelemetry",
	}
	if s.opts.Location != "" {
		args = append(args, "--location", s.opts.Location)
	} else {
		args = append(args, "--inMemoryPersistence")
	}
	cmd := exec.Command(s.bin, args...)
	cmd.Dir = s.dir
	out := &bytes.Buffer{}
	cmd.Stdout = &lockedWriter{w: out}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", s.bin, err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	s.mu.Lock()
	s.cmd, s.exited = cmd, exited
	s.mu.Unlock()

	deadline := time.Now().Add(s.opts.StartTimeout)
	for _, p := range []int{s.blobPort, s.queuePort, s.tablePort} {
		for {
			c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(p), 200*time.Millisecond)
			if err == nil {
				c.Close()
				break
			}
			select {
			case <-exited:
				return fmt.Errorf("azurite exited before listening on port %d: %s", p, cmd.Stdout.(*lockedWriter).String())
			case <-time.After(20 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				s.Stop()
				return fmt.Errorf("azurite did not listen on port %d within %s", p, s.opts.StartTimeout)
			}
		}
	}
	return nil
}

// Stop ends the process (gracefully, so on-disk data is flushed); it is
// safe to call more than once.
func (s *Server) Stop() {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	// SIGINT lets Azurite flush on-disk metadata; kill it if it lingers.
	_ = cmd.Process.Signal(os.Interrupt)
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
	}
}

// Restart stops the server and starts it again on the same ports. With
// in-memory persistence the data is gone; with Location it survives.
func (s *Server) Restart() error {
	s.Stop()
	var err error
	deadline := time.Now().Add(s.opts.StartTimeout)
	for {
		// The old process's ports may linger briefly; retry until the deadline.
		if err = s.launch(); err == nil || time.Now().After(deadline) {
			return err
		}
	}
}

// ConnectionString returns an account-key connection string with explicit
// blob, queue and table endpoints.
func (s *Server) ConnectionString() string {
	return fmt.Sprintf("DefaultEndpointsProtocol=http;AccountName=%s;AccountKey=%s;BlobEndpoint=%s;QueueEndpoint=%s;TableEndpoint=%s;",
		AccountName, AccountKey, s.endpoint(s.blobPort), s.endpoint(s.queuePort), s.endpoint(s.tablePort))
}

func (s *Server) endpoint(port int) string {
	return fmt.Sprintf("http://127.0.0.1:%d/%s", port, AccountName)
}

// BlobEndpoint, QueueEndpoint and TableEndpoint return the service URLs.
func (s *Server) BlobEndpoint() string  { return s.endpoint(s.blobPort) }
func (s *Server) QueueEndpoint() string { return s.endpoint(s.queuePort) }
func (s *Server) TableEndpoint() string { return s.endpoint(s.tablePort) }

// Shared is one server for every test of a binary. Declare it as a variable
// in the test package, call Get from tests, and Close from TestMain after
// m.Run:
//
//	var azr azurite.Shared
//	func TestMain(m *testing.M) { code := m.Run(); azr.Close(); os.Exit(code) }
type Shared struct {
	// Options configures the server started by the first Get.
	Options Options

	once sync.Once
	srv  *Server
	err  error
}

// Get starts the server on first use and returns it; tests that cannot
// have one fail, or are skipped when Azurite is not installed and CI is not
// "true".
func (s *Shared) Get(t testing.TB) *Server {
	t.Helper()
	s.once.Do(func() { s.srv, s.err = start(s.Options) })
	if s.err != nil {
		unavailable(t, s.err)
	}
	return s.srv
}

// Close stops the shared server if one was started.
func (s *Shared) Close() {
	s.once.Do(func() { s.err = errors.New("closed") })
	if s.srv != nil {
		s.srv.Stop()
	}
}

type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (l *lockedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.String()
}

// ErrNotInstalled is wrapped by Launch's error when Azurite is not installed
// at the module root (node_modules/.bin/azurite is missing).
var ErrNotInstalled = errNotInstalled

// Launch starts Azurite outside a test, with the ports and options Start
// uses; the caller must Stop it. Its error wraps ErrNotInstalled when
// Azurite is not installed at the module root, found from the working
// directory; any other error means it is installed but did not start.
func Launch(opts Options) (*Server, error) {
	return start(opts)
}

// Version returns the version of the Azurite installed at the module root,
// or "" when it cannot be read.
func Version() string {
	root, err := moduleRoot()
	if err != nil {
		return ""
	}
	b, err := os.ReadFile(filepath.Join(root, "node_modules", "azurite", "package.json"))
	if err != nil {
		return ""
	}
	var pkg struct {
		Version string `json:"version"`
	}
	if json.Unmarshal(b, &pkg) != nil {
		return ""
	}
	return pkg.Version
}

// InMemory reports whether the server keeps its data in memory (no
// Options.Location).
func (s *Server) InMemory() bool { return s.opts.Location == "" }
