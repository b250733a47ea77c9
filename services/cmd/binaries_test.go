// Package cmd_test starts each stand-in binary as a process, the way the
// local stack runs it: it must come up on PORT, answer /health and its main
// route, and exit 0 on SIGTERM; a bad setting must make it exit non-zero.
package cmd_test

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mana/apigw/services/testenv"
)

func TestBinaries(t *testing.T) {
	tests := []struct {
		name  string
		env   []string
		check func(t *testing.T, base string)
	}{
		{name: "authdev", env: []string{"AUTH_KEY_FILE=" + filepath.Join(t.TempDir(), "key.pem")}, check: func(t *testing.T, base string) {
			expect(t, "POST", base+"/api/v1/auth/login", `{"email":"user@example.com","password":"password"}`, 200, `"tokenType":"Bearer"`)
			expect(t, "GET", base+"/.well-known/jwks.json", "", 200, `"alg":"RS256"`)
		}},
		{name: "search", check: func(t *testing.T, base string) {
			expect(t, "POST", base+"/search", `{"query":"quantum computing"}`, 200, `/pages/quantum-computing-introduction`)
		}},
		{name: "stt", check: func(t *testing.T, base string) {
			expect(t, "GET", base+"/languages", "", 200, `"en"`)
		}},
		{name: "tts", env: []string{"TTS_ENGINE=tone"}, check: func(t *testing.T, base string) {
			expect(t, "POST", base+"/synthesize", `{"text":"Hello, world!","voice":"en-US-1"}`, 200, "RIFF")
		}},
		{name: "webhookdev", check: func(t *testing.T, base string) {
			expect(t, "GET", base+"/received", "", 200, `"data":[]`)
			expect(t, "POST", base+"/hook", `{}`, 400, "webhook-id")
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			bin := testenv.BuildBinary(t, "./services/cmd/"+tt.name)
			port := testenv.FreePort(t)
			base := "http://127.0.0.1:" + strconv.Itoa(port)
			cmd := exec.Command(bin)
			cmd.Env = append(os.Environ(), append(tt.env, "PORT="+strconv.Itoa(port), "EXTRACT_ALLOW_HOSTS=")...)
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			t.Cleanup(func() {
				if cmd.ProcessState == nil {
					_ = cmd.Process.Kill()
				}
			})
			waitHealthy(t, base, exited, &out)
			tt.check(t, base)
			if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-exited:
				if err != nil {
					t.Fatalf("exit after SIGTERM: %v\n%s", err, out.String())
				}
			case <-time.After(20 * time.Second):
				t.Fatalf("no exit 20s after SIGTERM\n%s", out.String())
			}
			if !strings.Contains(out.String(), `"msg":"stopped"`) {
				t.Fatalf("no graceful stop logged:\n%s", out.String())
			}

			bad := exec.Command(bin)
			bad.Env = append(os.Environ(), "PORT=not-a-port")
			if b, err := bad.CombinedOutput(); err == nil || !strings.Contains(string(b), "PORT") {
				t.Fatalf("bad PORT: err %v, output %s", err, b)
			}
		})
	}
}

func waitHealthy(t *testing.T, base string, exited <-chan error, out *bytes.Buffer) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			t.Fatalf("exited early: %v\n%s", err, out.String())
		default:
		}
		resp, err := http.Get(base + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("not healthy within 30s\n%s", out.String())
}

func expect(t *testing.T, method, url, body string, status int, contains string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != status || !strings.Contains(string(b), contains) {
		t.Fatalf("%s %s: %d, want %d containing %q: %.300s", method, url, resp.StatusCode, status, contains, b)
	}
}
