package e2e

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mana/apigw/services/testenv"
)

// TestDashboardInABrowser runs web/test/dashboard.mjs (headless Debian
// chromium driven by playwright-core) against a whole stack: the gateway
// binary with the dashboard embedded, the workers, the dev auth issuer.
// .ci/test.sh builds the page (npm ci) and installs chromium first.
func TestDashboardInABrowser(t *testing.T) {
	root := testenv.RepoRoot(t)
	for _, need := range []string{"web/node_modules/playwright-core/package.json", "gateway/internal/dashboard/dist/index.html"} {
		if _, err := os.Stat(filepath.Join(root, need)); err != nil {
			t.Fatalf("%s is missing: run .ci/web.sh build (make test does)", need)
		}
	}
	chromium := "/usr/bin/chromium"
	if _, err := os.Stat(chromium); err != nil {
		t.Fatalf("%s is missing: run .ci/web.sh browser (make test does)", chromium)
	}
	// The issuer's sign-in page is linked, never visited: the test comes
	// back from it by itself.
	s := newStack(t, stackOpts{extraEnv: []string{"DASHBOARD_LOGIN_URL=https://auth.example.invalid/signin"}})
	gw := s.gwURLs[0]
	resp, body := s.do(http.MethodGet, gw+"/dashboard", nil, nil)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `data-password-login-url="`+s.authURL+`/api/v1/auth/login"`) {
		t.Fatalf("GET /dashboard: %d %.300s", resp.StatusCode, body)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute) // generous: the machine may be busy
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", filepath.Join(root, "web", "test", "dashboard.mjs"))
	cmd.Dir = filepath.Join(root, "web")
	cmd.Env = append(os.Environ(), "GATEWAY_URL="+gw, "AUTH_URL="+s.authURL, "CHROMIUM="+chromium,
		"SCREENSHOT_DIR="+filepath.Join(root, ".data", "screenshots"))
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.CombinedOutput()
	t.Logf("node web/test/dashboard.mjs:\n%s", out)
	if err != nil {
		t.Fatalf("the browser test failed: %v (screenshots in .data/screenshots)", err)
	}
}
