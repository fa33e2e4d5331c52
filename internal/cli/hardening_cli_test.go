package cli

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
)

// Issue #7, item 3: "localhost" was trusted by name in the exposure check.
// A host name now counts as local only if everything it resolves to is a
// loopback address. Not parallel: it swaps the resolver.
func TestHardeningExposureResolvesNames(t *testing.T) {
	old := lookupIPAddr
	t.Cleanup(func() { lookupIPAddr = old })
	hosts := map[string][]string{
		"localhost":     {"192.0.2.7"}, // an /etc/hosts that maps localhost elsewhere
		"loopback-only": {"127.0.0.1", "::1"},
		"mixed":         {"127.0.0.1", "192.0.2.1"},
	}
	lookupIPAddr = func(_ context.Context, host string) ([]net.IPAddr, error) {
		ips, ok := hosts[host]
		if !ok {
			return nil, errors.New("no such host")
		}
		var out []net.IPAddr
		for _, s := range ips {
			out = append(out, net.IPAddr{IP: net.ParseIP(s)})
		}
		return out, nil
	}
	for _, tc := range []struct {
		listen  string
		wantErr bool
	}{
		{"localhost:8080", true},
		{"loopback-only:8080", false},
		{"mixed:8080", true},
		{"unknown.example:8080", true},
		{"127.0.0.1:8080", false},
		{"[::1]:8080", false},
		{":8080", true},
	} {
		err := checkExposure(tc.listen, false, false)
		if (err != nil) != tc.wantErr {
			t.Errorf("checkExposure(%q) = %v, want error %t", tc.listen, err, tc.wantErr)
		}
		if err != nil && !strings.Contains(err.Error(), "--api-keys-file") {
			t.Errorf("checkExposure(%q) = %v: want it to mention --api-keys-file", tc.listen, err)
		}
		if err := checkExposure(tc.listen, true, false); err != nil {
			t.Errorf("checkExposure(%q) with keys = %v", tc.listen, err)
		}
	}
}

func TestHardeningByteSizeFlag(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]int64{"16MiB": 16 << 20, "512KiB": 512 << 10, "1GiB": 1 << 30, "65536": 65536, "100B": 100} {
		var b byteSize
		if err := b.Set(in); err != nil || int64(b) != want {
			t.Errorf("Set(%q) = %d, %v; want %d", in, b, err, want)
		}
	}
	for _, in := range []string{"", "0", "-1MiB", "16MB", "lots", "99999999GiB"} {
		var b byteSize
		if err := b.Set(in); err == nil {
			t.Errorf("Set(%q) = %d, want an error", in, b)
		}
	}
	b := byteSize(16 << 20)
	if b.String() != "16MiB" {
		t.Errorf("String() = %q", b.String())
	}
}

func TestHardeningWorkerFlagsReachTheConfig(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"bad public url", nil, []string{"--public-url", "ftp://x"}, "public URL"},
		{"bad public url env", map[string]string{"DRONEHUB_PUBLIC_URL": "x.example"}, nil, "public URL"},
		{"bad proxy", nil, []string{"--trusted-proxies", "10.0.0.0/8,proxy.example"}, "trusted proxy"},
		{"bad size", map[string]string{"DRONEHUB_MAX_BODY_MEMORY": "lots"}, nil, "DRONEHUB_MAX_BODY_MEMORY"},
		{"small body memory", nil, []string{"--max-body-memory", "1KiB"}, "body memory"},
		{"no room", nil, []string{"--max-inflight", "0"}, "--max-inflight"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			args := append([]string{"worker", "--listen", "127.0.0.1:0", "--storage", t.TempDir() + "/hub.db"}, tc.args...)
			code, _, errOut := run(t, tc.env, args...)
			if code == 0 || !strings.Contains(errOut, tc.want) {
				t.Fatalf("exit %d, stderr %q: want a failure mentioning %q", code, errOut, tc.want)
			}
		})
	}
	// -h says where keys are safe.
	_, _, errOut := run(t, nil, "worker", "-h")
	for _, want := range []string{"-api-keys-file", "visible to every local user", "-public-url", "-trusted-proxies", "-metrics-require-key", "-max-inflight", "-max-body-memory", "-storage-timeout", "-write-timeout"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("worker -h lacks %q", want)
		}
	}
}
