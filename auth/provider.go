package auth

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// ErrInvalidAuthOpts reports an --auth-token value that cannot be used.
var ErrInvalidAuthOpts = errors.New("auth: invalid auth options")

// ErrVerifyOnly is Authenticate's answer where the JWT key can only verify.
var ErrVerifyOnly = errors.New("auth: token signing attempted with verify-only key")

// TokenProvider issues and verifies the tokens of one --auth-token setting.
type TokenProvider interface {
	// Assign issues a token for user, whose password was checked at auth
	// revision rev of st.
	Assign(st *State, user string, rev uint64, now time.Time) (string, error)
	// Verify returns whom a token names (ErrInvalidAuthToken if it is not
	// valid under st).
	Verify(st *State, token string, now time.Time) (AuthInfo, error)
}

// SimpleTokens are concord's signed simple tokens (token.go), valid for TTL.
type SimpleTokens struct{ TTL time.Duration }

// Assign ignores rev: a simple token runs at the current auth revision,
// as etcd's does.
func (p SimpleTokens) Assign(st *State, user string, _ uint64, now time.Time) (string, error) {
	return st.IssueToken(user, now.Add(p.TTL))
}

func (p SimpleTokens) Verify(st *State, token string, now time.Time) (AuthInfo, error) {
	return st.VerifyToken(token, now)
}

// ParseTokenOptions reads an --auth-token value, etcd's syntax: "simple"
// (tokens valid for simpleTTL), or "jwt,sign-method=M,priv-key=F,pub-key=F,
// ttl=D" (etcd's JWT options; every member is given the same keys).
func ParseTokenOptions(opts string, simpleTTL time.Duration) (TokenProvider, error) {
	parts := strings.Split(opts, ",")
	kv := map[string]string{}
	for _, p := range parts[1:] {
		k, v, ok := strings.Cut(p, "=")
		if !ok || strings.Contains(v, "=") {
			return nil, fmt.Errorf("%w: %q is not key=value", ErrInvalidAuthOpts, p)
		}
		if _, dup := kv[k]; dup {
			return nil, fmt.Errorf("%w: %q given twice", ErrInvalidAuthOpts, k)
		}
		kv[k] = v
	}
	switch parts[0] {
	case "simple":
		if len(kv) > 0 {
			return nil, fmt.Errorf("%w: simple tokens take no options", ErrInvalidAuthOpts)
		}
		return SimpleTokens{TTL: simpleTTL}, nil
	case "jwt":
		return newJWT(kv)
	default:
		return nil, fmt.Errorf("%w: unknown token type %q", ErrInvalidAuthOpts, parts[0])
	}
}

// JWTTokens are etcd's JWT tokens: claims username, revision and exp,
// signed with the configured key.
type JWTTokens struct {
	method jwt.SigningMethod
	// sign is the private key (nil when verifyOnly), verify its public
	// half (or the HMAC secret for both).
	sign, verify any
	ttl          time.Duration
}

