// Package conformance checks our spire-agent's SPIFFE Workload API with go-spiffe v2, the
// upstream Go client. It is run by crates/spire-e2e/tests/conformance.rs against a live
// agent, which sets these variables:
//
//	SPIFFE_ENDPOINT_SOCKET         unix:///path/to/agent.sock (read by go-spiffe itself)
//	CONFORMANCE_TRUST_DOMAIN       the agent's trust domain (example.org)
//	CONFORMANCE_SPIFFE_ID          the workload's main SPIFFE ID
//	CONFORMANCE_HINT               the hint registered on that entry
//	CONFORMANCE_DNS_NAME           the DNS name registered on that entry
//	CONFORMANCE_SECOND_SPIFFE_ID   a second SPIFFE ID registered for the same workload
//	CONFORMANCE_SECOND_HINT        the hint of the second entry
package conformance

import (
	"context"
	"crypto"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const audience = "spiffe://example.org/conformance-audience"

// setup is what the Rust harness registered for this workload.
type setup struct {
	td         spiffeid.TrustDomain
	id         spiffeid.ID
	hint       string
	dnsName    string
	secondID   spiffeid.ID
	secondHint string
}

func mustEnv(t *testing.T, name string) string {
	t.Helper()
	value := os.Getenv(name)
	if value == "" {
		t.Fatalf("%s is not set: run these tests through `cargo test -p spire-e2e --test conformance`, which starts an agent and sets it", name)
	}
	return value
}

func loadSetup(t *testing.T) setup {
	t.Helper()
	mustEnv(t, "SPIFFE_ENDPOINT_SOCKET")
	td, err := spiffeid.TrustDomainFromString(mustEnv(t, "CONFORMANCE_TRUST_DOMAIN"))
	if err != nil {
		t.Fatalf("CONFORMANCE_TRUST_DOMAIN: %v", err)
	}
	id, err := spiffeid.FromString(mustEnv(t, "CONFORMANCE_SPIFFE_ID"))
	if err != nil {
		t.Fatalf("CONFORMANCE_SPIFFE_ID: %v", err)
	}
	secondID, err := spiffeid.FromString(mustEnv(t, "CONFORMANCE_SECOND_SPIFFE_ID"))
	if err != nil {
		t.Fatalf("CONFORMANCE_SECOND_SPIFFE_ID: %v", err)
	}
	return setup{
		td:         td,
		id:         id,
		hint:       mustEnv(t, "CONFORMANCE_HINT"),
		dnsName:    mustEnv(t, "CONFORMANCE_DNS_NAME"),
		secondID:   secondID,
		secondHint: mustEnv(t, "CONFORMANCE_SECOND_HINT"),
	}
}

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// requireKeyMatchesLeaf signs with the SVID's key and checks the signature with the leaf's
// public key: the agent must hand out the key of the certificate it hands out.
func requireKeyMatchesLeaf(t *testing.T, svid *x509svid.SVID) {
	t.Helper()
	pub, ok := svid.PrivateKey.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok {
		t.Fatalf("private key type %T has no comparable public key", svid.PrivateKey)
	}
	if !pub.Equal(svid.Certificates[0].PublicKey) {
		t.Fatalf("private key of %s does not match its leaf certificate", svid.ID)
	}
}

func TestFetchX509SVID(t *testing.T) {
	s := loadSetup(t)
	svid, err := workloadapi.FetchX509SVID(testContext(t))
	if err != nil {
		t.Fatalf("FetchX509SVID: %v", err)
	}
	if svid.ID != s.id && svid.ID != s.secondID {
		t.Fatalf("default SVID is %s, want %s or %s", svid.ID, s.id, s.secondID)
	}
	if len(svid.Certificates) == 0 {
		t.Fatal("SVID has no certificates")
	}
	leaf := svid.Certificates[0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != svid.ID.String() {
		t.Fatalf("leaf URI SANs %v, want exactly %s", leaf.URIs, svid.ID)
	}
	if time.Now().After(leaf.NotAfter) || time.Now().Before(leaf.NotBefore.Add(-time.Minute)) {
		t.Fatalf("leaf valid %s..%s, not now", leaf.NotBefore, leaf.NotAfter)
	}
	requireKeyMatchesLeaf(t, svid)
}

func TestFetchX509SVIDsCarriesEveryEntryWithItsHintAndDNSName(t *testing.T) {
	s := loadSetup(t)
	svids, err := workloadapi.FetchX509SVIDs(testContext(t))
	if err != nil {
		t.Fatalf("FetchX509SVIDs: %v", err)
	}
	got := map[spiffeid.ID]*x509svid.SVID{}
	for _, svid := range svids {
		got[svid.ID] = svid
		requireKeyMatchesLeaf(t, svid)
	}
	if len(svids) != 2 || got[s.id] == nil || got[s.secondID] == nil {
		ids := []string{}
		for _, svid := range svids {
			ids = append(ids, svid.ID.String())
		}
		t.Fatalf("SVIDs %v, want %s and %s", ids, s.id, s.secondID)
	}
	if got[s.id].Hint != s.hint || got[s.secondID].Hint != s.secondHint {
		t.Fatalf("hints %q and %q, want %q and %q", got[s.id].Hint, got[s.secondID].Hint, s.hint, s.secondHint)
	}
	if !slices.Contains(got[s.id].Certificates[0].DNSNames, s.dnsName) {
		t.Fatalf("DNS SANs %v of %s lack %s", got[s.id].Certificates[0].DNSNames, s.id, s.dnsName)
	}
}

func TestFetchX509BundlesVerifiesTheSVID(t *testing.T) {
	s := loadSetup(t)
	ctx := testContext(t)
	bundles, err := workloadapi.FetchX509Bundles(ctx)
	if err != nil {
		t.Fatalf("FetchX509Bundles: %v", err)
	}
	bundle, err := bundles.GetX509BundleForTrustDomain(s.td)
	if err != nil {
		t.Fatalf("no X.509 bundle for %s: %v", s.td, err)
	}
	if len(bundle.X509Authorities()) == 0 {
		t.Fatalf("X.509 bundle for %s is empty", s.td)
	}
	svid, err := workloadapi.FetchX509SVID(ctx)
	if err != nil {
		t.Fatalf("FetchX509SVID: %v", err)
	}
	id, chains, err := x509svid.Verify(svid.Certificates, bundles)
	if err != nil {
		t.Fatalf("x509svid.Verify against the fetched bundle: %v", err)
	}
	if id != svid.ID || len(chains) == 0 {
		t.Fatalf("Verify gave %s with %d chains, want %s", id, len(chains), svid.ID)
	}
	// A bundle for another trust domain does not verify it.
	other := x509bundle.NewSet(x509bundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString("other.test"), bundle.X509Authorities()))
	if _, _, err := x509svid.Verify(svid.Certificates, other); err == nil {
		t.Fatal("Verify accepted the SVID against a bundle of another trust domain")
	}
}

func TestFetchX509ContextBundlesMatchFetchX509Bundles(t *testing.T) {
	s := loadSetup(t)
	ctx := testContext(t)
	x509Ctx, err := workloadapi.FetchX509Context(ctx)
	if err != nil {
		t.Fatalf("FetchX509Context: %v", err)
	}
	fromCtx, err := x509Ctx.Bundles.GetX509BundleForTrustDomain(s.td)
	if err != nil {
		t.Fatalf("X509 context has no bundle for %s: %v", s.td, err)
	}
	bundles, err := workloadapi.FetchX509Bundles(ctx)
	if err != nil {
		t.Fatalf("FetchX509Bundles: %v", err)
	}
	fromBundles, err := bundles.GetX509BundleForTrustDomain(s.td)
	if err != nil {
		t.Fatalf("FetchX509Bundles has no bundle for %s: %v", s.td, err)
	}
	if !fromCtx.Equal(fromBundles) {
		t.Fatal("the bundle in FetchX509SVID differs from the one in FetchX509Bundles")
	}
	for _, svid := range x509Ctx.SVIDs {
		if _, _, err := x509svid.Verify(svid.Certificates, x509Ctx.Bundles); err != nil {
			t.Fatalf("%s does not verify against its context's bundles: %v", svid.ID, err)
		}
	}
}

func TestFetchJWTSVIDAndValidateLocallyWithJWTBundles(t *testing.T) {
	s := loadSetup(t)
	ctx := testContext(t)
	svid, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{
		Audience:       audience,
		ExtraAudiences: []string{"extra-audience"},
		Subject:        s.id,
	})
	if err != nil {
		t.Fatalf("FetchJWTSVID: %v", err)
	}
	if svid.ID != s.id {
		t.Fatalf("JWT-SVID subject %s, want %s", svid.ID, s.id)
	}
	gotAud := slices.Clone(svid.Audience)
	sort.Strings(gotAud)
	if !slices.Equal(gotAud, []string{"extra-audience", audience}) {
		t.Fatalf("aud claim %v, want %s and extra-audience", svid.Audience, audience)
	}
	if svid.Claims["sub"] != s.id.String() {
		t.Fatalf("sub claim %v, want %s", svid.Claims["sub"], s.id)
	}
	if !svid.Expiry.After(time.Now()) {
		t.Fatalf("JWT-SVID already expired at %s", svid.Expiry)
	}
	if svid.Hint != s.hint {
		t.Fatalf("JWT-SVID hint %q, want %q", svid.Hint, s.hint)
	}

	bundles, err := workloadapi.FetchJWTBundles(ctx)
	if err != nil {
		t.Fatalf("FetchJWTBundles: %v", err)
	}
	bundle, err := bundles.GetJWTBundleForTrustDomain(s.td)
	if err != nil {
		t.Fatalf("no JWT bundle for %s: %v", s.td, err)
	}
	if len(bundle.JWTAuthorities()) == 0 {
		t.Fatalf("JWT bundle for %s has no keys", s.td)
	}
	parsed, err := jwtsvid.ParseAndValidate(svid.Marshal(), bundles, []string{audience})
	if err != nil {
		t.Fatalf("ParseAndValidate with the fetched JWT bundle: %v", err)
	}
	if parsed.ID != s.id {
		t.Fatalf("validated subject %s, want %s", parsed.ID, s.id)
	}
	if _, err := jwtsvid.ParseAndValidate(svid.Marshal(), bundles, []string{"someone-else"}); err == nil {
		t.Fatal("ParseAndValidate accepted the token for an audience it was not minted for")
	}
	empty := jwtbundle.NewSet(jwtbundle.New(s.td))
	if _, err := jwtsvid.ParseAndValidate(svid.Marshal(), empty, []string{audience}); err == nil {
		t.Fatal("ParseAndValidate accepted the token with a bundle that lacks its key")
	}
}

