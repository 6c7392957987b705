package config

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// acmeMinimal is a listener whose only certificates come from ACME,
// beside a plaintext one that answers http-01.
const acmeMinimal = `
[[listener]]
name = "https"
bind = "127.0.0.1:8443"
pool = "web"
  [listener.tls]
  [listener.tls.acme]
  domains = ["www.example.com", "Example.COM."]
  email = "ops@example.com"

[[listener]]
name = "http"
bind = "127.0.0.1:8080"
redirect_https = "https://:8443"

[[pool]]
name = "web"
  [[pool.backend]]
  address = "10.0.0.11:8080"
`

func TestACMEDefaults(t *testing.T) {
	cfg, err := parseIn(t, acmeMinimal)
	if err != nil {
		t.Fatal(err)
	}
	a := cfg.Listeners[0].TLS.ACME
	if a == nil {
		t.Fatal("no acme table")
	}
	if a.Directory != DefaultACMEDirectory || a.KeyType != "ecdsa-p256" ||
		strings.Join(a.Challenges, ",") != "tls-alpn-01,http-01" || a.RenewBeforeDur != 0 {
		t.Errorf("defaults: %+v", a)
	}
	if want := filepath.Join(filepath.Dir(cfg.File), "acme"); a.Storage != want {
		t.Errorf("storage %q, want %q (relative to the config file)", a.Storage, want)
	}
	if strings.Join(a.Domains, ",") != "www.example.com,example.com" {
		t.Errorf("domains are not lower-cased without the final dot: %q", a.Domains)
	}
	if cfg.Listeners[0].TLS.Cert != "" {
		t.Errorf("cert %q, want none", cfg.Listeners[0].TLS.Cert)
	}
	if len(cfg.Warnings) != 0 {
		t.Errorf("warnings: %q", cfg.Warnings)
	}
}

func TestACMEAllKeys(t *testing.T) {
	src := strings.Replace(acmeMinimal, `email = "ops@example.com"`, `email = "ops@example.com"
  directory = "https://127.0.0.1:14000/dir"
  directory_ca = "certs/site.pem"
  storage = "/var/lib/lb/acme"
  challenges = ["http-01"]
  key_type = "rsa-2048"
  renew_before = "720h"
  eab_kid = "kid-1"
  eab_hmac = "c2VjcmV0LWtleS1mcm9tLXRoZS1jYQ"
  profile = "shortlived"`, 1)
	src = strings.Replace(src, "  [listener.tls]\n", "  [listener.tls]\n  cert = \"certs/site.pem\"\n  key = \"certs/site.key\"\n", 1)
	cfg, err := parseIn(t, src)
	if err != nil {
		t.Fatal(err)
	}
	a := cfg.Listeners[0].TLS.ACME
	if a.RenewBeforeDur != 720*time.Hour || a.KeyType != "rsa-2048" || a.Profile != "shortlived" ||
		a.Storage != "/var/lib/lb/acme" || string(a.EABHMAC) == "" || len(a.Challenges) != 1 {
		t.Errorf("decoded: %+v", a)
	}
}

