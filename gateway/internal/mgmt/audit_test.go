package mgmt

import (
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/mana/apigw/gateway/internal/audit"
)

// TestAuditTrail: every change through the management API is one row, in
// order, with actor and before/after but never a secret; owners read their
// own rows, finance all; the chain verifies, and an edit or a removal
// breaks it.
func TestAuditTrail(t *testing.T) {
	en := newEnv(t)
	k := en.create("alice", map[string]any{"name": "app", "tier": "pro"})
	en.do("alice", "", http.MethodPatch, "/api-keys/"+k.ID, map[string]any{"name": "renamed"})
	en.do("alice", "", http.MethodPatch, "/api-keys/"+k.ID, map[string]any{"name": "renamed"}) // no change
	r := en.do("alice", "", http.MethodPost, "/api-keys/"+k.ID+"/regenerate", nil)
	var regen keyView
	r.json(t, &regen)
	hook := en.createEndpoint("alice", map[string]any{"url": "https://example.com/hook"})
	en.do("alice", "", http.MethodPatch, "/webhooks/"+hook.ID, map[string]any{"enabled": false})
	en.do("alice", "", http.MethodDelete, "/webhooks/"+hook.ID, nil)
	en.do("alice", "", http.MethodDelete, "/webhooks/"+hook.ID, nil) // already deleted
	en.do("alice", "", http.MethodDelete, "/api-keys/"+k.ID, nil)
	en.create("bob", map[string]any{"name": "bob's", "tier": "free"})

	var mine struct{ Data []audit.Row }
	r = en.do("alice", "", http.MethodGet, "/audit?from=2026-03-01&to=2026-03-31", nil)
	r.json(t, &mine)
	var actions []string
	for _, row := range mine.Data {
		actions = append(actions, row.Action)
		if row.Actor != "alice" || row.OwnerID != "alice" {
			t.Fatalf("row %+v", row)
		}
		for _, secret := range []string{k.Secret, regen.Secret, hook.Secret} {
			if strings.Contains(string(row.Before)+string(row.After), secret) {
				t.Fatalf("a secret in the audit trail: %s %s", row.Before, row.After)
			}
		}
	}
	want := "api_key.created api_key.updated api_key.regenerated webhook_endpoint.created webhook_endpoint.updated webhook_endpoint.deleted api_key.deleted"
	if got := strings.Join(actions, " "); got != want {
		t.Fatalf("alice's trail %q\nwant %q", got, want)
	}
	if !strings.Contains(string(mine.Data[1].Before), `"name":"app"`) || !strings.Contains(string(mine.Data[1].After), `"name":"renamed"`) {
		t.Fatalf("update before %s after %s", mine.Data[1].Before, mine.Data[1].After)
	}
	var all struct{ Data []audit.Row }
	en.do("fin", "finance", http.MethodGet, "/audit?from=2026-03-01&to=2026-03-31", nil).json(t, &all)
	if len(all.Data) != len(mine.Data)+1 {
		t.Fatalf("finance sees %d rows, want %d", len(all.Data), len(mine.Data)+1)
	}
	var bobs struct{ Data []audit.Row }
	en.do("bob", "", http.MethodGet, "/audit?from=2026-03-01&to=2026-03-31", nil).json(t, &bobs)
	if len(bobs.Data) != 1 || bobs.Data[0].Action != "api_key.created" {
		t.Fatalf("bob sees %+v", bobs.Data)
	}

	if n, err := audit.Verify(t.Context(), en.db); err != nil || n != int64(len(all.Data)) {
		t.Fatalf("verify: %d rows, %v", n, err)
	}
	if _, err := en.db.Exec(`UPDATE api_gateway.audit_log SET actor = 'mallory' WHERE seq = $1`, all.Data[2].Seq); err == nil {
		t.Fatal("the audit log accepted an UPDATE")
	}
	// Someone with the rights to disable the guard edits a row, then removes one.
	en.exec(`ALTER TABLE api_gateway.audit_log DISABLE TRIGGER audit_log_append_only`)
	en.exec(`UPDATE api_gateway.audit_log SET actor = 'mallory' WHERE seq = $1`, all.Data[2].Seq)
	if _, err := audit.Verify(t.Context(), en.db); !errors.Is(err, audit.ErrBroken) || !strings.Contains(err.Error(), "edited") {
		t.Fatalf("an edited row: %v", err)
	}
	en.exec(`UPDATE api_gateway.audit_log SET actor = 'alice' WHERE seq = $1`, all.Data[2].Seq)
	if _, err := audit.Verify(t.Context(), en.db); err != nil {
		t.Fatalf("restored: %v", err)
	}
	en.exec(`DELETE FROM api_gateway.audit_log WHERE seq = $1`, all.Data[3].Seq)
	if _, err := audit.Verify(t.Context(), en.db); !errors.Is(err, audit.ErrBroken) || !strings.Contains(err.Error(), "removed") {
		t.Fatalf("a removed row: %v", err)
	}
}
