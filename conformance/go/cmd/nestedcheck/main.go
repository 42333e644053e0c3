// Command nestedcheck fetches the X509-SVID of the workload it runs as from the Workload API
// at SPIFFE_ENDPOINT_SOCKET with go-spiffe v2 and verifies its chain against a trust bundle
// read from a PEM file (the root server's bundle in crates/spire-e2e/tests/nested.rs), as a
// workload of a nested SPIRE deployment would. It prints the SPIFFE ID and the chain length
// and exits non-zero when the chain does not verify.
//
//	nestedcheck <trust-domain> <bundle.pem>
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: nestedcheck <trust-domain> <bundle.pem>")
		os.Exit(2)
	}
	td, err := spiffeid.TrustDomainFromString(os.Args[1])
	if err != nil {
		fmt.Fprintf(os.Stderr, "bad trust domain: %v\n", err)
		os.Exit(2)
	}
	bundle, err := x509bundle.Load(td, os.Args[2])
	if err != nil {
		fmt.Fprintf(os.Stderr, "cannot load the bundle: %v\n", err)
		os.Exit(1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	svid, err := workloadapi.FetchX509SVID(ctx)
	if err != nil {
		fmt.Fprintf(os.Stderr, "FetchX509SVID: %v\n", err)
		os.Exit(1)
	}
	id, chains, err := x509svid.Verify(svid.Certificates, bundle)
	if err != nil {
		fmt.Fprintf(os.Stderr, "the X509-SVID of %s does not verify against %s: %v\n", svid.ID, os.Args[2], err)
		os.Exit(1)
	}
	fmt.Printf("verified %s chain-length %d\n", id, len(chains[0]))
}
