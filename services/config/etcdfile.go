package config

import (
	"fmt"
	"maps"

	"github.com/spf13/viper"
)

// fClientCertAllowedCN has no flag in etcd or concord: only etcd's
// configuration file can set it (client-transport-security: allowed-cn).
const fClientCertAllowedCN = "client-cert-allowed-cn"

// etcdFileSections maps the nested sections of etcd's configuration file
// (embed.configYAML) to the flag names concord reads: each key of a section
// becomes the flag named by the map, or is dropped when it maps to "".
var etcdFileSections = map[string]map[string]string{
	"client-transport-security": {
		"cert-file": fCertFile, "key-file": fKeyFile, "client-cert-file": fClientCertFile, "client-key-file": fClientKeyFile,
		"client-cert-auth": fClientCertAuth, "trusted-ca-file": fTrustedCAFile, "auto-tls": fAutoTLS,
		"allowed-cn": fClientCertAllowedCN, "allowed-hostname": fClientCertAllowedHost,
		// etcd does not check client SANs; the key has no effect there.
		"skip-client-san-verification": "",
	},
	"peer-transport-security": {
		"cert-file": fPeerCertFile, "key-file": fPeerKeyFile, "client-cert-file": "peer-" + fClientCertFile,
		"client-key-file": "peer-" + fClientKeyFile, "client-cert-auth": fPeerClientCertAuth,
		"trusted-ca-file": fPeerTrustedCAFile, "auto-tls": fPeerAutoTLS, "allowed-cn": fPeerCertAllowedCN,
		"allowed-hostname": fPeerCertAllowedHost, "skip-client-san-verification": fPeerSkipClientSANVerify,
	},
	"socket-options": {"reuse-port": fSocketReusePort, "reuse-address": fSocketReuseAddress},
	// v3 discovery: the token, and the client's settings under "client"
	// (etcd's clientv3.ConfigSpec).
	"discovery-config": {
		"token": fDiscoveryToken, "client.endpoints": fDiscoveryEndpoints,
		"client.dial-timeout": fDiscoveryDialTimeout, "client.request-timeout": fDiscoveryRequestTimeout,
		"client.keepalive-time": fDiscoveryKeepAliveTime, "client.keepalive-timeout": fDiscoveryKeepAliveTimeout,
		"client.secure.cert": fDiscoveryCert, "client.secure.key": fDiscoveryKey, "client.secure.cacert": fDiscoveryCACert,
		"client.secure.insecure-transport": fDiscoveryInsecure, "client.secure.insecure-skip-tls-verify": fDiscoverySkipVerify,
		"client.auth.username": fDiscoveryUser, "client.auth.password": fDiscoveryPassword,
	},
}

// mergeEtcdFileSections lifts the keys of etcd's nested configuration
// sections in v's file to top-level flag names, at the file's precedence:
// the flag-named keys of the same file stay stronger, since etcd's file
// has no such keys for these settings.
func mergeEtcdFileSections(v *viper.Viper) error {
	flat := map[string]any{}
	for section, keys := range etcdFileSections {
		if !v.InConfig(section) {
			continue
		}
		m, ok := v.Get(section).(map[string]any)
		if !ok {
			return fmt.Errorf("%w: --%s: invalid %s (want a mapping)", ErrInvalid, fConfigFile, section)
		}
		for k, val := range flattenSection(m, "") {
			name, known := keys[k]
			if !known || name == "" || v.InConfig(name) {
				continue
			}
			flat[name] = val
		}
	}
	if len(flat) == 0 {
		return nil
	}
	return v.MergeConfigMap(flat)
}

// flattenSection names the values of nested mappings by their dotted path
// ("client.secure.cert"), as etcdFileSections lists them.
func flattenSection(m map[string]any, prefix string) map[string]any {
	out := make(map[string]any, len(m))
	for k, val := range m {
		if sub, ok := val.(map[string]any); ok {
			maps.Copy(out, flattenSection(sub, prefix+k+"."))
			continue
		}
		out[prefix+k] = val
	}
	return out
}
