// A test agent WorkloadAttestor: selectors `pid:<pid>` and `label:<label from plugin_data>`,
// plus `ppid:<parent pid>` read from /proc so the answer depends on the real process. Each
// attestation is logged through the SDK's logger, so a test can find the line in the host's log.
// Each attestation also counts `pidwa.attest{label=<label>}` through the agent's Metrics host
// service when the host offers it.
// With `die_file = "<path>"` in plugin_data, an Attest made while that file exists makes the
// process exit with status 3, like a plugin crashing at run time.
package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/hcl"
	"github.com/spiffe/spire-plugin-sdk/pluginmain"
	"github.com/spiffe/spire-plugin-sdk/pluginsdk"
	metricsv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/hostservice/common/metrics/v1"
	workloadattestorv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/plugin/agent/workloadattestor/v1"
	configv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/service/common/config/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

type config struct {
	Label   string `hcl:"label"`
	DieFile string `hcl:"die_file"`
}

type plugin struct {
	workloadattestorv1.UnimplementedWorkloadAttestorServer
	configv1.UnimplementedConfigServer

	mu      sync.Mutex
	config  *config
	logger  hclog.Logger
	metrics metricsv1.MetricsServiceClient
}

// BrokerHostServices asks for the Metrics host service (offered by SPIRE agents).
func (p *plugin) BrokerHostServices(broker pluginsdk.ServiceBroker) error {
	broker.BrokerClient(&p.metrics)
	return nil
}

// SetLogger is called by the SDK with a logger whose lines reach the host's log.
func (p *plugin) SetLogger(logger hclog.Logger) {
	p.logger = logger
}

func (p *plugin) Configure(_ context.Context, req *configv1.ConfigureRequest) (*configv1.ConfigureResponse, error) {
	c := new(config)
	if err := hcl.Decode(c, req.HclConfiguration); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "bad configuration: %v", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.config = c
	return &configv1.ConfigureResponse{}, nil
}

func (p *plugin) Attest(ctx context.Context, req *workloadattestorv1.AttestRequest) (*workloadattestorv1.AttestResponse, error) {
	p.mu.Lock()
	c := p.config
	p.mu.Unlock()
	if c == nil {
		return nil, status.Error(codes.FailedPrecondition, "not configured")
	}
	if c.DieFile != "" {
		if _, err := os.Stat(c.DieFile); err == nil {
			fmt.Fprintf(os.Stderr, "pidattestor: %s exists, exiting\n", c.DieFile)
			os.Exit(3)
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", req.Pid))
	if err != nil {
		return nil, status.Errorf(codes.Internal, "cannot read the workload's stat: %v", err)
	}
	// The fields after the parenthesised command name: state, ppid, ...
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	if len(fields) < 2 {
		return nil, status.Error(codes.Internal, "malformed stat file")
	}
	if p.logger != nil {
		p.logger.Info("Attesting workload", "pid", req.Pid, "label", c.Label)
	}
	if p.metrics.IsInitialized() {
		_, err := p.metrics.IncrCounter(ctx, &metricsv1.IncrCounterRequest{
			Key:    []string{"pidwa", "attest"},
			Val:    1,
			Labels: []*metricsv1.Label{{Name: "label", Value: c.Label}},
		})
		if err != nil {
			return nil, status.Errorf(codes.Internal, "cannot count the attestation: %v", err)
		}
	}
	return &workloadattestorv1.AttestResponse{SelectorValues: []string{
		fmt.Sprintf("pid:%d", req.Pid),
		"ppid:" + fields[1],
		"label:" + c.Label,
	}}, nil
}

func main() {
	p := new(plugin)
	pluginmain.Serve(
		workloadattestorv1.WorkloadAttestorPluginServer(p),
		configv1.ConfigServiceServer(p),
	)
}
