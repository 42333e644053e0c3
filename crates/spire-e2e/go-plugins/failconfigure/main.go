// A NodeAttestor plugin (server or agent, by its magic cookie) that exits while being
// configured, like a plugin crashing on bad configuration.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/spiffe/spire-plugin-sdk/pluginmain"
	nodeattestorv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/plugin/server/nodeattestor/v1"
	configv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/service/common/config/v1"
)

type plugin struct {
	nodeattestorv1.UnimplementedNodeAttestorServer
	configv1.UnimplementedConfigServer
}

func (p *plugin) Configure(context.Context, *configv1.ConfigureRequest) (*configv1.ConfigureResponse, error) {
	fmt.Fprintln(os.Stderr, "failconfigure: giving up")
	os.Exit(3)
	return nil, nil
}

func main() {
	p := new(plugin)
	pluginmain.Serve(
		nodeattestorv1.NodeAttestorPluginServer(p),
		configv1.ConfigServiceServer(p),
	)
}
