// Agent half of the test "challenge" NodeAttestor: sends {"node": NAME} and answers the
// server's nonce with hex(HMAC-SHA256(secret, nonce)).
package main

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"sync"

	"github.com/hashicorp/hcl"
	"github.com/spiffe/spire-plugin-sdk/pluginmain"
	nodeattestorv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/plugin/agent/nodeattestor/v1"
	configv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/service/common/config/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

type config struct {
	Node   string `hcl:"node"`
	Secret string `hcl:"secret"`
}

type plugin struct {
	nodeattestorv1.UnimplementedNodeAttestorServer
	configv1.UnimplementedConfigServer

	mu     sync.Mutex
	config *config
}

func (p *plugin) Configure(_ context.Context, req *configv1.ConfigureRequest) (*configv1.ConfigureResponse, error) {
	c := new(config)
	if err := hcl.Decode(c, req.HclConfiguration); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "bad configuration: %v", err)
	}
	if c.Node == "" || c.Secret == "" {
		return nil, status.Error(codes.InvalidArgument, "node and secret are required")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.config = c
	return &configv1.ConfigureResponse{}, nil
}

func (p *plugin) AidAttestation(stream nodeattestorv1.NodeAttestor_AidAttestationServer) error {
	p.mu.Lock()
	c := p.config
	p.mu.Unlock()
	if c == nil {
		return status.Error(codes.FailedPrecondition, "not configured")
	}
	payload, err := json.Marshal(map[string]string{"node": c.Node})
	if err != nil {
		return err
	}
	if err := stream.Send(&nodeattestorv1.PayloadOrChallengeResponse{
		Data: &nodeattestorv1.PayloadOrChallengeResponse_Payload{Payload: payload},
	}); err != nil {
		return err
	}
	for {
		challenge, err := stream.Recv()
		if err != nil {
			// The host closes the stream once attestation is over.
			return nil
		}
		mac := hmac.New(sha256.New, []byte(c.Secret))
		mac.Write(challenge.Challenge)
		if err := stream.Send(&nodeattestorv1.PayloadOrChallengeResponse{
			Data: &nodeattestorv1.PayloadOrChallengeResponse_ChallengeResponse{
				ChallengeResponse: []byte(hex.EncodeToString(mac.Sum(nil))),
			},
		}); err != nil {
			return err
		}
	}
}

func main() {
	p := new(plugin)
	pluginmain.Serve(
		nodeattestorv1.NodeAttestorPluginServer(p),
		configv1.ConfigServiceServer(p),
	)
}
