"""ACM Private CA fixture for the aws_pca test, made through moto's real ACM PCA API (boto3,
signed requests): a ROOT private CA is created, its CSR fetched, its root certificate issued
by itself with the RootCACertificate/V1 template (AWS's own flow for a root CA, the PCA's key
never leaves the service) and imported, which makes the CA ACTIVE.

Usage: python pca_setup.py <moto endpoint> <output dir>; prints the fixture as JSON.
"""
import json
import sys
import time

import boto3

endpoint, out = sys.argv[1], sys.argv[2]
session = boto3.session.Session(
    aws_access_key_id="AKIDTESTFIXTURE", aws_secret_access_key="fixture-secret", region_name="us-east-1"
)
pca = session.client("acm-pca", endpoint_url=endpoint)

arn = pca.create_certificate_authority(
    CertificateAuthorityConfiguration={
        "KeyAlgorithm": "RSA_2048",
        "SigningAlgorithm": "SHA256WITHRSA",
        "Subject": {"Country": "US", "Organization": "SPIRE test", "CommonName": "PCA test root"},
    },
    CertificateAuthorityType="ROOT",
)["CertificateAuthorityArn"]
pending = pca.describe_certificate_authority(CertificateAuthorityArn=arn)["CertificateAuthority"]["Status"]
csr = pca.get_certificate_authority_csr(CertificateAuthorityArn=arn)["Csr"]
root_arn = pca.issue_certificate(
    CertificateAuthorityArn=arn,
    Csr=csr.encode(),
    SigningAlgorithm="SHA256WITHRSA",
    TemplateArn="arn:aws:acm-pca:::template/RootCACertificate/V1",
    Validity={"Type": "DAYS", "Value": 365},
)["CertificateArn"]
for _ in range(60):
    try:
        root_pem = pca.get_certificate(CertificateAuthorityArn=arn, CertificateArn=root_arn)["Certificate"]
        break
    except pca.exceptions.RequestInProgressException:
        time.sleep(1)
else:
    raise SystemExit("the root certificate was never issued")
pca.import_certificate_authority_certificate(CertificateAuthorityArn=arn, Certificate=root_pem.encode())
status = pca.describe_certificate_authority(CertificateAuthorityArn=arn)["CertificateAuthority"]["Status"]

print(json.dumps({"ca_arn": arn, "root_pem": root_pem, "status_before_import": pending, "status": status}))
