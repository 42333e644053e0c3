// A test server Notifier that shows how its plugin_data arrives: on Configure it decodes the
// text with hcl.Decode (hashicorp/hcl v1, as most plugins do) into a struct with nested
// blocks, maps and lists, and writes {"text": <the raw text>, "decoded": <the struct>} as JSON
// to the file named by its `output` key. It never fails on the shape of the data.
package main

import (
	"context"
	"encoding/json"
	"os"

	"github.com/hashicorp/hcl"
	"github.com/spiffe/spire-plugin-sdk/pluginmain"
	notifierv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/plugin/server/notifier/v1"
	configv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/service/common/config/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

type cluster struct {
	ServiceAccounts []string `hcl:"service_account_allow_list" json:"service_account_allow_list"`
	Audience        []string `hcl:"audience" json:"audience"`
	UseTokenReview  bool     `hcl:"use_token_review_api_validation" json:"use_token_review_api_validation"`
}

type server struct {
	Name string   `hcl:",key" json:"name"`
	Port int      `hcl:"port" json:"port"`
	Tags []string `hcl:"tags" json:"tags"`
}

type inner struct {
	Name  string  `hcl:"name" json:"name"`
	Ratio float64 `hcl:"ratio" json:"ratio"`
}

type nested struct {
	Depth int     `hcl:"depth" json:"depth"`
	Inner []inner `hcl:"inner" json:"inner"`
}

type config struct {
	Output   string             `hcl:"output" json:"output"`
	Enabled  bool               `hcl:"enabled" json:"enabled"`
	Count    int                `hcl:"count" json:"count"`
	Labels   []string           `hcl:"labels" json:"labels"`
	Clusters map[string]cluster `hcl:"clusters" json:"clusters"`
	Servers  []server           `hcl:"server" json:"server"`
	Nested   nested             `hcl:"nested" json:"nested"`
	Env      map[string]string  `hcl:"env" json:"env"`
}

type plugin struct {
	notifierv1.UnimplementedNotifierServer
	configv1.UnimplementedConfigServer
}

func (p *plugin) Configure(_ context.Context, req *configv1.ConfigureRequest) (*configv1.ConfigureResponse, error) {
	c := new(config)
	decodeErr := ""
	if err := hcl.Decode(c, req.HclConfiguration); err != nil {
		decodeErr = err.Error()
	}
	var generic map[string]interface{}
	genericErr := ""
	if err := hcl.Decode(&generic, req.HclConfiguration); err != nil {
		genericErr = err.Error()
	}
	if c.Output == "" {
		return nil, status.Errorf(codes.InvalidArgument, "output is required (decode error: %s)", decodeErr)
	}
	out, err := json.MarshalIndent(map[string]interface{}{
		"text":          req.HclConfiguration,
		"decoded":       c,
		"decode_error":  decodeErr,
		"generic":       generic,
		"generic_error": genericErr,
	}, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(c.Output, out, 0o600); err != nil {
		return nil, status.Errorf(codes.Internal, "cannot write %s: %v", c.Output, err)
	}
	return &configv1.ConfigureResponse{}, nil
}

func (p *plugin) Notify(context.Context, *notifierv1.NotifyRequest) (*notifierv1.NotifyResponse, error) {
	return &notifierv1.NotifyResponse{}, nil
}

func (p *plugin) NotifyAndAdvise(context.Context, *notifierv1.NotifyAndAdviseRequest) (*notifierv1.NotifyAndAdviseResponse, error) {
	return &notifierv1.NotifyAndAdviseResponse{}, nil
}

func main() {
	p := new(plugin)
	pluginmain.Serve(
		notifierv1.NotifierPluginServer(p),
		configv1.ConfigServiceServer(p),
	)
}
