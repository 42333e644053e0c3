// A test server KeyManager: keys live in this process only; every SignData appends
// "<key id> <hash algorithm> <pss>" to the file named by plugin_data `sign_log`, so tests can
// tell that the host signed through the plugin.
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
	"sync"

	"github.com/hashicorp/hcl"
	"github.com/spiffe/spire-plugin-sdk/pluginmain"
	keymanagerv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/plugin/server/keymanager/v1"
	configv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/service/common/config/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

type config struct {
	SignLog string `hcl:"sign_log"`
}

type key struct {
	signer crypto.Signer
	public *keymanagerv1.PublicKey
}

type plugin struct {
	keymanagerv1.UnimplementedKeyManagerServer
	configv1.UnimplementedConfigServer

	mu      sync.Mutex
	signLog string
	keys    map[string]key
}

func (p *plugin) Configure(_ context.Context, req *configv1.ConfigureRequest) (*configv1.ConfigureResponse, error) {
	c := new(config)
	if err := hcl.Decode(c, req.HclConfiguration); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "bad configuration: %v", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.signLog = c.SignLog
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
	if req.KeyId == "" {
		return nil, status.Error(codes.InvalidArgument, "key id is required")
	}
	signer, err := generate(req.KeyType)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKIXPublicKey(signer.Public())
	if err != nil {
		return nil, status.Errorf(codes.Internal, "marshal public key: %v", err)
	}
	sum := sha256.Sum256(der)
	public := &keymanagerv1.PublicKey{
		Id:          req.KeyId,
		Type:        req.KeyType,
		PkixData:    der,
		Fingerprint: hex.EncodeToString(sum[:]),
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.keys == nil {
		p.keys = make(map[string]key)
	}
	p.keys[req.KeyId] = key{signer: signer, public: public}
	return &keymanagerv1.GenerateKeyResponse{PublicKey: public}, nil
}

func (p *plugin) GetPublicKey(_ context.Context, req *keymanagerv1.GetPublicKeyRequest) (*keymanagerv1.GetPublicKeyResponse, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	k, ok := p.keys[req.KeyId]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no such key %q", req.KeyId)
	}
	return &keymanagerv1.GetPublicKeyResponse{PublicKey: k.public}, nil
}

func (p *plugin) GetPublicKeys(context.Context, *keymanagerv1.GetPublicKeysRequest) (*keymanagerv1.GetPublicKeysResponse, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	resp := &keymanagerv1.GetPublicKeysResponse{}
	for _, k := range p.keys {
		resp.PublicKeys = append(resp.PublicKeys, k.public)
	}
	return resp, nil
}

func (p *plugin) SignData(_ context.Context, req *keymanagerv1.SignDataRequest) (*keymanagerv1.SignDataResponse, error) {
	p.mu.Lock()
	k, ok := p.keys[req.KeyId]
	signLog := p.signLog
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
	if signLog != "" {
		f, err := os.OpenFile(signLog, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "cannot open %s: %v", signLog, err)
		}
		fmt.Fprintf(f, "%s %s %t\n", req.KeyId, opts.HashFunc(), pss)
		f.Close()
	}
	return &keymanagerv1.SignDataResponse{Signature: signature, KeyFingerprint: k.public.Fingerprint}, nil
}

func main() {
	p := new(plugin)
	pluginmain.Serve(
		keymanagerv1.KeyManagerPluginServer(p),
		configv1.ConfigServiceServer(p),
	)
}