func TestACMEBadConfigs(t *testing.T) {
	cases := []struct{ name, old, new, want string }{
		{"no domains", `domains = ["www.example.com", "Example.COM."]`, ``,
			`:7: listener[0].tls.acme.domains: missing`},
		{"wildcard", `"www.example.com",`, `"*.example.com",`,
			`:8: listener[0].tls.acme.domains[0]: "*.example.com": a wildcard certificate needs the dns-01 challenge`},
		{"ip address", `"www.example.com",`, `"192.0.2.1",`,
			`listener[0].tls.acme.domains[0]: "192.0.2.1": lb gets certificates for DNS names`},
		{"underscore", `"www.example.com",`, `"_dmarc.example.com",`,
			`listener[0].tls.acme.domains[0]: "_dmarc.example.com": a certificate's host name may not contain "_"`},
		{"duplicate", `"Example.COM."`, `"WWW.example.com"`,
			`listener[0].tls.acme.domains[1]: duplicate name "www.example.com"`},
		{"bad challenge", `email = "ops@example.com"`, "email = \"ops@example.com\"\n  challenges = [\"dns-01\"]",
			`:10: listener[0].tls.acme.challenges[0]: "dns-01" is not one of`},
		{"no challenge", `email = "ops@example.com"`, "email = \"ops@example.com\"\n  challenges = []",
			`:10: listener[0].tls.acme.challenges: must name at least one`},
		{"bad key type", `email = "ops@example.com"`, "email = \"ops@example.com\"\n  key_type = \"ed25519\"",
			`:10: listener[0].tls.acme.key_type: "ed25519" is not one of ecdsa-p256, rsa-2048`},
		{"bad renew_before", `email = "ops@example.com"`, "email = \"ops@example.com\"\n  renew_before = \"30d\"",
			`:10: listener[0].tls.acme.renew_before: "30d" is not a duration`},
		{"negative renew_before", `email = "ops@example.com"`, "email = \"ops@example.com\"\n  renew_before = \"-1h\"",
			`listener[0].tls.acme.renew_before: must be greater than 0`},
		{"plain http directory", `email = "ops@example.com"`, "email = \"ops@example.com\"\n  directory = \"http://ca.example/dir\"",
			`:10: listener[0].tls.acme.directory: "http://ca.example/dir" is not an https:// URL`},
		{"unreadable directory_ca", `email = "ops@example.com"`, "email = \"ops@example.com\"\n  directory_ca = \"certs/none.pem\"",
			`:10: listener[0].tls.acme.directory_ca: cannot read`},
		{"eab_kid alone", `email = "ops@example.com"`, "email = \"ops@example.com\"\n  eab_kid = \"kid\"",
			`listener[0].tls.acme.eab_hmac: missing`},
		{"eab_hmac not base64", `email = "ops@example.com"`, "email = \"ops@example.com\"\n  eab_kid = \"kid\"\n  eab_hmac = \"not base64!\"",
			`:11: listener[0].tls.acme.eab_hmac: is not base64url`},
		{"bad email", `email = "ops@example.com"`, `email = "ops"`,
			`:9: listener[0].tls.acme.email: "ops" is not an email address`},
		{"bad profile", `email = "ops@example.com"`, "email = \"ops@example.com\"\n  profile = \"short lived\"",
			`:10: listener[0].tls.acme.profile: "short lived" is not a profile name`},
		{"storage that is a file", `email = "ops@example.com"`, "email = \"ops@example.com\"\n  storage = \"certs/site.pem\"",
			`:10: listener[0].tls.acme.storage: `},
		{"storage under a file", `email = "ops@example.com"`, "email = \"ops@example.com\"\n  storage = \"certs/site.pem/acme\"",
			`:10: listener[0].tls.acme.storage: `},
		{"unknown key", `email = "ops@example.com"`, "email = \"ops@example.com\"\n  domain = [\"x.example\"]",
			`listener[0].tls.acme.domain: unknown key (did you mean "domains"?)`},
		{"cert without key", "  [listener.tls]\n", "  [listener.tls]\n  cert = \"certs/site.pem\"\n",
			`listener[0].tls.key: missing`},
		{"same name, other settings", `[[pool]]`, `[[listener]]
name = "other"
bind = "127.0.0.1:9443"
pool = "web"
  [listener.tls.acme]
  domains = ["example.com"]
  key_type = "rsa-2048"

[[pool]]`, `listener[2].tls.acme.domains[0]: "example.com" is also in listener[0].tls.acme with other settings`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			src := strings.Replace(acmeMinimal, tc.old, tc.new, 1)
			if src == acmeMinimal {
				t.Fatal("the edit changed nothing")
			}
			_, err := parseIn(t, src)
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error:\n%v\nwant it to contain:\n%s", err, tc.want)
			}
		})
	}
}

// TestACMEHTTPWithoutPlaintextListener: asking for http-01 with no
// plaintext listener to answer it on is worth a warning, not an error
// (another lb sharing storage may answer it).
func TestACMEHTTPWithoutPlaintextListener(t *testing.T) {
	src := acmeMinimal[:strings.Index(acmeMinimal, "[[listener]]\nname = \"http\"")] + acmeMinimal[strings.Index(acmeMinimal, "[[pool]]"):]
	src = strings.Replace(src, `email = "ops@example.com"`, "email = \"ops@example.com\"\n  challenges = [\"http-01\"]", 1)
	cfg, err := parseIn(t, src)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Warnings) != 1 || !strings.Contains(cfg.Warnings[0], "listener[0].tls.acme.challenges: http-01 is answered on plaintext http listeners") {
		t.Errorf("warnings: %q", cfg.Warnings)
	}
}
