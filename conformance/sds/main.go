// Command sds-client drives the Envoy Secret Discovery Service (v3) of a SPIRE agent the way
// Envoy does, with the client types of go-control-plane (an implementation spire-rs did not
// write), and prints what it receives as JSON lines, normalised so that the answers of two
// agents can be compared field by field: inline PEM becomes a description of each block
// (leaf certificates by their SANs, CA certificates by fingerprint, keys by algorithm and
// whether they match the leaf), nonces become their shape.
//
// Scenarios (-scenario):
//
//	stream  request -names, ACK, wait for a push whose content differs (printing an
//	        "acked" line first so the driver can change the entry), NACK it, send a
//	        request with a stale nonce and the last name (ignored), change the names to
//	        the first one (answered), close and print anything else the server sent
//	noack   request -names, receive the answer, never ACK, hold the stream for -hold
//	fetch   FetchSecrets with -names
//	delta   DeltaSecrets
//	garbage FetchSecrets with bytes that are no DiscoveryRequest
package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tls "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secret "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

var (
	socket       = flag.String("socket", "", "the agent's Workload API socket")
	scenario     = flag.String("scenario", "stream", "stream, noack, fetch, delta or garbage")
	names        = flag.String("names", "default,ROOTCA", "comma-separated resource names")
	envoyVersion = flag.String("envoy-version", "", "the node's user_agent_build_version (e.g. 1.17.0); empty sends none")
	metaDisable  = flag.String("metadata-disable", "", "node metadata disable_spiffe_cert_validation (a string value); empty sends none")
	pushTimeout  = flag.Duration("push-timeout", 120*time.Second, "how long to wait for a pushed update")
	hold         = flag.Duration("hold", 3*time.Second, "how long noack keeps the stream open")
)

func main() {
	flag.Parse()
	if *socket == "" {
		fail("-socket is required")
	}
	conn, err := grpc.NewClient("unix://"+*socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fail("dial: %v", err)
	}
	defer conn.Close()
	client := secret.NewSecretDiscoveryServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	switch *scenario {
	case "stream":
		runStream(ctx, client)
	case "noack":
		runNoAck(ctx, client)
	case "fetch":
		resp, err := client.FetchSecrets(ctx, request())
		if err != nil {
			printError(err)
			return
		}
		printResponse("response", resp)
	case "delta":
		stream, err := client.DeltaSecrets(ctx)
		if err != nil {
			printError(err)
			return
		}
		_ = stream.Send(&discovery.DeltaDiscoveryRequest{Node: node(), TypeUrl: secretType, ResourceNamesSubscribe: nameList()})
		_, err = stream.Recv()
		printError(err)
	case "garbage":
		var out discovery.DiscoveryResponse
		err := conn.Invoke(ctx, "/envoy.service.secret.v3.SecretDiscoveryService/FetchSecrets",
			rawMessage{0x0a, 0xff, 0xff, 0xff, 0x0f}, &out, grpc.ForceCodec(rawCodec{}))
		printError(err)
	default:
		fail("unknown -scenario %q", *scenario)
	}
}

func runStream(ctx context.Context, client secret.SecretDiscoveryServiceClient) {
	stream, err := client.StreamSecrets(ctx)
	if err != nil {
		printError(err)
		return
	}
	send(stream, request())
	first, ok := recv(stream)
	if !ok {
		return
	}
	printResponse("response", first)
	ack := request()
	ack.VersionInfo, ack.ResponseNonce = first.VersionInfo, first.Nonce
	ack.Node = nil // Envoy sends the node on the first request only
	send(stream, ack)
	emit(map[string]any{"event": "acked"})

	// Wait for a push that changes something (a rotation), ACKing intermediate ones.
	firstJSON := mustJSON(normalise(first)["resources"])
	var pushed *discovery.DiscoveryResponse
	deadline := time.Now().Add(*pushTimeout)
	for pushed == nil {
		if time.Now().After(deadline) {
			fail("no pushed update within %s", *pushTimeout)
		}
		resp, ok := recvTimeout(stream, time.Until(deadline))
		if !ok {
			return
		}
		if mustJSON(normalise(resp)["resources"]) == firstJSON {
			ack := request()
			ack.Node, ack.VersionInfo, ack.ResponseNonce = nil, resp.VersionInfo, resp.Nonce
			send(stream, ack)
			continue
		}
		pushed = resp
	}
	printResponse("pushed", pushed)

	nack := request()
	nack.Node, nack.VersionInfo, nack.ResponseNonce = nil, first.VersionInfo, pushed.Nonce
	nack.ErrorDetail = status.New(3, "sds-client rejects this update once").Proto()
	send(stream, nack)
	emit(map[string]any{"event": "nacked"})

	all := nameList()
	firstName, lastName := all[:1], all[len(all)-1:]
	// Were the stale request taken, the server would answer it with the last name only.
	stale := &discovery.DiscoveryRequest{TypeUrl: secretType, ResourceNames: lastName, ResponseNonce: "stale", VersionInfo: first.VersionInfo}
	send(stream, stale)
	changed := &discovery.DiscoveryRequest{TypeUrl: secretType, ResourceNames: firstName, ResponseNonce: pushed.Nonce, VersionInfo: first.VersionInfo}
	send(stream, changed)
	narrowed, ok := recv(stream)
	if !ok {
		return
	}
	printResponse("narrowed", narrowed)
	_ = stream.CloseSend()
	for {
		resp, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				emit(map[string]any{"event": "closed"})
			} else {
				printError(err)
			}
			return
		}
		printResponse("extra", resp)
	}
}

