"""A stand-in for EJBCA's REST API on loopback, for the `ejbca` UpstreamAuthority test.

EJBCA (a Java EE application) cannot run here, so this serves the one call SPIRE's plugin
makes, `POST /ejbca/ejbca-rest-api/v1/certificate/pkcs10enroll`, the way EJBCA does it:
HTTPS that requires a client certificate issued by the CA it trusts, the request and answer
bodies of EJBCA's REST API (`EnrollCertificateRestRequest` / `CertificateRestResponse` of
Keyfactor's ejbca-go-client-sdk v1.0.2, the client upstream SPIRE uses), the issued
certificate and its chain (issuing CA first, root last) base64 DER (`response_format` "DER")
or PEM, and EJBCA's error body (`error_code`, `error_message`) with a 4xx status for an
unknown CA or profile. Certificates are signed with the `cryptography` package.

Usage: python fake_ejbca.py DIR [PEM]
Writes into DIR: root.pem (the trust anchor), server_ca.pem (to verify this server),
client.pem/client.key (the client certificate SPIRE authenticates with), port (the port
it listens on, written last) and requests.jsonl (one line per enrollment request).
"""

import base64
import datetime
import http.server
import json
import os
import ssl
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ExtendedKeyUsageOID

CA_NAME = "Fake-Sub-CA"
CERTIFICATE_PROFILE = "fakeSubCACP"
END_ENTITY_PROFILE = "fakeSpireIntermediateCAEEP"
ENROLL_PATH = "/ejbca/ejbca-rest-api/v1/certificate/pkcs10enroll"

NOW = datetime.datetime.now(datetime.timezone.utc)


def name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def issue(subject, public_key, issuer_name, issuer_key, ca, sans=None, eku=None, days=1):
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(minutes=5))
        .not_valid_after(NOW + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False
        )
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def main():
    out = sys.argv[1]
    response_format = sys.argv[2] if len(sys.argv) > 2 else "DER"

    root_key = ec.generate_private_key(ec.SECP256R1())
    root = issue(name("Fake EJBCA Root"), root_key.public_key(), name("Fake EJBCA Root"),
                 root_key, ca=True, days=30)
    sub_key = ec.generate_private_key(ec.SECP256R1())
    sub = issue(name(CA_NAME), sub_key.public_key(), root.subject, root_key, ca=True, days=30)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = issue(
        name("localhost"), server_key.public_key(), root.subject, root_key, ca=False,
        sans=[x509.DNSName("localhost"),
              x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))],
        eku=[ExtendedKeyUsageOID.SERVER_AUTH],
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = issue(name("spire-server"), client_key.public_key(), root.subject, root_key,
                   ca=False, eku=[ExtendedKeyUsageOID.CLIENT_AUTH])

    def write(file, text):
        with open(os.path.join(out, file), "w") as f:
            f.write(text)

    write("root.pem", pem(root))
    write("server_ca.pem", pem(root))
    write("client.pem", pem(client))
    write("client.key", client_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode())
    write("server.pem", pem(server))
    write("server.key", server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode())

    def encode(cert):
        if response_format == "PEM":
            return pem(cert)
        return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def answer(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            peer = self.connection.getpeercert()
            body["_client_subject"] = dict(x[0] for x in peer.get("subject", ()))
            body["_content_type"] = self.headers.get("Content-Type")
            with open(os.path.join(out, "requests.jsonl"), "a") as f:
                f.write(json.dumps(body) + "\n")
            if self.path != ENROLL_PATH:
                return self.answer(404, {"error_code": 404, "error_message": "Not found"})
            if body.get("certificate_authority_name") != CA_NAME:
                return self.answer(400, {
                    "error_code": 400,
                    "error_message": "CA with name %s doesn't exist."
                    % body.get("certificate_authority_name"),
                })
            if body.get("certificate_profile_name") != CERTIFICATE_PROFILE or \
                    body.get("end_entity_profile_name") != END_ENTITY_PROFILE:
                return self.answer(400, {"error_code": 400,
                                         "error_message": "Wrong profile name."})
            try:
                csr = x509.load_pem_x509_csr(body["certificate_request"].encode())
            except Exception as e:  # EJBCA answers a bad CSR with 400 too
                return self.answer(400, {"error_code": 400, "error_message": str(e)})
            try:
                sans = csr.extensions.get_extension_for_class(
                    x509.SubjectAlternativeName).value
                sans = list(sans)
            except x509.ExtensionNotFound:
                sans = None
            cert = issue(csr.subject, csr.public_key(), sub.subject, sub_key, ca=True,
                         sans=sans)
            self.answer(201, {
                "certificate": encode(cert),
                "serial_number": format(cert.serial_number, "X"),
                "response_format": response_format,
                "certificate_chain": [encode(sub), encode(root)],
            })

        def log_message(self, fmt, *args):
            sys.stderr.write("fake_ejbca: " + (fmt % args) + "\n")

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(os.path.join(out, "server.pem"), os.path.join(out, "server.key"))
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(os.path.join(out, "root.pem"))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    write("port.tmp", str(httpd.server_address[1]))
    os.rename(os.path.join(out, "port.tmp"), os.path.join(out, "port"))
    httpd.serve_forever()


if __name__ == "__main__":
    main()