func newJWT(kv map[string]string) (*JWTTokens, error) {
	for k := range kv {
		switch k {
		case "sign-method", "pub-key", "priv-key", "ttl":
		default:
			return nil, fmt.Errorf("%w: unknown jwt option %q", ErrInvalidAuthOpts, k)
		}
	}
	t := &JWTTokens{ttl: 5 * time.Minute}
	if v := kv["ttl"]; v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("%w: jwt ttl %q", ErrInvalidAuthOpts, v)
		}
		t.ttl = d
	}
	t.method = jwt.GetSigningMethod(kv["sign-method"])
	if t.method == nil {
		return nil, fmt.Errorf("%w: jwt sign-method %q", ErrInvalidAuthOpts, kv["sign-method"])
	}
	read := func(k string) ([]byte, error) {
		if kv[k] == "" {
			return nil, nil
		}
		b, err := os.ReadFile(kv[k])
		if err != nil {
			return nil, fmt.Errorf("%w: jwt %s: %w", ErrInvalidAuthOpts, k, err)
		}
		return b, nil
	}
	priv, err := read("priv-key")
	if err != nil {
		return nil, err
	}
	pub, err := read("pub-key")
	if err != nil {
		return nil, err
	}
	if priv == nil && pub == nil {
		return nil, fmt.Errorf("%w: jwt needs priv-key or pub-key", ErrInvalidAuthOpts)
	}
	switch t.method.(type) {
	case *jwt.SigningMethodHMAC:
		if priv == nil {
			return nil, fmt.Errorf("%w: jwt %s needs priv-key", ErrInvalidAuthOpts, t.method.Alg())
		}
		t.sign, t.verify = priv, priv
	case *jwt.SigningMethodRSA, *jwt.SigningMethodRSAPSS:
		err = loadPair(priv, pub, jwt.ParseRSAPrivateKeyFromPEM, jwt.ParseRSAPublicKeyFromPEM,
			func(k *rsa.PrivateKey) any { return &k.PublicKey }, t)
	case *jwt.SigningMethodECDSA:
		err = loadPair(priv, pub, jwt.ParseECPrivateKeyFromPEM, jwt.ParseECPublicKeyFromPEM,
			func(k *ecdsa.PrivateKey) any { return &k.PublicKey }, t)
	case *jwt.SigningMethodEd25519:
		err = loadPair(priv, pub,
			func(b []byte) (ed25519.PrivateKey, error) {
				k, err := jwt.ParseEdPrivateKeyFromPEM(b)
				if err != nil {
					return nil, err
				}
				return k.(ed25519.PrivateKey), nil
			},
			func(b []byte) (ed25519.PublicKey, error) {
				k, err := jwt.ParseEdPublicKeyFromPEM(b)
				if err != nil {
					return nil, err
				}
				return k.(ed25519.PublicKey), nil
			},
			func(k ed25519.PrivateKey) any { return k.Public() }, t)
	default:
		return nil, fmt.Errorf("%w: jwt sign-method %q", ErrInvalidAuthOpts, t.method.Alg())
	}
	if err != nil {
		return nil, err
	}
	return t, nil
}

// loadPair parses the private and/or public key; given both, they must
// match (checked by signing and verifying a probe).
func loadPair[Priv, Pub any](priv, pub []byte, parsePriv func([]byte) (Priv, error), parsePub func([]byte) (Pub, error),
	public func(Priv) any, t *JWTTokens) error {
	if priv != nil {
		k, err := parsePriv(priv)
		if err != nil {
			return fmt.Errorf("%w: jwt priv-key: %w", ErrInvalidAuthOpts, err)
		}
		t.sign, t.verify = k, public(k)
	}
	if pub != nil {
		k, err := parsePub(pub)
		if err != nil {
			return fmt.Errorf("%w: jwt pub-key: %w", ErrInvalidAuthOpts, err)
		}
		if t.sign != nil {
			probe, err := jwt.New(t.method).SignedString(t.sign)
			if err == nil {
				_, err = jwt.Parse(probe, func(*jwt.Token) (any, error) { return k, nil }, jwt.WithValidMethods([]string{t.method.Alg()}))
			}
			if err != nil {
				return fmt.Errorf("%w: jwt public and private keys don't match", ErrInvalidAuthOpts)
			}
		}
		t.verify = k
	}
	return nil
}

func (t *JWTTokens) Assign(st *State, user string, rev uint64, now time.Time) (string, error) {
	if !st.Enabled() {
		return "", ErrAuthNotEnabled
	}
	if t.sign == nil {
		return "", ErrVerifyOnly
	}
	return jwt.NewWithClaims(t.method, jwt.MapClaims{
		"username": user,
		"revision": rev,
		"exp":      now.Add(t.ttl).Unix(),
	}).SignedString(t.sign)
}

func (t *JWTTokens) Verify(st *State, token string, now time.Time) (AuthInfo, error) {
	if !st.Enabled() {
		return AuthInfo{}, ErrInvalidAuthToken
	}
	parsed, err := jwt.Parse(token, func(*jwt.Token) (any, error) { return t.verify, nil },
		jwt.WithValidMethods([]string{t.method.Alg()}), jwt.WithTimeFunc(func() time.Time { return now }),
		jwt.WithExpirationRequired())
	if err != nil || !parsed.Valid {
		return AuthInfo{}, ErrInvalidAuthToken
	}
	claims, ok := parsed.Claims.(jwt.MapClaims)
	if !ok {
		return AuthInfo{}, ErrInvalidAuthToken
	}
	user, ok1 := claims["username"].(string)
	rev, ok2 := claims["revision"].(float64)
	if !ok1 || !ok2 {
		return AuthInfo{}, ErrInvalidAuthToken
	}
	return AuthInfo{Username: user, Revision: uint64(rev)}, nil
}