func TestFetchJWTSVIDsWithoutSubjectGivesOnePerIdentity(t *testing.T) {
	s := loadSetup(t)
	svids, err := workloadapi.FetchJWTSVIDs(testContext(t), jwtsvid.Params{Audience: audience})
	if err != nil {
		t.Fatalf("FetchJWTSVIDs: %v", err)
	}
	ids := []string{}
	for _, svid := range svids {
		ids = append(ids, svid.ID.String())
	}
	sort.Strings(ids)
	want := []string{s.id.String(), s.secondID.String()}
	sort.Strings(want)
	if !slices.Equal(ids, want) {
		t.Fatalf("JWT-SVIDs for %v, want %v", ids, want)
	}
}

func TestValidateJWTSVID(t *testing.T) {
	s := loadSetup(t)
	ctx := testContext(t)
	svid, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: audience, Subject: s.id})
	if err != nil {
		t.Fatalf("FetchJWTSVID: %v", err)
	}
	valid, err := workloadapi.ValidateJWTSVID(ctx, svid.Marshal(), audience)
	if err != nil {
		t.Fatalf("ValidateJWTSVID of a fresh token: %v", err)
	}
	if valid.ID != s.id {
		t.Fatalf("validated subject %s, want %s", valid.ID, s.id)
	}

	_, err = workloadapi.ValidateJWTSVID(ctx, svid.Marshal(), "spiffe://example.org/another-audience")
	if err == nil {
		t.Fatal("ValidateJWTSVID accepted the token for another audience")
	}
	if code := status.Code(err); code != codes.InvalidArgument {
		t.Fatalf("another audience: status %s (%v), want InvalidArgument as upstream", code, err)
	}

	_, err = workloadapi.ValidateJWTSVID(ctx, "not.a.jwt", audience)
	if code := status.Code(err); code != codes.InvalidArgument {
		t.Fatalf("malformed token: status %s (%v), want InvalidArgument as upstream", code, err)
	}
}

