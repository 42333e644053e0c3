// Server half of a test NodeAttestor ("challenge") with one challenge round: the agent
// sends {"node": NAME}; the server challenges it with a nonce and expects
// hex(HMAC-SHA256(secret, nonce)). The agent ID and selectors name the node, the trust domain
// comes from the core configuration, and `group` from plugin_data.
package main

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"sync"

	"github.com/hashicorp/hcl"
	"github.com/spiffe/spire-plugin-sdk/pluginmain"
	nodeattestorv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/plugin/server/nodeattestor/v1"
	configv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/service/common/config/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

type config struct {
	Secret string `hcl:"secret"`
	Group  string `hcl:"group"`
	// DieFile: an attestation made while this file exists makes the process exit with
	// status 3 after reading the payload, like a plugin crashing at run time.
	DieFile string `hcl:"die_file"`
}

type plugin struct {
	nodeattestorv1.UnimplementedNodeAttestorServer
	configv1.UnimplementedConfigServer

	mu          sync.Mutex
	config      *config
	trustDomain string
}

func (p *plugin) Configure(_ context.Context, req *configv1.ConfigureRequest) (*configv1.ConfigureResponse, error) {
	c := new(config)
	if err := hcl.Decode(c, req.HclConfiguration); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "bad configuration: %v", err)
	}
	if c.Secret == "" {
		return nil, status.Error(codes.InvalidArgument, "secret is required")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.config = c
	p.trustDomain = req.CoreConfiguration.TrustDomain
	return &configv1.ConfigureResponse{}, nil
}

func (p *plugin) Attest(stream nodeattestorv1.NodeAttestor_AttestServer) error {
	p.mu.Lock()
	c, td := p.config, p.trustDomain
	p.mu.Unlock()
	if c == nil {
		return status.Error(codes.FailedPrecondition, "not configured")
	}
	req, err := stream.Recv()
	if err != nil {
		return err
	}
	if c.DieFile != "" {
		if _, err := os.Stat(c.DieFile); err == nil {
			fmt.Fprintf(os.Stderr, "challengeattestor: %s exists, exiting\n", c.DieFile)
			os.Exit(3)
		}
	}
	var payload struct {
		Node string `json:"node"`
	}
	if err := json.Unmarshal(req.GetPayload(), &payload); err != nil || payload.Node == "" {
		return status.Error(codes.InvalidArgument, "payload must be {\"node\": NAME}")
	}
	nonce := make([]byte, 16)
	if _, err := rand.Read(nonce); err != nil {
		return err
	}
	if err := stream.Send(&nodeattestorv1.AttestResponse{
		Response: &nodeattestorv1.AttestResponse_Challenge{Challenge: nonce},
	}); err != nil {
		return err
	}
	resp, err := stream.Recv()
	if err != nil {
		return err
	}
	mac := hmac.New(sha256.New, []byte(c.Secret))
	mac.Write(nonce)
	want := hex.EncodeToString(mac.Sum(nil))
	if !hmac.Equal([]byte(want), resp.GetChallengeResponse()) {
		return status.Error(codes.PermissionDenied, "challenge response does not prove the secret")
	}
	return stream.Send(&nodeattestorv1.AttestResponse{
		Response: &nodeattestorv1.AttestResponse_AgentAttributes{
			AgentAttributes: &nodeattestorv1.AgentAttributes{
				SpiffeId:       "spiffe://" + td + "/spire/agent/challenge/" + payload.Node,
				SelectorValues: []string{"node:" + payload.Node, "group:" + c.Group},
			},
		},
	})
}

func main() {
	p := new(plugin)
	pluginmain.Serve(
		nodeattestorv1.NodeAttestorPluginServer(p),
		configv1.ConfigServiceServer(p),
	)
}
