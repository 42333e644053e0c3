// A test agent SVIDStore: PutX509SVID writes what it received to <directory>/<name>.json,
// where `name` comes from the entry's selector metadata `name:<name>` (parsed as upstream's
// svidstore.ParseMetadata does); DeleteX509SVID removes that file and appends the name to
// <directory>/deleted.log. Metadata without a colon is refused with InvalidArgument, as
// upstream's stores do.
package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/hashicorp/hcl"
	"github.com/spiffe/spire-plugin-sdk/pluginmain"
	svidstorev1 "github.com/spiffe/spire-plugin-sdk/proto/spire/plugin/agent/svidstore/v1"
	configv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/service/common/config/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

type config struct {
	Directory string `hcl:"directory"`
}

type stored struct {
	SpiffeID         string         `json:"spiffe_id"`
	LeafURI          string         `json:"leaf_uri"`
	ChainLength      int            `json:"chain_length"`
	KeyType          string         `json:"key_type"`
	BundleLength     int            `json:"bundle_length"`
	ExpiresAt        int64          `json:"expires_at"`
	LeafNotAfter     int64          `json:"leaf_not_after"`
	LeafSerial       string         `json:"leaf_serial"`
	Metadata         []string       `json:"metadata"`
	FederatedBundles map[string]int `json:"federated_bundles"`
}

type plugin struct {
	svidstorev1.UnimplementedSVIDStoreServer
	configv1.UnimplementedConfigServer

	mu  sync.Mutex
	dir string
}

func (p *plugin) Configure(_ context.Context, req *configv1.ConfigureRequest) (*configv1.ConfigureResponse, error) {
	c := new(config)
	if err := hcl.Decode(c, req.HclConfiguration); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "bad configuration: %v", err)
	}
	if c.Directory == "" {
		return nil, status.Error(codes.InvalidArgument, "directory is required")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dir = c.Directory
	return &configv1.ConfigureResponse{}, nil
}

func name(metadata []string) (string, error) {
	data := map[string]string{}
	for _, m := range metadata {
		kv := strings.SplitN(m, ":", 2)
		if len(kv) < 2 {
			return "", status.Errorf(codes.InvalidArgument, "metadata does not contain a colon: %q", m)
		}
		data[kv[0]] = kv[1]
	}
	n := data["name"]
	if n == "" || strings.ContainsAny(n, "/.") {
		return "", status.Error(codes.InvalidArgument, "name:<file name> is required in the selectors")
	}
	return n, nil
}

func (p *plugin) PutX509SVID(_ context.Context, req *svidstorev1.PutX509SVIDRequest) (*svidstorev1.PutX509SVIDResponse, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n, err := name(req.Metadata)
	if err != nil {
		return nil, err
	}
	svid := req.GetSvid()
	if svid == nil || len(svid.CertChain) == 0 {
		return nil, status.Error(codes.InvalidArgument, "svid is required")
	}
	leaf, err := x509.ParseCertificate(svid.CertChain[0])
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "bad leaf: %v", err)
	}
	key, err := x509.ParsePKCS8PrivateKey(svid.PrivateKey)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "bad key: %v", err)
	}
	for _, der := range svid.Bundle {
		if _, err := x509.ParseCertificate(der); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "bad bundle certificate: %v", err)
		}
	}
	out := stored{
		SpiffeID:         svid.SpiffeID,
		ChainLength:      len(svid.CertChain),
		KeyType:          fmt.Sprintf("%T", key),
		BundleLength:     len(svid.Bundle),
		ExpiresAt:        svid.ExpiresAt,
		LeafNotAfter:     leaf.NotAfter.Unix(),
		LeafSerial:       leaf.SerialNumber.String(),
		Metadata:         req.Metadata,
		FederatedBundles: map[string]int{},
	}
	if len(leaf.URIs) == 1 {
		out.LeafURI = leaf.URIs[0].String()
	}
	for td, der := range req.FederatedBundles {
		certs, err := x509.ParseCertificates(der)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "bad federated bundle %q: %v", td, err)
		}
		out.FederatedBundles[td] = len(certs)
	}
	data, err := json.Marshal(out)
	if err != nil {
		return nil, err
	}
	tmp := filepath.Join(p.dir, n+".tmp")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return nil, status.Errorf(codes.Internal, "cannot write: %v", err)
	}
	if err := os.Rename(tmp, filepath.Join(p.dir, n+".json")); err != nil {
		return nil, status.Errorf(codes.Internal, "cannot write: %v", err)
	}
	return &svidstorev1.PutX509SVIDResponse{}, nil
}

func (p *plugin) DeleteX509SVID(_ context.Context, req *svidstorev1.DeleteX509SVIDRequest) (*svidstorev1.DeleteX509SVIDResponse, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n, err := name(req.Metadata)
	if err != nil {
		return nil, err
	}
	if err := os.Remove(filepath.Join(p.dir, n+".json")); err != nil && !os.IsNotExist(err) {
		return nil, status.Errorf(codes.Internal, "cannot delete: %v", err)
	}
	f, err := os.OpenFile(filepath.Join(p.dir, "deleted.log"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "cannot log: %v", err)
	}
	defer f.Close()
	_, err = fmt.Fprintln(f, n)
	return &svidstorev1.DeleteX509SVIDResponse{}, err
}

func main() {
	p := new(plugin)
	pluginmain.Serve(
		svidstorev1.SVIDStorePluginServer(p),
		configv1.ConfigServiceServer(p),
	)
}