func runNoAck(ctx context.Context, client secret.SecretDiscoveryServiceClient) {
	stream, err := client.StreamSecrets(ctx)
	if err != nil {
		printError(err)
		return
	}
	send(stream, request())
	first, ok := recv(stream)
	if !ok {
		return
	}
	printResponse("response", first)
	extra := 0
	deadline := time.Now().Add(*hold)
	for time.Now().Before(deadline) {
		if _, ok := recvTimeout(stream, time.Until(deadline)); ok {
			extra++
		} else {
			break
		}
	}
	emit(map[string]any{"event": "held", "extra_responses": extra})
}

func request() *discovery.DiscoveryRequest {
	return &discovery.DiscoveryRequest{Node: node(), TypeUrl: secretType, ResourceNames: nameList()}
}

func nameList() []string {
	if *names == "" {
		return nil
	}
	return strings.Split(*names, ",")
}

func node() *core.Node {
	n := &core.Node{Id: "sds-client", Cluster: "spire-rs-interop", UserAgentName: "envoy"}
	if *envoyVersion != "" {
		parts := strings.Split(*envoyVersion, ".")
		nums := make([]uint32, 3)
		for i := 0; i < len(parts) && i < 3; i++ {
			v, err := strconv.ParseUint(parts[i], 10, 32)
			if err != nil {
				fail("bad -envoy-version %q", *envoyVersion)
			}
			nums[i] = uint32(v)
		}
		n.UserAgentVersionType = &core.Node_UserAgentBuildVersion{UserAgentBuildVersion: &core.BuildVersion{
			Version: &typev3.SemanticVersion{MajorNumber: nums[0], MinorNumber: nums[1], Patch: nums[2]},
		}}
	}
	if *metaDisable != "" {
		n.Metadata = &structpb.Struct{Fields: map[string]*structpb.Value{
			"disable_spiffe_cert_validation": structpb.NewStringValue(*metaDisable),
		}}
	}
	return n
}

func send(stream secret.SecretDiscoveryService_StreamSecretsClient, req *discovery.DiscoveryRequest) {
	if err := stream.Send(req); err != nil {
		printError(err)
		os.Exit(0)
	}
}

func recv(stream secret.SecretDiscoveryService_StreamSecretsClient) (*discovery.DiscoveryResponse, bool) {
	return recvTimeout(stream, *pushTimeout)
}

// recvTimeout waits for the next response; on a stream error it prints it and reports false.
func recvTimeout(stream secret.SecretDiscoveryService_StreamSecretsClient, d time.Duration) (*discovery.DiscoveryResponse, bool) {
	type result struct {
		resp *discovery.DiscoveryResponse
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		resp, err := stream.Recv()
		ch <- result{resp, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			printError(r.err)
			return nil, false
		}
		return r.resp, true
	case <-time.After(d):
		return nil, false
	}
}

func printError(err error) {
	if err == nil {
		emit(map[string]any{"event": "closed"})
		return
	}
	if errors.Is(err, io.EOF) {
		emit(map[string]any{"event": "closed"})
		return
	}
	st := status.Convert(err)
	emit(map[string]any{"event": "error", "code": st.Code().String(), "message": st.Message()})
}

func printResponse(event string, resp *discovery.DiscoveryResponse) {
	emit(map[string]any{"event": event, "response": normalise(resp)})
}

// secretType is the type URL of SDS resources (go-control-plane's resource.SecretType).
const secretType = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

var hexNonce = regexp.MustCompile(`^[0-9a-f]+$`)

