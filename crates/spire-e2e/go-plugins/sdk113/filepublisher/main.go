// A test server BundlePublisher: writes every bundle it is given to the file named by
// plugin_data `path`, as one line "<trust domain> <sequence number> <number of X.509
// authorities> <DER of each authority, hex, comma separated>", replacing the file, and
// appends the same line to `path`.log so a test can count the calls.
package main

import (
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/hashicorp/hcl"
	"github.com/spiffe/spire-plugin-sdk/pluginmain"
	bundlepublisherv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/plugin/server/bundlepublisher/v1"
	configv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/service/common/config/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

type config struct {
	Path string `hcl:"path"`
}

type plugin struct {
	bundlepublisherv1.UnimplementedBundlePublisherServer
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

func (p *plugin) PublishBundle(_ context.Context, req *bundlepublisherv1.PublishBundleRequest) (*bundlepublisherv1.PublishBundleResponse, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	b := req.GetBundle()
	if b == nil {
		return nil, status.Error(codes.InvalidArgument, "missing bundle in request")
	}
	var authorities []string
	for _, a := range b.X509Authorities {
		authorities = append(authorities, hex.EncodeToString(a.Asn1))
	}
	line := fmt.Sprintf("%s %d %d %s\n", b.TrustDomain, b.SequenceNumber, len(b.X509Authorities), strings.Join(authorities, ","))
	if err := os.WriteFile(p.path, []byte(line), 0o600); err != nil {
		return nil, status.Errorf(codes.Internal, "cannot write %s: %v", p.path, err)
	}
	f, err := os.OpenFile(p.path+".log", os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "cannot open %s.log: %v", p.path, err)
	}
	defer f.Close()
	if _, err := f.WriteString(line); err != nil {
		return nil, status.Errorf(codes.Internal, "cannot write %s.log: %v", p.path, err)
	}
	return &bundlepublisherv1.PublishBundleResponse{}, nil
}

func main() {
	p := new(plugin)
	pluginmain.Serve(
		bundlepublisherv1.BundlePublisherPluginServer(p),
		configv1.ConfigServiceServer(p),
	)
}
