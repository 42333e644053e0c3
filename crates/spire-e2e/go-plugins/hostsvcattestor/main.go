// A test server NodeAttestor that reports what SPIRE's host services told it. It speaks the
// challenge protocol of challengeattestor-server (so challengeattestor-agent attests with
// it): the agent sends {"node": NAME}, answers hex(HMAC-SHA256(secret, nonce)). The agent's
// selectors then carry what the plugin brokered in BrokerHostServices and what each host
// service answered during this attestation:
//
//	brokered:agentstore:true|false, brokered:identityprovider:..., brokered:metrics:...
//	agentstore:found | agentstore:<gRPC code>   (GetAgentInfo of the agent being attested)
//	identity:<URI SAN of the server's X509-SVID> | identity:<gRPC code>
//	bundle:<trust domain>:<number of X.509 authorities>
//	metrics:ok | metrics:<gRPC code>            (IncrCounter hostsvc.attest{node=NAME})
//
// It always allows re-attestation, so a second attestation of the same node sees it found.
package main

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sync"

	"github.com/hashicorp/hcl"
	"github.com/spiffe/spire-plugin-sdk/pluginmain"
	"github.com/spiffe/spire-plugin-sdk/pluginsdk"
	metricsv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/hostservice/common/metrics/v1"
	agentstorev1 "github.com/spiffe/spire-plugin-sdk/proto/spire/hostservice/server/agentstore/v1"
	identityproviderv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/hostservice/server/identityprovider/v1"
	nodeattestorv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/plugin/server/nodeattestor/v1"
	configv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/service/common/config/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

type config struct {
	Secret string `hcl:"secret"`
}

type plugin struct {
	nodeattestorv1.UnimplementedNodeAttestorServer
	configv1.UnimplementedConfigServer

	agentStore       agentstorev1.AgentStoreServiceClient
	identityProvider identityproviderv1.IdentityProviderServiceClient
	metrics          metricsv1.MetricsServiceClient
	brokered         []string

	mu          sync.Mutex
	config      *config
	trustDomain string
}

func (p *plugin) BrokerHostServices(broker pluginsdk.ServiceBroker) error {
	p.brokered = []string{
		fmt.Sprintf("brokered:agentstore:%t", broker.BrokerClient(&p.agentStore)),
		fmt.Sprintf("brokered:identityprovider:%t", broker.BrokerClient(&p.identityProvider)),
		fmt.Sprintf("brokered:metrics:%t", broker.BrokerClient(&p.metrics)),
	}
	return nil
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

// report asks every brokered host service and returns the selectors describing the answers.
func (p *plugin) report(ctx context.Context, agentID, node string) []string {
	out := append([]string{}, p.brokered...)
	if p.agentStore.IsInitialized() {
		_, err := p.agentStore.GetAgentInfo(ctx, &agentstorev1.GetAgentInfoRequest{AgentId: agentID})
		if err == nil {
			out = append(out, "agentstore:found")
		} else {
			out = append(out, "agentstore:"+status.Code(err).String())
		}
	}
	if p.identityProvider.IsInitialized() {
		resp, err := p.identityProvider.FetchX509Identity(ctx, &identityproviderv1.FetchX509IdentityRequest{})
		switch {
		case err != nil:
			out = append(out, "identity:"+status.Code(err).String())
		case len(resp.GetIdentity().GetCertChain()) == 0:
			out = append(out, "identity:empty-chain")
		default:
			leaf, perr := x509.ParseCertificate(resp.Identity.CertChain[0])
			_, kerr := x509.ParsePKCS8PrivateKey(resp.Identity.PrivateKey)
			switch {
			case perr != nil:
				out = append(out, "identity:bad-certificate")
			case kerr != nil:
				out = append(out, "identity:bad-key")
			case len(leaf.URIs) != 1:
				out = append(out, "identity:no-uri")
			default:
				out = append(out, "identity:"+leaf.URIs[0].String())
			}
			out = append(out, fmt.Sprintf("bundle:%s:%d", resp.GetBundle().GetTrustDomain(), len(resp.GetBundle().GetX509Authorities())))
		}
	}
	if p.metrics.IsInitialized() {
		_, err := p.metrics.IncrCounter(ctx, &metricsv1.IncrCounterRequest{
			Key:    []string{"hostsvc", "attest"},
			Val:    1,
			Labels: []*metricsv1.Label{{Name: "node", Value: node}},
		})
		if err == nil {
			out = append(out, "metrics:ok")
		} else {
			out = append(out, "metrics:"+status.Code(err).String())
		}
	}
	return out
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
	if !hmac.Equal([]byte(hex.EncodeToString(mac.Sum(nil))), resp.GetChallengeResponse()) {
		return status.Error(codes.PermissionDenied, "challenge response does not prove the secret")
	}
	agentID := "spiffe://" + td + "/spire/agent/challenge/" + payload.Node
	return stream.Send(&nodeattestorv1.AttestResponse{
		Response: &nodeattestorv1.AttestResponse_AgentAttributes{
			AgentAttributes: &nodeattestorv1.AgentAttributes{
				SpiffeId:       agentID,
				SelectorValues: p.report(stream.Context(), agentID, payload.Node),
				CanReattest:    true,
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
