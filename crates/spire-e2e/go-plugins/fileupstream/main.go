// A test server UpstreamAuthority: signs the server's intermediate CA (URI SAN: the trust
// domain from the core configuration) with the CA key and
// certificate named by plugin_data `key_path` and `cert_path` (PEM). The upstream roots it
// reports are that certificate plus any certificates in the PEM file `extra_roots_path`;
// whenever that file changes, the new roots are sent on every open MintX509CAAndSubscribe
// stream. PublishJWTKeyAndSubscribe answers with every key published so far.
package main

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"net/url"
	"os"
	"sync"
	"time"

	"github.com/hashicorp/hcl"
	"github.com/spiffe/spire-plugin-sdk/pluginmain"
	upstreamauthorityv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/plugin/server/upstreamauthority/v1"
	"github.com/spiffe/spire-plugin-sdk/proto/spire/plugin/types"
	configv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/service/common/config/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

type config struct {
	KeyPath        string `hcl:"key_path"`
	CertPath       string `hcl:"cert_path"`
	ExtraRootsPath string `hcl:"extra_roots_path"`
}

type plugin struct {
	upstreamauthorityv1.UnimplementedUpstreamAuthorityServer
	configv1.UnimplementedConfigServer

	mu      sync.Mutex
	cfg     config
	key     crypto.Signer
	cert    *x509.Certificate
	td      string
	jwtKeys []*types.JWTKey
}

func (p *plugin) Configure(_ context.Context, req *configv1.ConfigureRequest) (*configv1.ConfigureResponse, error) {
	c := new(config)
	if err := hcl.Decode(c, req.HclConfiguration); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "bad configuration: %v", err)
	}
	keyPEM, err := os.ReadFile(c.KeyPath)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "cannot read key_path: %v", err)
	}
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		return nil, status.Error(codes.InvalidArgument, "key_path holds no PEM block")
	}
	parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "key_path is not a PKCS#8 key: %v", err)
	}
	signer, ok := parsed.(crypto.Signer)
	if !ok {
		return nil, status.Error(codes.InvalidArgument, "key_path does not hold a signing key")
	}
	certs, err := readCerts(c.CertPath)
	if err != nil || len(certs) == 0 {
		return nil, status.Errorf(codes.InvalidArgument, "cannot read cert_path: %v", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if req.CoreConfiguration.GetTrustDomain() == "" {
		return nil, status.Error(codes.InvalidArgument, "the core configuration has no trust domain")
	}
	p.cfg, p.key, p.cert, p.td = *c, signer, certs[0], req.CoreConfiguration.GetTrustDomain()
	return &configv1.ConfigureResponse{}, nil
}

func readCerts(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return certs, nil
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, cert)
	}
}

// roots are the CA certificate and the extra roots file's certificates, and that file's
// content (to notice changes).
func (p *plugin) roots() ([]*types.X509Certificate, string) {
	p.mu.Lock()
	cert, extraPath := p.cert, p.cfg.ExtraRootsPath
	p.mu.Unlock()
	roots := []*types.X509Certificate{{Asn1: cert.Raw}}
	if extraPath == "" {
		return roots, ""
	}
	raw, _ := os.ReadFile(extraPath)
	extra, err := readCerts(extraPath)
	if err != nil {
		return roots, string(raw)
	}
	for _, c := range extra {
		roots = append(roots, &types.X509Certificate{Asn1: c.Raw})
	}
	return roots, string(raw)
}

func (p *plugin) MintX509CAAndSubscribe(req *upstreamauthorityv1.MintX509CARequest, stream upstreamauthorityv1.UpstreamAuthority_MintX509CAAndSubscribeServer) error {
	p.mu.Lock()
	key, cert, td := p.key, p.cert, p.td
	p.mu.Unlock()
	if key == nil {
		return status.Error(codes.FailedPrecondition, "not configured")
	}
	csr, err := x509.ParseCertificateRequest(req.Csr)
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "bad CSR: %v", err)
	}
	ttl := time.Duration(req.PreferredTtl) * time.Second
	if ttl <= 0 {
		ttl = time.Hour
	}
	now := time.Now()
	notAfter := now.Add(ttl)
	if notAfter.After(cert.NotAfter) {
		notAfter = cert.NotAfter
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return status.Errorf(codes.Internal, "serial: %v", err)
	}
	template := &x509.Certificate{
		SerialNumber: serial,
		Subject:      csr.Subject,
		// As upstream's plugins: the CA's one URI SAN is the trust domain's ID.
		URIs:                  []*url.URL{{Scheme: "spiffe", Host: td}},
		NotBefore:             now.Add(-10 * time.Second),
		NotAfter:              notAfter,
		BasicConstraintsValid: true,
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, template, cert, csr.PublicKey, key)
	if err != nil {
		return status.Errorf(codes.Internal, "cannot sign the CA: %v", err)
	}
	roots, last := p.roots()
	if err := stream.Send(&upstreamauthorityv1.MintX509CAResponse{
		X509CaChain:       []*types.X509Certificate{{Asn1: der}},
		UpstreamX509Roots: roots,
	}); err != nil {
		return err
	}
	ticker := time.NewTicker(200 * time.Millisecond)
	defer ticker.Stop()
	for {
		select {
		case <-stream.Context().Done():
			return nil
		case <-ticker.C:
		}
		roots, content := p.roots()
		if content == last {
			continue
		}
		last = content
		if err := stream.Send(&upstreamauthorityv1.MintX509CAResponse{UpstreamX509Roots: roots}); err != nil {
			return err
		}
	}
}

func (p *plugin) PublishJWTKeyAndSubscribe(req *upstreamauthorityv1.PublishJWTKeyRequest, stream upstreamauthorityv1.UpstreamAuthority_PublishJWTKeyAndSubscribeServer) error {
	if req.JwtKey == nil || req.JwtKey.KeyId == "" {
		return status.Error(codes.InvalidArgument, "jwt_key is required")
	}
	p.mu.Lock()
	p.jwtKeys = append(p.jwtKeys, req.JwtKey)
	keys := append([]*types.JWTKey(nil), p.jwtKeys...)
	p.mu.Unlock()
	if err := stream.Send(&upstreamauthorityv1.PublishJWTKeyResponse{UpstreamJwtKeys: keys}); err != nil {
		return err
	}
	<-stream.Context().Done()
	return nil
}

func main() {
	p := new(plugin)
	pluginmain.Serve(
		upstreamauthorityv1.UpstreamAuthorityPluginServer(p),
		configv1.ConfigServiceServer(p),
	)
}