// contextWatcher forwards X.509 context updates to a channel.
type contextWatcher struct {
	updates chan *workloadapi.X509Context
	errs    chan error
}

func (w *contextWatcher) OnX509ContextUpdate(c *workloadapi.X509Context) {
	select {
	case w.updates <- c:
	default:
	}
}

func (w *contextWatcher) OnX509ContextWatchError(err error) {
	if status.Code(err) == codes.Canceled || errors.Is(err, context.Canceled) {
		return
	}
	select {
	case w.errs <- err:
	default:
	}
}

func TestWatchX509ContextReceivesAnUpdate(t *testing.T) {
	s := loadSetup(t)
	ctx, cancel := context.WithCancel(testContext(t))
	watcher := &contextWatcher{updates: make(chan *workloadapi.X509Context, 1), errs: make(chan error, 1)}
	done := make(chan error, 1)
	go func() { done <- workloadapi.WatchX509Context(ctx, watcher) }()

	select {
	case update := <-watcher.updates:
		ids := []spiffeid.ID{}
		for _, svid := range update.SVIDs {
			ids = append(ids, svid.ID)
		}
		if !slices.Contains(ids, s.id) {
			t.Errorf("watched update has SVIDs %v, lacking %s", ids, s.id)
		}
		if _, err := update.Bundles.GetX509BundleForTrustDomain(s.td); err != nil {
			t.Errorf("watched update has no bundle for %s: %v", s.td, err)
		}
	case err := <-watcher.errs:
		t.Errorf("watch error before the first update: %v", err)
	case <-time.After(15 * time.Second):
		t.Error("no X.509 context update within 15s")
	}
	cancel()
	select {
	case err := <-done:
		if status.Code(err) != codes.Canceled && !errors.Is(err, context.Canceled) {
			t.Fatalf("WatchX509Context ended with %v, want a cancellation", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("WatchX509Context did not return after its context was cancelled")
	}
}

// TestSourcesGiveAWorkingMTLSHandshake uses X509Source on both sides of a real mTLS
// connection over loopback, the way a Go service uses SPIRE.
func TestSourcesGiveAWorkingMTLSHandshake(t *testing.T) {
	s := loadSetup(t)
	ctx := testContext(t)
	source, err := workloadapi.NewX509Source(ctx)
	if err != nil {
		t.Fatalf("NewX509Source: %v", err)
	}
	defer source.Close()
	svid, err := source.GetX509SVID()
	if err != nil {
		t.Fatalf("X509Source.GetX509SVID: %v", err)
	}
	if _, err := source.GetX509BundleForTrustDomain(s.td); err != nil {
		t.Fatalf("X509Source has no bundle for %s: %v", s.td, err)
	}

	listener, err := tls.Listen("tcp", "127.0.0.1:0", tlsconfig.MTLSServerConfig(source, source, tlsconfig.AuthorizeID(svid.ID)))
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer listener.Close()
	serverErr := make(chan error, 1)
	go func() {
		conn, err := listener.Accept()
		if err != nil {
			serverErr <- err
			return
		}
		defer conn.Close()
		_, err = io.Copy(conn, io.LimitReader(conn, 5))
		serverErr <- err
	}()

	dialer := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: tlsconfig.MTLSClientConfig(source, source, tlsconfig.AuthorizeMemberOf(s.td))}
	conn, err := dialer.DialContext(ctx, "tcp", listener.Addr().String())
	if err != nil {
		t.Fatalf("mTLS handshake with SVIDs from the agent: %v", err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("hello")); err != nil {
		t.Fatalf("write: %v", err)
	}
	echo := make([]byte, 5)
	if _, err := io.ReadFull(conn, echo); err != nil || string(echo) != "hello" {
		t.Fatalf("echo %q, %v", echo, err)
	}
	peer, err := x509svid.IDFromCert(conn.(*tls.Conn).ConnectionState().PeerCertificates[0])
	if err != nil || peer != svid.ID {
		t.Fatalf("peer ID %s (%v), want %s", peer, err, svid.ID)
	}
	if err := <-serverErr; err != nil {
		t.Fatalf("server side: %v", err)
	}

	// A client that only trusts another SPIFFE ID refuses the server.
	strict := &tls.Dialer{Config: tlsconfig.MTLSClientConfig(source, source, tlsconfig.AuthorizeID(spiffeid.RequireFromString("spiffe://example.org/nobody")))}
	listener2, err := tls.Listen("tcp", "127.0.0.1:0", tlsconfig.MTLSServerConfig(source, source, tlsconfig.AuthorizeAny()))
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer listener2.Close()
	go func() {
		if conn, err := listener2.Accept(); err == nil {
			_ = conn.(*tls.Conn).Handshake()
			conn.Close()
		}
	}()
	if conn, err := strict.DialContext(ctx, "tcp", listener2.Addr().String()); err == nil {
		conn.Close()
		t.Fatal("a client authorizing only spiffe://example.org/nobody accepted the server")
	}
}

func TestJWTSource(t *testing.T) {
	s := loadSetup(t)
	ctx := testContext(t)
	source, err := workloadapi.NewJWTSource(ctx)
	if err != nil {
		t.Fatalf("NewJWTSource: %v", err)
	}
	defer source.Close()
	svid, err := source.FetchJWTSVID(ctx, jwtsvid.Params{Audience: audience, Subject: s.secondID})
	if err != nil {
		t.Fatalf("JWTSource.FetchJWTSVID: %v", err)
	}
	if svid.ID != s.secondID {
		t.Fatalf("JWT-SVID subject %s, want %s", svid.ID, s.secondID)
	}
	if _, err := source.GetJWTBundleForTrustDomain(s.td); err != nil {
		t.Fatalf("JWTSource has no bundle for %s: %v", s.td, err)
	}
	if _, err := jwtsvid.ParseAndValidate(svid.Marshal(), source, []string{audience}); err != nil {
		t.Fatalf("ParseAndValidate with the JWTSource as bundle source: %v", err)
	}
}
