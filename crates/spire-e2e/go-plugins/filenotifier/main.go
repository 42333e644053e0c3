// A test server Notifier: appends one line per event to the file named by plugin_data
// `path`: "<event> <trust domain> <number of X.509 authorities> <DER of the first, hex>
// <number of JWT authorities>".
package main

import (
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"sync"

	"github.com/hashicorp/hcl"
	"github.com/spiffe/spire-plugin-sdk/pluginmain"
	notifierv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/plugin/server/notifier/v1"
	"github.com/spiffe/spire-plugin-sdk/proto/spire/plugin/types"
	configv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/service/common/config/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

type config struct {
	Path string `hcl:"path"`
}

type plugin struct {
	notifierv1.UnimplementedNotifierServer
	configv1.UnimplementedConfigServer

	mu   sync.Mutex
	path string
}

func (p *plugin) Configure(_ context.Context, req *configv1.ConfigureRequest) (*configv1.ConfigureResponse, error) {
	c := new(config)
	if err := hcl.Decode(c, req.HclConfiguration); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "bad configuration: %v", err)
	}
	if c.Path == "" {
		return nil, status.Error(codes.InvalidArgument, "path is required")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.path = c.Path
	return &configv1.ConfigureResponse{}, nil
}

func (p *plugin) record(event string, b *types.Bundle) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if b == nil {
		return status.Error(codes.InvalidArgument, "bundle is required")
	}
	first := ""
	if len(b.X509Authorities) > 0 {
		first = hex.EncodeToString(b.X509Authorities[0].Asn1)
	}
	f, err := os.OpenFile(p.path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return status.Errorf(codes.Internal, "cannot open %s: %v", p.path, err)
	}
	defer f.Close()
	_, err = fmt.Fprintf(f, "%s %s %d %s %d\n", event, b.TrustDomain, len(b.X509Authorities), first, len(b.JwtAuthorities))
	return err
}

func (p *plugin) Notify(_ context.Context, req *notifierv1.NotifyRequest) (*notifierv1.NotifyResponse, error) {
	if err := p.record("updated", req.GetBundleUpdated().GetBundle()); err != nil {
		return nil, err
	}
	return &notifierv1.NotifyResponse{}, nil
}

func (p *plugin) NotifyAndAdvise(_ context.Context, req *notifierv1.NotifyAndAdviseRequest) (*notifierv1.NotifyAndAdviseResponse, error) {
	if err := p.record("loaded", req.GetBundleLoaded().GetBundle()); err != nil {
		return nil, err
	}
	return &notifierv1.NotifyAndAdviseResponse{}, nil
}

func main() {
	p := new(plugin)
	pluginmain.Serve(
		notifierv1.NotifierPluginServer(p),
		configv1.ConfigServiceServer(p),
	)
}
