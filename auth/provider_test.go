package auth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// writeKeys writes a PEM private key and its public key into dir.
func writeKeys(t *testing.T, dir, name string, priv any, pub any) (privPath, pubPath string) {
	t.Helper()
	pk, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	privPath, pubPath = filepath.Join(dir, name+".key"), filepath.Join(dir, name+".pub")
	if err := os.WriteFile(privPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pubPath, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return privPath, pubPath
}

func TestParseTokenOptions(t *testing.T) {
	dir := t.TempDir()
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsaPriv, rsaPub := writeKeys(t, dir, "rsa", rk, &rk.PublicKey)
	ek, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecPriv, ecPub := writeKeys(t, dir, "ec", ek, &ek.PublicKey)
	ek2, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, otherECPub := writeKeys(t, dir, "ec2", ek2, &ek2.PublicKey)
	hmacKey := filepath.Join(dir, "hmac")
	if err := os.WriteFile(hmacKey, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}

	for _, bad := range []string{
		"", "nope", "simple,ttl=1", "jwt", "jwt,sign-method=RS256", "jwt,sign-method=XX256,priv-key=" + rsaPriv,
		"jwt,sign-method=RS256,priv-key=" + rsaPriv + ",bogus=1", "jwt,sign-method=RS256,priv-key=/nonexistent",
		"jwt,sign-method=ES256,priv-key=" + ecPriv + ",pub-key=" + otherECPub, "jwt,sign-method=RS256,priv-key=" + ecPriv,
		"jwt,sign-method=RS256,priv-key=" + rsaPriv + ",ttl=soon", "jwt,sign-method",
	} {
		if _, err := ParseTokenOptions(bad, time.Minute); !errors.Is(err, ErrInvalidAuthOpts) {
			t.Errorf("ParseTokenOptions(%q) = %v, want ErrInvalidAuthOpts", bad, err)
		}
	}

	st := enabled(t, []byte("key"))
	now := time.Unix(2_000_000, 0)
	for _, opts := range []string{
		"simple",
		"jwt,sign-method=RS256,priv-key=" + rsaPriv + ",pub-key=" + rsaPub + ",ttl=1m",
		"jwt,sign-method=PS256,priv-key=" + rsaPriv + ",ttl=1m",
		"jwt,sign-method=ES256,priv-key=" + ecPriv + ",pub-key=" + ecPub + ",ttl=1m",
		"jwt,sign-method=HS256,priv-key=" + hmacKey + ",ttl=1m",
	} {
		p, err := ParseTokenOptions(opts, time.Minute)
		if err != nil {
			t.Fatalf("ParseTokenOptions(%q): %v", opts, err)
		}
		tok, err := p.Assign(st, "alice", st.Revision(), now)
		if err != nil {
			t.Fatalf("%s: Assign: %v", opts, err)
		}
		ai, err := p.Verify(st, tok, now.Add(30*time.Second))
		if err != nil || ai.Username != "alice" || ai.Revision != st.Revision() {
			t.Errorf("%s: Verify = %+v, %v", opts, ai, err)
		}
		if _, err := p.Verify(st, tok, now.Add(2*time.Minute)); !errors.Is(err, ErrInvalidAuthToken) {
			t.Errorf("%s: expired token: %v", opts, err)
		}
		if _, err := p.Verify(st, tok[:len(tok)-4]+"AAAA", now); !errors.Is(err, ErrInvalidAuthToken) {
			t.Errorf("%s: forged token: %v", opts, err)
		}
	}
	// A verify-only member (public key alone) checks tokens signed elsewhere.
	signer, _ := ParseTokenOptions("jwt,sign-method=ES256,priv-key="+ecPriv, time.Minute)
	verifier, err := ParseTokenOptions("jwt,sign-method=ES256,pub-key="+ecPub, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := signer.Assign(st, "root", st.Revision(), now)
	if ai, err := verifier.Verify(st, tok, now); err != nil || ai.Username != "root" {
		t.Errorf("verify-only: %+v, %v", ai, err)
	}
	if _, err := verifier.Assign(st, "root", st.Revision(), now); !errors.Is(err, ErrVerifyOnly) {
		t.Errorf("verify-only Assign: %v, want ErrVerifyOnly", err)
	}
	// A token of another signing method is refused.
	hs, _ := ParseTokenOptions("jwt,sign-method=HS256,priv-key="+hmacKey, time.Minute)
	hsTok, _ := hs.Assign(st, "root", st.Revision(), now)
	if _, err := verifier.Verify(st, hsTok, now); !errors.Is(err, ErrInvalidAuthToken) {
		t.Errorf("HS256 token on an ES256 member: %v", err)
	}
}
