// A test server CredentialComposer: adds plugin_data `unit` as an organizational unit to the
// subject of workload X509-SVIDs (and `ca_unit` to the server's X509 CA when set), and
// plugin_data `claim` as the JWT claim "composed" on workload JWT-SVIDs, whose value names
// the SPIFFE ID. Agent and server X509-SVIDs are left as they are (the SDK's Unimplemented,
// which the host must treat as "no change").
package main

import (
	"context"
	"sync"

	"github.com/hashicorp/hcl"
	"github.com/spiffe/spire-plugin-sdk/pluginmain"
	credentialcomposerv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/plugin/server/credentialcomposer/v1"
	configv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/service/common/config/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

type config struct {
	Unit   string `hcl:"unit"`
	CAUnit string `hcl:"ca_unit"`
	Claim  string `hcl:"claim"`
}

type plugin struct {
	credentialcomposerv1.UnimplementedCredentialComposerServer
	configv1.UnimplementedConfigServer

	mu  sync.Mutex
	cfg config
}

func (p *plugin) Configure(_ context.Context, req *configv1.ConfigureRequest) (*configv1.ConfigureResponse, error) {
	c := new(config)
	if err := hcl.Decode(c, req.HclConfiguration); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "bad configuration: %v", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cfg = *c
	return &configv1.ConfigureResponse{}, nil
}

func (p *plugin) config() config {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cfg
}

func (p *plugin) ComposeServerX509CA(_ context.Context, req *credentialcomposerv1.ComposeServerX509CARequest) (*credentialcomposerv1.ComposeServerX509CAResponse, error) {
	c := p.config()
	if c.CAUnit == "" {
		return nil, status.Error(codes.Unimplemented, "not composing the CA")
	}
	attrs := req.GetAttributes()
	if attrs.Subject == nil {
		attrs.Subject = &credentialcomposerv1.DistinguishedName{}
	}
	attrs.Subject.OrganizationalUnit = append(attrs.Subject.OrganizationalUnit, c.CAUnit)
	return &credentialcomposerv1.ComposeServerX509CAResponse{Attributes: attrs}, nil
}

func (p *plugin) ComposeWorkloadX509SVID(_ context.Context, req *credentialcomposerv1.ComposeWorkloadX509SVIDRequest) (*credentialcomposerv1.ComposeWorkloadX509SVIDResponse, error) {
	c := p.config()
	if req.SpiffeId == "" || len(req.PublicKey) == 0 {
		return nil, status.Error(codes.InvalidArgument, "spiffe_id and public_key are required")
	}
	attrs := req.GetAttributes()
	if attrs.Subject == nil {
		attrs.Subject = &credentialcomposerv1.DistinguishedName{}
	}
	attrs.Subject.OrganizationalUnit = append(attrs.Subject.OrganizationalUnit, c.Unit)
	return &credentialcomposerv1.ComposeWorkloadX509SVIDResponse{Attributes: attrs}, nil
}

func (p *plugin) ComposeWorkloadJWTSVID(_ context.Context, req *credentialcomposerv1.ComposeWorkloadJWTSVIDRequest) (*credentialcomposerv1.ComposeWorkloadJWTSVIDResponse, error) {
	c := p.config()
	attrs := req.GetAttributes()
	if attrs.GetClaims() == nil {
		return nil, status.Error(codes.InvalidArgument, "claims are required")
	}
	attrs.Claims.Fields["composed"] = structpb.NewStringValue(c.Claim + " for " + req.SpiffeId)
	return &credentialcomposerv1.ComposeWorkloadJWTSVIDResponse{Attributes: attrs}, nil
}

func main() {
	p := new(plugin)
	pluginmain.Serve(
		credentialcomposerv1.CredentialComposerPluginServer(p),
		configv1.ConfigServiceServer(p),
	)
}