// normalise turns a response into JSON where keys, certificates and nonces are described
// instead of copied.
func normalise(resp *discovery.DiscoveryResponse) map[string]any {
	out := map[string]any{
		"version_info": resp.VersionInfo,
		"type_url":     resp.TypeUrl,
	}
	switch {
	case resp.Nonce == "":
		out["nonce"] = ""
	case hexNonce.MatchString(resp.Nonce):
		out["nonce"] = fmt.Sprintf("<%d hex digits>", len(resp.Nonce))
	default:
		out["nonce"] = "<other: " + resp.Nonce + ">"
	}
	resources := []any{}
	for _, res := range resp.Resources {
		var s tls.Secret
		if err := res.UnmarshalTo(&s); err != nil {
			resources = append(resources, map[string]any{"undecodable": res.TypeUrl, "error": err.Error()})
			continue
		}
		raw, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(&s)
		if err != nil {
			fail("protojson: %v", err)
		}
		var generic map[string]any
		if err := json.Unmarshal(raw, &generic); err != nil {
			fail("json: %v", err)
		}
		resources = append(resources, map[string]any{"type_url": res.TypeUrl, "secret": describeInline(generic, &keyCheck{})})
	}
	out["resources"] = resources
	return out
}

// keyCheck remembers the leaf of a tls_certificate so its key can be matched against it.
type keyCheck struct{ leaf *x509.Certificate }

func describeInline(v any, kc *keyCheck) any {
	switch v := v.(type) {
	case map[string]any:
		out := map[string]any{}
		// The chain is described before the key so the key can be matched to the leaf.
		if chain, ok := v["certificate_chain"]; ok {
			out["certificate_chain"] = describeInline(chain, kc)
		}
		for k, val := range v {
			if k == "certificate_chain" {
				continue
			}
			if k == "inline_bytes" {
				if s, ok := val.(string); ok {
					out[k] = describePEM(s, kc)
					continue
				}
			}
			out[k] = describeInline(val, kc)
		}
		return out
	case []any:
		out := make([]any, len(v))
		for i := range v {
			out[i] = describeInline(v[i], kc)
		}
		return out
	default:
		return v
	}
}

func describePEM(b64 string, kc *keyCheck) any {
	data, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return "<not base64>"
	}
	blocks := []any{}
	rest := data
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		switch block.Type {
		case "CERTIFICATE":
			cert, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				blocks = append(blocks, "<bad certificate>")
				continue
			}
			if cert.IsCA {
				sum := sha256.Sum256(cert.Raw)
				blocks = append(blocks, map[string]any{"ca": true, "sha256": hex.EncodeToString(sum[:])})
				continue
			}
			if kc.leaf == nil {
				kc.leaf = cert
			}
			uris := []string{}
			for _, u := range cert.URIs {
				uris = append(uris, u.String())
			}
			blocks = append(blocks, map[string]any{"ca": false, "uris": uris, "dns": cert.DNSNames})
		case "PRIVATE KEY":
			key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
			if err != nil {
				blocks = append(blocks, "<bad PKCS#8 key>")
				continue
			}
			blocks = append(blocks, map[string]any{"pkcs8": keyAlgorithm(key), "matches_leaf": kc.leaf != nil && publicMatches(key, kc.leaf)})
		default:
			blocks = append(blocks, "<PEM "+block.Type+">")
		}
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		blocks = append(blocks, "<trailing non-PEM bytes>")
	}
	return blocks
}

func keyAlgorithm(key any) string {
	switch k := key.(type) {
	case *ecdsa.PrivateKey:
		return "ECDSA " + k.Curve.Params().Name
	case *rsa.PrivateKey:
		return fmt.Sprintf("RSA %d", k.N.BitLen())
	case ed25519.PrivateKey:
		return "Ed25519"
	}
	return fmt.Sprintf("%T", key)
}

func publicMatches(key any, leaf *x509.Certificate) bool {
	signer, ok := key.(crypto.Signer)
	if !ok {
		return false
	}
	pub, ok := signer.Public().(interface{ Equal(crypto.PublicKey) bool })
	return ok && pub.Equal(leaf.PublicKey)
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		fail("json: %v", err)
	}
	return string(b)
}

func emit(v map[string]any) {
	fmt.Println(mustJSON(v))
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "sds-client: "+format+"\n", args...)
	os.Exit(2)
}

// rawMessage and rawCodec send bytes as they are, to present the server with a request that
// does not decode.
type rawMessage []byte

type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) {
	if raw, ok := v.(rawMessage); ok {
		return raw, nil
	}
	return nil, fmt.Errorf("rawCodec sends rawMessage only, not %T", v)
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	m, ok := v.(proto.Message)
	if !ok {
		return fmt.Errorf("rawCodec decodes protobuf messages only, not %T", v)
	}
	return proto.Unmarshal(data, m)
}

func (rawCodec) Name() string { return "proto" }
