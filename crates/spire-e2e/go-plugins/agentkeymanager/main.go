// A test agent KeyManager: keys live in this process and, when plugin_data `key_dir` is set,
// in "<key id>.der" files (PKCS#8) there, so a restarted agent finds its SVID key again.
// Every call appends a line to the file named by `call_log` ("GenerateKey <id> <type>",
// "GetPublicKey <id>", "GetPublicKeys", "SignData <id> <hash> <pss>"), so tests can tell
// which calls the host made.
package main

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/hashicorp/hcl"
	"github.com/spiffe/spire-plugin-sdk/pluginmain"
	keymanagerv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/plugin/agent/keymanager/v1"
	configv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/service/common/config/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

type config struct {
	CallLog string `hcl:"call_log"`
	KeyDir  string `hcl:"key_dir"`
}

type key struct {
	signer crypto.Signer
	public *keymanagerv1.PublicKey
}

type plugin struct {
	keymanagerv1.UnimplementedKeyManagerServer
	configv1.UnimplementedConfigServer

	mu      sync.Mutex
	callLog string
	keyDir  string
	keys    map[string]key
}

func (p *plugin) log(format string, args ...interface{}) {
	p.mu.Lock()
	callLog := p.callLog
	p.mu.Unlock()
	if callLog == "" {
		return
	}
	f, err := os.OpenFile(callLog, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return
	}
	fmt.Fprintf(f, format+"\n", args...)
	f.Close()
}

func describe(id string, signer crypto.Signer) (*keymanagerv1.PublicKey, error) {
	der, err := x509.MarshalPKIXPublicKey(signer.Public())
	if err != nil {
		return nil, err
	}
	var t keymanagerv1.KeyType
	switch k := signer.Public().(type) {
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P384() {
			t = keymanagerv1.KeyType_EC_P384
		} else {
			t = keymanagerv1.KeyType_EC_P256
		}
	case *rsa.PublicKey:
		if k.N.BitLen() > 2048 {
			t = keymanagerv1.KeyType_RSA_4096
		} else {
			t = keymanagerv1.KeyType_RSA_2048
		}
	}
	sum := sha256.Sum256(der)
	return &keymanagerv1.PublicKey{Id: id, Type: t, PkixData: der, Fingerprint: hex.EncodeToString(sum[:])}, nil
}

func (p *plugin) Configure(_ context.Context, req *configv1.ConfigureRequest) (*configv1.ConfigureResponse, error) {
	c := new(config)
	if err := hcl.Decode(c, req.HclConfiguration); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "bad configuration: %v", err)
	}
	keys := make(map[string]key)
	if c.KeyDir != "" {
		files, _ := filepath.Glob(filepath.Join(c.KeyDir, "*.der"))
		for _, file := range files {
			der, err := os.ReadFile(file)
			if err != nil {
				return nil, status.Errorf(codes.Internal, "read %s: %v", file, err)
			}
			parsed, err := x509.ParsePKCS8PrivateKey(der)
			if err != nil {
				return nil, status.Errorf(codes.Internal, "parse %s: %v", file, err)
			}
			id := strings.TrimSuffix(filepath.Base(file), ".der")
			signer := parsed.(crypto.Signer)
			public, err := describe(id, signer)
			if err != nil {
				return nil, status.Errorf(codes.Internal, "describe %s: %v", file, err)
			}
			keys[id] = key{signer: signer, public: public}
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.callLog = c.CallLog
	p.keyDir = c.KeyDir
	p.keys = keys
	return &configv1.ConfigureResponse{}, nil
}

func generate(t keymanagerv1.KeyType) (crypto.Signer, error) {
	switch t {
	case keymanagerv1.KeyType_EC_P256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case keymanagerv1.KeyType_EC_P384:
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case keymanagerv1.KeyType_RSA_2048:
		return rsa.GenerateKey(rand.Reader, 2048)
	case keymanagerv1.KeyType_RSA_4096:
		return rsa.GenerateKey(rand.Reader, 4096)
	default:
		return nil, status.Errorf(codes.InvalidArgument, "unsupported key type %v", t)
	}
}

func (p *plugin) GenerateKey(_ context.Context, req *keymanagerv1.GenerateKeyRequest) (*keymanagerv1.GenerateKeyResponse, error) {
	p.log("GenerateKey %s %s", req.KeyId, req.KeyType)
	if req.KeyId == "" {
		return nil, status.Error(codes.InvalidArgument, "key id is required")
	}
	signer, err := generate(req.KeyType)
	if err != nil {
		return nil, err
	}
	public, err := describe(req.KeyId, signer)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "marshal public key: %v", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.keyDir != "" {
		der, err := x509.MarshalPKCS8PrivateKey(signer)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "marshal key: %v", err)
		}
		if err := os.WriteFile(filepath.Join(p.keyDir, req.KeyId+".der"), der, 0o600); err != nil {
			return nil, status.Errorf(codes.Internal, "write key: %v", err)
		}
	}
	if p.keys == nil {
		p.keys = make(map[string]key)
	}
	p.keys[req.KeyId] = key{signer: signer, public: public}
	return &keymanagerv1.GenerateKeyResponse{PublicKey: public}, nil
}

func (p *plugin) GetPublicKey(_ context.Context, req *keymanagerv1.GetPublicKeyRequest) (*keymanagerv1.GetPublicKeyResponse, error) {
	p.log("GetPublicKey %s", req.KeyId)
	p.mu.Lock()
	defer p.mu.Unlock()
	k, ok := p.keys[req.KeyId]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no such key %q", req.KeyId)
	}
	return &keymanagerv1.GetPublicKeyResponse{PublicKey: k.public}, nil
}

func (p *plugin) GetPublicKeys(context.Context, *keymanagerv1.GetPublicKeysRequest) (*keymanagerv1.GetPublicKeysResponse, error) {
	p.log("GetPublicKeys")
	p.mu.Lock()
	defer p.mu.Unlock()
	resp := &keymanagerv1.GetPublicKeysResponse{}
	for _, k := range p.keys {
		resp.PublicKeys = append(resp.PublicKeys, k.public)
	}
	sort.Slice(resp.PublicKeys, func(i, j int) bool { return resp.PublicKeys[i].Id < resp.PublicKeys[j].Id })
	return resp, nil
}

func (p *plugin) SignData(_ context.Context, req *keymanagerv1.SignDataRequest) (*keymanagerv1.SignDataResponse, error) {
	p.mu.Lock()
	k, ok := p.keys[req.KeyId]
	p.mu.Unlock()
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no such key %q", req.KeyId)
	}
	var opts crypto.SignerOpts
	pss := false
	switch o := req.SignerOpts.(type) {
	case *keymanagerv1.SignDataRequest_HashAlgorithm:
		opts = crypto.Hash(o.HashAlgorithm)
	case *keymanagerv1.SignDataRequest_PssOptions:
		pss = true
		opts = &rsa.PSSOptions{SaltLength: int(o.PssOptions.SaltLength), Hash: crypto.Hash(o.PssOptions.HashAlgorithm)}
	default:
		return nil, status.Error(codes.InvalidArgument, "signer opts are required")
	}
	signature, err := k.signer.Sign(rand.Reader, req.Data, opts)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "sign: %v", err)
	}
	p.log("SignData %s %s %t", req.KeyId, opts.HashFunc(), pss)
	return &keymanagerv1.SignDataResponse{Signature: signature, KeyFingerprint: k.public.Fingerprint}, nil
}

func main() {
	p := new(plugin)
	pluginmain.Serve(
		keymanagerv1.KeyManagerPluginServer(p),
		configv1.ConfigServiceServer(p),
	)
}
